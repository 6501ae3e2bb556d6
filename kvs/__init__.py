"""kvs: a leaderless, gossip-replicated key-value store on RocksDB with compare-and-swap."""

__version__ = "0.1.0"
