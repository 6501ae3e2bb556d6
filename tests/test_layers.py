"""The layering of docs/design.md#architecture, checked on the source: which module may
import which. A new import that runs the wrong way fails here, not in a review."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kvs

ROOT = Path(kvs.__file__).parent
PURE = {"kvs.errors", "kvs.config", "kvs.clock", "kvs.model", "kvs.keys", "kvs.merkle",
        "kvs.conditions", "kvs.paxos", "kvs.acl"}
# Third-party modules the pure core may use: data formats and hashing, no I/O frameworks.
PURE_THIRD_PARTY = {"orjson", "xxhash", "yaml"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


MODULES = {_module_name(p): _imports(p) for p in ROOT.rglob("*.py")}


def _importers_of(prefix: str) -> set[str]:
    return {m for m, imports in MODULES.items()
            if any(i == prefix or i.startswith(prefix + ".") for i in imports)}


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_pure_core_imports_no_io_framework_and_nothing_above_it() -> None:
    for module in PURE:
        imports = MODULES[module]
        kvs_imports = {i for i in imports if i.startswith("kvs.")}
        assert {i for i in kvs_imports if not any(i == p or i.startswith(p + ".") for p in PURE)} \
            == set(), module
        third_party = {i.split(".")[0] for i in imports if not i.startswith("kvs")}
        assert third_party & {"asyncio", "aiohttp", "rocksdict"} == set(), module
        stdlib_or_allowed = third_party - PURE_THIRD_PARTY
        assert all(name in _STDLIB for name in stdlib_or_allowed), (module, stdlib_or_allowed)


_STDLIB = {"__future__", "dataclasses", "os", "random", "re", "time", "typing", "collections",
           "pathlib", "uuid", "math", "difflib", "json", "functools", "itertools", "enum",
           "hashlib", "bisect"}


def test_only_the_store_imports_rocksdict_and_only_engine_wiring_and_cli_import_the_store() -> None:
    assert {m for m in _importers_of("rocksdict") if not _in(m, "kvs.store")} == set()
    outside = {m for m in _importers_of("kvs.store") if not _in(m, "kvs.store")}
    # `kvs snapshot restore` opens the store offline to build a data dir.
    assert outside <= {"kvs.engine", "kvs.node", "kvs.snapshot_cli"}, outside


def test_the_engine_knows_nothing_of_http_or_peers() -> None:
    for module in ("kvs.engine", "kvs.watch"):
        assert not any(_in(i, "aiohttp", "kvs.http", "kvs.cluster", "kvs.node")
                       for i in MODULES[module]), module


def test_peer_code_uses_only_the_http_toolkit_and_clients_import_no_server_code() -> None:
    for module in (m for m in MODULES if _in(m, "kvs.cluster")):
        http = {i for i in MODULES[module] if _in(i, "kvs.http")}
        assert all(_in(i, "kvs.http.toolkit") for i in http), (module, http)
    server = ("kvs.engine", "kvs.store", "kvs.http", "kvs.cluster", "kvs.node", "rocksdict")
    for module in ("kvs.client", "kvs.coordination"):
        assert not any(_in(i, *server) for i in MODULES[module]), module


def test_the_command_line_does_not_load_the_server() -> None:
    """Every `kvs` command imports kvs.cli and builds its parser; a client command (get,
    put, ...) must not pay for aiohttp and the engine (~0.35 s of imports, more than the
    command's own work). `kvs serve` and the subcommands that need them import them."""
    probe = ("import sys, kvs.cli; kvs.cli.build_parser(); print(' '.join(sorted(m for m in "
             "sys.modules if m.split('.')[0] == 'aiohttp' or m in ('kvs.engine', 'kvs.node'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.split()
    assert loaded == []
