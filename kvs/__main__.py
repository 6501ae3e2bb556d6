"""The `kvs` command, as `python -m kvs` and as the installed console script.

Kept free of imports at module level so that `kvs cluster up` can record stop signals
(kvs/_early_stop.py) before the rest of the package loads.
"""

import sys


def main() -> int:
    if sys.argv[1:3] == ["cluster", "up"]:
        from kvs import _early_stop

        _early_stop.install()
    from kvs.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
