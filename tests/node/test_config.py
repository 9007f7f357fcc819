from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from node.config import DEFAULT_CONFIG_TOML, Config, build_config, env_layer, load_config
from protocol.errors import ConfigError


def test_the_documented_default_file_equals_the_built_in_defaults() -> None:
    assert build_config([("default", tomllib.loads(DEFAULT_CONFIG_TOML))]) == Config()


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "config.toml").write_text('[node]\napi = "127.0.0.1:1"\nmdns = true\n')
    monkeypatch.setenv("STEPPE_NODE_API", "127.0.0.1:2")
    monkeypatch.setenv("STEPPE_NODE_BOOTSTRAP", "/ip4/1.2.3.4/tcp/1,/ip4/1.2.3.5/tcp/1")
    cfg = load_config(tmp_path)
    assert cfg.node.api == "127.0.0.1:2" and cfg.node.mdns is True
    assert cfg.node.bootstrap == ("/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.5/tcp/1")
    assert load_config(tmp_path, {"node": {"api": "127.0.0.1:3"}}).node.api == "127.0.0.1:3"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[nod]\n", "unknown section [nod]"),
        ("[node]\napix = 1\n", "unknown key node.apix"),
        ("[node]\nmdns = 3\n", "node.mdns: expected true or false"),
        ("[model]\nmax_sessions = -1\n", "must not be negative"),
        ("[node]\nlisten = [1]\n", "list of strings"),
        ("[node\n", "config.toml"),
    ],
)
def test_bad_config_files_name_the_key_and_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert needle in str(info.value)


def test_an_unknown_steppe_environment_variable_is_an_error() -> None:
    with pytest.raises(ConfigError, match="STEPPE_NODE_NOPE"):
        env_layer({"STEPPE_NODE_NOPE": "1"})
