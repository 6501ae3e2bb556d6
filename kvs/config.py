"""Node settings: one frozen, validated object built from YAML, `KVS_*` env and CLI flags.

Precedence (later wins): built-in defaults < YAML file < environment < CLI flags.
Every key of SPEC section 6 is parsed and validated here, so a typo or a bad
value stops the node at start-up with one line naming the key, instead of
surfacing as odd behaviour hours later.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kvs.errors import ConfigError

COMPRESSIONS = ("none", "zstd", "lz4")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Config:
    # Identity. Generated once and persisted in data_dir when left unset.
    node_id: str | None = None
    bind_address: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./data"
    # host:port of nodes to join through; empty means "start a new cluster".
    seed_nodes: tuple[str, ...] = ()
    # Shared secret for HMAC on /internal/ requests. Set it for any multi-host cluster.
    cluster_secret: str | None = None
    # Conditional writes are opt-in: with it off, any condition answers 501.
    cas_enabled: bool = False
    revision_history_enabled: bool = True
    # Versions kept per key, the current one included. Must be equal on all nodes,
    # or Merkle roots of nodes with different limits never agree.
    revision_history_limit: int = 10
    max_value_bytes: int = 1_048_576
    max_txn_ops: int = 128
    # SWIM: one probe per interval; a probe fails after probe_timeout_ms; a suspect is
    # declared dead after suspicion_multiplier * log10(n+1) * gossip interval (min 1).
    gossip_interval_ms: int = 200
    probe_timeout_ms: int = 500
    suspicion_multiplier: int = 4
    # Anti-entropy: one Merkle exchange with a random live peer per interval.
    sync_interval_ms: int = 2000
    # Tombstones and expired versions are purged this long after they died. A node that
    # was cut off for longer than this must be wiped before it rejoins.
    tombstone_gc_seconds: int = 86_400
    ttl_sweep_interval_ms: int = 1000
    # RocksDB block compression; invisible to clients and to the Merkle hash.
    compression: str = "none"
    # Acknowledge a write only after an fsync covers it (group commit).
    sync_writes: bool = False
    log_level: str = "info"
    # Internal switch used by tests and benchmarks: turn eager push off to exercise
    # anti-entropy alone. Not part of the public contract.
    eager_push: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def address(self) -> str:
        return f"{self.bind_address}:{self.port}"

    def replace(self, **changes: Any) -> Config:
        return load(overrides={**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}


_FIELDS = {f.name: f for f in dataclasses.fields(Config) if f.name != "extra"}
_POSITIVE = {
    "revision_history_limit", "max_value_bytes", "max_txn_ops", "gossip_interval_ms",
    "probe_timeout_ms", "suspicion_multiplier", "sync_interval_ms", "tombstone_gc_seconds",
    "ttl_sweep_interval_ms",
}


def _bool(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.lower() in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{key}: expected true or false, got {raw!r}")


def _int(key: str, raw: Any) -> int:
    if isinstance(raw, bool):
        raise ConfigError(f"{key}: expected an integer, got {raw!r}")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        value = int(raw)
    else:
        raise ConfigError(f"{key}: expected an integer, got {raw!r}")
    if key in _POSITIVE and value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")
    return value


def _seeds(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = [s.strip() for s in raw.split(",") if s.strip()] if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise ConfigError(f"seed_nodes: expected a list of host:port, got {raw!r}")
    for item in items:
        host, sep, port = str(item).rpartition(":")
        if not (isinstance(item, str) and sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"seed_nodes: {item!r} is not host:port")
    return tuple(items)


def _validate(key: str, raw: Any) -> Any:
    if key in ("node_id", "cluster_secret"):
        if raw is None:
            return None
        if not isinstance(raw, str) or not raw or any(c.isspace() or ord(c) < 32 for c in raw):
            raise ConfigError(f"{key}: expected a non-empty string without spaces, got {raw!r}")
        return raw
    if key == "seed_nodes":
        return _seeds(raw)
    if key in ("bind_address", "data_dir"):
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"{key}: expected a non-empty string, got {raw!r}")
        return raw
    if key == "compression":
        if raw not in COMPRESSIONS:
            raise ConfigError(f"compression: expected one of {', '.join(COMPRESSIONS)}, got {raw!r}")
        return raw
    if key == "log_level":
        if not isinstance(raw, str) or raw.lower() not in LOG_LEVELS:
            raise ConfigError(f"log_level: expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")
        return raw.lower()
    if _FIELDS[key].type == "bool":
        return _bool(key, raw)
    value = _int(key, raw)
    if key == "port" and not 0 <= value < 65536:
        raise ConfigError(f"port: expected 0..65535, got {value}")
    return value


def _check_keys(source: str, mapping: Mapping[str, Any]) -> None:
    unknown = sorted(set(mapping) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known keys: see config.example.yaml)")


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # one line: where, and what the parser expected
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"config file {path}: not valid YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of key: value")
    _check_keys(f"config file {path}", data)
    return data


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    found = {k[4:].lower(): v for k, v in environ.items() if k.startswith("KVS_")}
    _check_keys("environment", {k: v for k, v in found.items()})
    return found


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge defaults, file, environment and flags, validating every value once."""
    merged: dict[str, Any] = {}
    if path is not None:
        merged.update(read_yaml(path))
    merged.update(read_env(os.environ if environ is None else environ))
    if overrides:
        _check_keys("flags", overrides)
        merged.update({k: v for k, v in overrides.items() if v is not None or k in ("node_id",)})
    values = {key: _validate(key, raw) for key, raw in merged.items()}
    return Config(**values)
