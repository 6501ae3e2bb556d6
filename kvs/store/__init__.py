"""The store: the only package that imports rocksdict.

`storage` keeps revision sets, timers, Merkle leaves and the node's counters in
RocksDB; `commits` coalesces staged mutations into one write (and one fsync) per
event-loop round; `cache` keeps decoded revision sets in memory.
"""
