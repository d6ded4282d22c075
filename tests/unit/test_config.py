"""Settings: every default named, each overridden by its environment variable, no cwd dependence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgsim_lab import config
from imgsim_lab.config import Settings


def test_defaults_do_not_depend_on_the_working_directory(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (config.ENV_DATA_DIR, config.ENV_KV_URL, config.ENV_NAMESPACE):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env()
    assert s.data_dir == config.project_root() / "data"  # a checkout: the project's data/
    assert s.kv_url == f"rocksdb:{config.project_root() / 'data' / 'kv'}"
    assert s.namespace == "imgsim"
    assert config.data_dir() == s.data_dir and config.kv_url() == s.kv_url
    assert not (tmp_path / "data").exists()


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(config.ENV_DATA_DIR, "rel/data")
    monkeypatch.delenv(config.ENV_KV_URL, raising=False)
    monkeypatch.setenv(config.ENV_NAMESPACE, "ns1")
    monkeypatch.setenv(config.ENV_MAX_BYTES, "1000")
    monkeypatch.setenv(config.ENV_CIFAR10_SOURCE, str(tmp_path / "c.zip"))
    s = Settings.from_env()
    assert s.data_dir == tmp_path / "rel" / "data"  # relative: the caller's working directory
    assert s.kv_url == f"rocksdb:{tmp_path / 'rel' / 'data' / 'kv'}"
    assert (s.namespace, s.max_bytes, s.limits().max_bytes) == ("ns1", 1000, 1000)
    assert s.cifar10_archive == tmp_path / "c.zip"
    assert Settings.from_env(namespace="given").namespace == "given"  # arguments win
    env = s.env()
    assert env[config.ENV_KV_URL].startswith("rocksdb:/") and env[config.ENV_DATA_DIR] == str(s.data_dir)
    monkeypatch.setenv(config.ENV_MAX_BYTES, "lots")
    with pytest.raises(ValueError, match="IMGSIM_MAX_BYTES"):
        Settings.from_env()


def test_logs_go_to_the_data_dir_never_to_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from imgsim_lab.log import setup_logging

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "elsewhere"
    monkeypatch.setenv(config.ENV_DATA_DIR, str(data))
    path = setup_logging("t")
    try:
        assert path is not None and path.parent == data / "logs"
        assert not (tmp_path / "data").exists()
    finally:
        for h in list(logging.getLogger().handlers):
            if getattr(h, "_imgsim", False):
                logging.getLogger().removeHandler(h)
                h.close()
    assert os.environ[config.ENV_DATA_DIR] == str(data)
