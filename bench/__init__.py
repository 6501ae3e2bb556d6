"""Side-by-side benchmark harness: kvs vs a bare aiohttp app vs etcd (see docs/benchmarks.md).

Not part of the test suite. Entry point: `python -m bench.run [--short|--full] [--check]`.
"""
