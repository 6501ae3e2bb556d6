"""Configuration errors say where the mistake is: file and key (with the line for broken YAML),
environment variable, or flag, and the closest known setting for a misspelt one.

Pure tests of kvs.config.load on real files; tests/test_cli.py runs the same errors through
`kvs serve`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kvs.config import load
from kvs.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


def config_error(tmp_path: Path, text: str | None = None, *, environ: Mapping[str, str] | None = None,
                 overrides: Mapping[str, Any] | None = None,
                 flag_names: Mapping[str, str] | None = None) -> str:
    """The message of the ConfigError that loading `text` as a file (if given) raises."""
    path = None
    if text is not None:
        path = tmp_path / "kvs.yaml"
        path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(path, environ=environ or {}, overrides=overrides, flag_names=flag_names)
    return caught.value.message


def test_example_config_loads() -> None:
    assert load(EXAMPLE, environ={}).cas_enabled is True


def test_misspelt_yaml_key_names_the_closest_setting(tmp_path: Path) -> None:
    message = config_error(tmp_path, "port: 0\ncas_enable: true\n")
    assert message == (f"config file {tmp_path / 'kvs.yaml'}, key 'cas_enable': unknown setting "
                       "(did you mean 'cas_enabled'?)")


def test_misspelt_env_variable_names_the_closest_variable(tmp_path: Path) -> None:
    message = config_error(tmp_path, environ={"KVS_CAS_ENABLE": "true"})
    assert message == "environment variable KVS_CAS_ENABLE: unknown setting (did you mean KVS_CAS_ENABLED?)"
    far_off = config_error(tmp_path, environ={"KVS_XYZZY": "1"})
    assert "did you mean" not in far_off and "KVS_XYZZY" in far_off


def test_bad_values_name_where_they_were_set(tmp_path: Path) -> None:
    from_env = config_error(tmp_path, environ={"KVS_PORT": "abc"})
    assert from_env == "environment variable KVS_PORT: expected an integer, got 'abc'"
    from_file = config_error(tmp_path, "port: 0\nsync_interval_ms: -5\n")
    assert from_file == f"config file {tmp_path / 'kvs.yaml'}, key 'sync_interval_ms': must be > 0, got -5"
    from_flag = config_error(tmp_path, overrides={"port": 70000}, flag_names={"port": "--port"})
    assert from_flag == "flag --port: expected 0..65535, got 70000"
    # Only the value that wins is checked: a good flag hides a bad environment value.
    assert load(environ={"KVS_PORT": "abc"}, overrides={"port": 1}).port == 1


def _broken_example(tmp_path: Path, key: str, replace: tuple[str, str]) -> tuple[Path, int]:
    """config.example.yaml with one mistake on the line that sets `key`, and that line (1-based)."""
    lines = EXAMPLE.read_text().splitlines(keepends=True)
    line = next(n for n, text in enumerate(lines, 1) if text.startswith(f"{key}:"))
    lines[line - 1] = lines[line - 1].replace(*replace, 1)
    path = tmp_path / "broken.yaml"
    path.write_text("".join(lines))
    return path, line


@pytest.mark.parametrize(("key", "replace", "column"), [
    # Missing ':' followed by a blank line and a comment: the parser gives up two lines later.
    pytest.param("max_txn_ops", (":", ""), 1, id="missing-colon"),
    pytest.param("port", (": ", ":"), 1, id="no-space-after-colon"),
    pytest.param("data_dir", ("./data", '"./data'), 11, id="open-quote"),
    # Wrongly indented key: here the problem mark was right all along (a regression guard).
    pytest.param("sync_interval_ms", ("sync", "   sync"), 4, id="indented-key"),
])
def test_yaml_error_points_at_the_line_with_the_mistake(tmp_path: Path, key: str,
                                                        replace: tuple[str, str], column: int) -> None:
    path, line = _broken_example(tmp_path, key, replace)
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    message = caught.value.message
    assert message.startswith(f"config file {path}: not valid YAML at line {line}, column {column}: "), \
        message
    assert "\n" not in message
