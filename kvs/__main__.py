import sys

if sys.argv[1:3] == ["cluster", "up"]:  # before the imports below: see kvs/_early_stop.py
    from kvs import _early_stop

    _early_stop.install()

from kvs.cli import main

sys.exit(main())
