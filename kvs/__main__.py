import sys

from kvs.cli import main

sys.exit(main())
