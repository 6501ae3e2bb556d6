"""Node settings: one frozen, validated object built from YAML, `KVS_*` env and CLI flags.

Precedence (later wins): built-in defaults < YAML file < environment < CLI flags.
Every key of docs/api.md#configuration is parsed and validated here, so a typo or a bad
value stops the node at start-up with one line naming the key, instead of
surfacing as odd behaviour hours later.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kvs.errors import ConfigError

COMPRESSIONS = ("none", "zstd", "lz4")
LOG_LEVELS = ("debug", "info", "warning", "error")
CONSISTENCIES = ("local", "quorum")
ENV_PREFIX = "KVS_"
TLS_FILES = ("tls_cert_file", "tls_key_file", "tls_ca_file")
# KVS_ variables that the client commands read (`kvs get --ca`, `--token`), not node
# settings: a shell that exports them for the CLI must still be able to run `kvs serve`.
CLIENT_VARIABLES = frozenset({"KVS_CA", "KVS_TOKEN"})
ANONYMOUS_READS = ("health", "metrics")


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
    # What a KV read or write without a `consistency` parameter uses: "local" (this node
    # alone, always available) or "quorum" (linearizable, needs a majority of voters).
    default_consistency: str = "local"
    # Node ids of the voters of quorum keys when this node first starts (epoch 1): the
    # same list on every node of a new cluster, like etcd's initial-cluster. Empty: a node
    # without seed_nodes votes alone; one with seeds learns the voters from its peers.
    initial_voters: tuple[str, ...] = ()
    # A node that joins (seeds, not a voter) asks a voter to add it once it has caught up
    # (its first complete anti-entropy round); false: it stays a non-voter until an
    # operator adds it (POST /cluster/voters).
    auto_voter: bool = True
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
    # Tombstones and expired versions are purged this long after they died. A node cut
    # off for longer than this flags itself stale and resynchronises when it is back
    # (docs/design.md#long-partitions-stale-nodes); keep it longer than any partition.
    tombstone_gc_seconds: int = 86_400
    ttl_sweep_interval_ms: int = 1000
    # The shortest TTL a Consul session may have (/v1/session/create). 10 is Consul's
    # bound; lower it only to test session expiry quickly.
    consul_session_min_ttl_seconds: int = 10
    # RocksDB block compression; invisible to clients and to the Merkle hash.
    compression: str = "none"
    # Acknowledge a write only after an fsync covers it (group commit).
    sync_writes: bool = False
    log_level: str = "info"
    # Internal switch used by tests and benchmarks: turn eager push off to exercise
    # anti-entropy alone. Not part of the public contract.
    eager_push: bool = True
    # -- peers and clocks (docs/design.md#security, #clocks) --------------------------------
    # Listening on a non-loopback address without cluster_secret lets anyone who reaches
    # the port write any version and evict any member. A node refuses to start that way
    # unless this is true (it then logs a warning at start-up).
    insecure: bool = False
    # ms. A peer's timestamp further ahead of this node's wall clock is refused (never
    # observed by the HLC); a node off from most of its peers by more is "clock_skew".
    # Larger tolerates worse clocks, but lets a fast clock push versions (and the HLC)
    # that far into the future. 500 as CockroachDB; must exceed the network round trip.
    max_clock_offset_ms: int = 500
    # Refuse client writes (503 clock_skew) while this node is clock_skew, so no version
    # or TTL gets a wrong time. false: accept them (they replicate once in range).
    refuse_writes_on_clock_skew: bool = True
    # -- membership: reaping gone members (docs/design.md#membership) --
    # Seconds a member stays listed as dead before it is removed from the member table
    # (Consul's reconnect_timeout, 72 h): long enough to repair a host and bring it back
    # under its id; shorter forgets crashed nodes sooner. A reaped node can rejoin anytime.
    reap_after_seconds: int = 259_200
    # Seconds a member that left gracefully stays listed as left (Serf's tombstone_timeout,
    # 24 h): it said it is gone, so there is less to wait for than for a dead one.
    reap_left_after_seconds: int = 86_400
    # -- resource limits (HTTP server) --------------------------------------------------
    # Seconds a client has to send a request's line and headers, counted from connecting
    # or from the first byte after an idle keep-alive gap. Lower frees slowloris
    # connections sooner; too low cuts off clients on very slow links.
    http_header_timeout_seconds: int = 10
    # Seconds to receive a whole request body once its headers are in (408 after). Bounds
    # a body that trickles or never ends; must let a max-size body arrive on a slow link.
    http_body_timeout_seconds: int = 60
    # Seconds an idle keep-alive connection stays open (nginx's default). Longer saves
    # reconnects; shorter frees idle sockets (file descriptors) sooner.
    http_keepalive_seconds: int = 75
    # Client connections held at once (peers count too); beyond it a new connection gets
    # 503 with Retry-After and is closed. Capped below the process's file-descriptor limit
    # (with a reserve for storage and peers) so the node never runs out of descriptors.
    max_connections: int = 1024
    # Blocking queries (GET with ?index=) waiting at once; beyond it 503
    # too_many_blocking_queries. Each holds a connection: keep it below max_connections
    # so ordinary requests and peers always find a free one.
    max_blocking_queries: int = 512
    # -- storage faults --
    # While the disk refuses writes (full, failing), the node tries to write the failed
    # batch again every this many ms, and accepts writes again as soon as that works.
    # Shorter heals sooner once space returns; a try on a disk still full is one statvfs.
    storage_retry_interval_ms: int = 1000
    # -- TLS (docs/api.md#tls, docs/design.md#security) --------------------------------------
    # PEM files. With tls_cert_file and tls_key_file (unencrypted) set, the port speaks only
    # TLS, to clients and peers alike, and this node calls its peers over TLS presenting
    # that certificate (it must name the node's address, and allow client and server use).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # The CA that signs node certificates: peers' certificates are verified against it
    # (unset: the system's CAs). Clients need it too (`kvs --ca`, curl --cacert).
    tls_ca_file: str | None = None
    # Mutual TLS between nodes: /internal/ requests must come with a client certificate
    # signed by tls_ca_file (401 without one; one from another CA fails the handshake).
    # Unset: on when tls_ca_file is set. Clients are never asked for one.
    tls_verify_peer: bool | None = None
    # -- client ACLs (docs/acl.md) --------------------------------------------------------
    # Every client request needs a token (Authorization: Bearer, X-KVS-Token) whose
    # policies allow it: 401 without one, 403 when its rules deny. Off: anyone who reaches
    # the port reads and writes every key. Set it alike on every node.
    acl_enabled: bool = False
    # With ACLs on, which of /health and /metrics answer without a token (the others need
    # an operator token). /health for load balancers; /metrics shows key counts and
    # traffic, so it needs a token unless listed here.
    acl_anonymous_read: tuple[str, ...] = ("health",)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def address(self) -> str:
        return f"{self.bind_address}:{self.port}"

    def replace(self, **changes: Any) -> Config:
        return load(overrides={**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_POSITIVE = {
    "revision_history_limit", "max_value_bytes", "max_txn_ops", "gossip_interval_ms",
    "probe_timeout_ms", "suspicion_multiplier", "sync_interval_ms", "tombstone_gc_seconds",
    "ttl_sweep_interval_ms", "consul_session_min_ttl_seconds", "max_clock_offset_ms",
    "reap_after_seconds", "reap_left_after_seconds",
    "http_header_timeout_seconds", "http_body_timeout_seconds",
    "http_keepalive_seconds", "max_connections", "max_blocking_queries",
    "storage_retry_interval_ms",
}


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.lower() in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"expected true or false, got {raw!r}")


def _int(key: str, raw: Any) -> int:
    if isinstance(raw, bool):
        raise ConfigError(f"expected an integer, got {raw!r}")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
        value = int(raw)
    else:
        raise ConfigError(f"expected an integer, got {raw!r}")
    if key in _POSITIVE and value <= 0:
        raise ConfigError(f"must be > 0, got {value}")
    return value


def _seeds(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = [s.strip() for s in raw.split(",") if s.strip()] if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise ConfigError(f"expected a list of host:port, got {raw!r}")
    for item in items:
        host, sep, port = str(item).rpartition(":")
        if not (isinstance(item, str) and sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"{item!r} is not host:port")
    return tuple(items)


def _node_ids(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = [s.strip() for s in raw.split(",") if s.strip()] if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(
            isinstance(i, str) and i and i.isprintable() and not any(c.isspace() for c in i)
            for i in items):
        raise ConfigError(f"expected a list of node ids, got {raw!r}")
    if len(set(items)) != len(items):
        raise ConfigError(f"a node id is listed twice in {raw!r}")
    return tuple(items)


def _names(raw: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    items = [s.strip() for s in raw.split(",") if s.strip()] if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or any(item not in allowed for item in items):
        raise ConfigError(f"expected a list of {', '.join(allowed)} (possibly empty), got {raw!r}")
    return tuple(items)


def _validate(key: str, raw: Any) -> Any:
    """The typed value of one setting; a ConfigError says what is wrong, the caller says where."""
    if key in ("node_id", "cluster_secret"):
        if raw is None:
            return None
        if not isinstance(raw, str) or not raw or any(c.isspace() or ord(c) < 32 for c in raw):
            raise ConfigError(f"expected a non-empty string without spaces, got {raw!r}")
        return raw
    if key == "seed_nodes":
        return _seeds(raw)
    if key in TLS_FILES and raw is None:
        return None
    if key == "acl_anonymous_read":
        return _names(raw, ANONYMOUS_READS)
    if key in ("bind_address", "data_dir", *TLS_FILES):
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"expected a non-empty string, got {raw!r}")
        return raw
    if key == "initial_voters":
        return _node_ids(raw)
    if key == "default_consistency":
        if raw not in CONSISTENCIES:
            raise ConfigError(f"expected one of {', '.join(CONSISTENCIES)}, got {raw!r}")
        return raw
    if key == "compression":
        if raw not in COMPRESSIONS:
            raise ConfigError(f"expected one of {', '.join(COMPRESSIONS)}, got {raw!r}")
        return raw
    if key == "log_level":
        if not isinstance(raw, str) or raw.lower() not in LOG_LEVELS:
            raise ConfigError(f"expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")
        return raw.lower()
    if key == "tls_verify_peer":  # None: decided by whether tls_ca_file is set
        return None if raw is None else _bool(raw)
    if _FIELDS[key].type == "bool":
        return _bool(raw)
    value = _int(key, raw)
    if key == "port" and not 0 <= value < 65536:
        raise ConfigError(f"expected 0..65535, got {value}")
    return value


def _check_key(key: Any, where: str, spell: Callable[[str], str] = repr) -> None:
    """Stop at a setting kvs does not know, naming the closest one: a typo must not pass silently."""
    if key in _FIELDS:
        return
    close = difflib.get_close_matches(str(key), _FIELDS, n=1)
    hint = f"did you mean {spell(close[0])}?" if close else "known keys: see config.example.yaml"
    raise ConfigError(f"{where}: unknown setting ({hint})")


def _yaml_error(path: str | os.PathLike[str], exc: yaml.YAMLError) -> ConfigError:
    """One line: where the mistake is, and what the parser expected.

    The scanner notices a broken token only where it gives up: a key missing its ':' on
    line 30 is reported at the next key, after any blank or comment lines. Its context
    mark is where that token began, which is where the typo is. The parser's problem mark
    is the unexpected token itself (a wrongly indented line, a stray ':'); its context
    mark only says which structure was open, so it is added as a hint.
    """
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    mark: Any = getattr(exc, "problem_mark", None)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    note = ""
    if context and context_mark is not None:
        if isinstance(exc, yaml.scanner.ScannerError):
            mark, note = context_mark, f" ({context})"
        elif mark is None or context_mark.line != mark.line:
            note = f" ({context} that began at {_where(context_mark)})"
    where = f" at {_where(mark)}" if mark is not None else ""
    return ConfigError(f"config file {path}: not valid YAML{where}: {problem}{note}")


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"  # marks count from 0


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of key: value")
    for key in data:
        _check_key(key, f"config file {path}, key {key!r}")
    return data


def read_env(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """`KVS_*` variables as {key: (value, variable name)}; errors name the variable as set."""
    found = {name[len(ENV_PREFIX):].lower(): (value, name)
             for name, value in environ.items()
             if name.startswith(ENV_PREFIX) and name not in CLIENT_VARIABLES}
    for key, (_, name) in found.items():
        _check_key(key, f"environment variable {name}", lambda k: ENV_PREFIX + k.upper())
    return found


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Config:
    """Merge defaults, file, environment and flags, validating every value once.

    Only the value that wins is validated, and its error names where it was set: the
    file and key, the environment variable, or the flag (`flag_names` maps a setting to
    the command-line flag that set it, e.g. port -> --port).
    """
    merged: dict[str, tuple[Any, str]] = {}  # key -> (raw value, where it was set)
    if path is not None:
        merged.update({key: (raw, f"config file {path}, key {key!r}")
                       for key, raw in read_yaml(path).items()})
    env = read_env(os.environ if environ is None else environ)
    merged.update({key: (raw, f"environment variable {name}") for key, (raw, name) in env.items()})
    for key, raw in (overrides or {}).items():
        flag = (flag_names or {}).get(key)
        _check_key(key, f"flag {flag}" if flag else f"override {key!r}")
        if raw is not None or key == "node_id":
            merged[key] = (raw, f"flag {flag}" if flag else key)
    return Config(**{key: _checked(key, raw, where) for key, (raw, where) in merged.items()})


def _checked(key: str, raw: Any, where: str) -> Any:
    try:
        return _validate(key, raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
