"""Settings every node of a cluster must share, compared whenever two nodes talk.

Two nodes that disagree on one of these never converge, or converge wrongly, and
nothing else would say so:

  * revision_history_enabled / revision_history_limit: a key's Merkle leaf covers its
    whole revision set, so nodes that keep 10 and 3 versions hash every key with more
    than 3 versions differently, and anti-entropy "repairs" it every round, forever;
  * tombstone_gc_seconds: a node that purges sooner refuses, as resurrections, the
    versions a node that purges later still pushes, and the other way round;
  * cluster_secret: only whether one is set (never the secret, nor a hash of it that
    could be guessed offline); two different secrets already fail with 401.

Pure: the SWIM layer sends `cluster_settings(config)` in every message and refuses a
peer for which `differences` is not empty (Consul refuses a join the same way).
"""

from __future__ import annotations

from typing import Any

from kvs.config import Config

Settings = dict[str, bool | int | str | None]
MAX_SETTINGS = 32
MAX_TEXT = 64


def cluster_settings(config: Config) -> Settings:
    """This node's values of the settings that must agree cluster-wide."""
    return {
        "revision_history_enabled": config.revision_history_enabled,
        # The limit only matters when history is kept (otherwise one version is kept).
        "revision_history_limit": (config.revision_history_limit
                                   if config.revision_history_enabled else None),
        "tombstone_gc_seconds": config.tombstone_gc_seconds,
        "cluster_secret": "set" if config.cluster_secret is not None else "not set",
    }


def parse_settings(raw: Any) -> Settings:
    """A peer's settings as received; ValueError if it is not a small map of scalars."""
    if raw is None:
        raise ValueError("settings missing: the peer runs a kvs without the compatibility check")
    if not isinstance(raw, dict) or len(raw) > MAX_SETTINGS:
        raise ValueError(f"settings must be an object of at most {MAX_SETTINGS} entries")
    for name, value in raw.items():
        text_ok = not isinstance(value, str) or len(value) <= MAX_TEXT
        if (len(name) > MAX_TEXT or not isinstance(value, bool | int | str | None) or not text_ok):
            raise ValueError(f"settings: bad entry {name[:MAX_TEXT]!r}")
    return raw


def differences(ours: Settings, theirs: Settings, peer: str) -> list[str]:
    """One line per setting that differs, naming it and both values."""
    return [
        f"{name} is {_show(ours.get(name))} here but {_show(theirs.get(name))} on {peer}"
        for name in sorted(ours.keys() | theirs.keys())
        if ours.get(name) != theirs.get(name)
    ]


def _show(value: bool | int | str | None) -> str:
    if value is None:
        return "unset"
    return str(value).lower() if isinstance(value, bool) else str(value)
