"""Stop signals that arrive while `kvs cluster up` is still importing its code.

Before its own handlers exist, a Ctrl-C raises KeyboardInterrupt wherever the import
happens to be, and CPython swallows it when that is inside one of importlib's
callbacks ("Exception ignored in ..."): the command would then start its nodes as if
nothing had happened. `kvs cluster up` (the console script and `python -m kvs` both start
in kvs/__main__.py) records such signals here first (stdlib only, so installing it costs
nothing), and the command acts on them once it is ready.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
pending: list[int] = []  # signals received before the command's own handlers


def _record(signum: int, _frame: FrameType | None) -> None:
    pending.append(signum)


def install() -> None:
    for sig in STOP_SIGNALS:
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
            continue  # nohup: stays ignored
        signal.signal(sig, _record)
