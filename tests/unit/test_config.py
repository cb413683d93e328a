"""Settings: sources merge in order, every bad value is a one-line ConfigError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pacs.config import RemoteAE, Settings, load_settings
from pacs.errors import ConfigError


def test_defaults_are_the_embedded_archive() -> None:
    s = load_settings(environ={})
    assert (s.aet, s.host, s.port, s.http_host, s.http_port) == (
        "PACS", "0.0.0.0", 11112, "127.0.0.1", 8042)
    assert s.data_dir == Path("pacs-data")


def test_later_sources_win(tmp_path: Path) -> None:
    toml = tmp_path / "pacs.toml"
    toml.write_text('aet = "FROMFILE"\nport = 2000\nidle_timeout = 5\nlog_level = "debug"\n')
    s = load_settings(toml, environ={"PACS_PORT": "3000"}, overrides={"aet": "FLAG"})
    assert (s.aet, s.port, s.idle_timeout, s.log_level) == ("FLAG", 3000, 5.0, "DEBUG")
    assert load_settings(environ={"PACS_SYNC_SPIN": "0"}).sync_spin == 0.0
    assert load_settings().index_during_sync is True
    assert load_settings(environ={"PACS_INDEX_DURING_SYNC": "off"}).index_during_sync is False
    assert load_settings().defer_index is True
    assert load_settings(environ={"PACS_DEFER_INDEX": "false"}).defer_index is False


@pytest.mark.parametrize("defer", [True, False])
def test_the_archive_writer_defers_as_set(tmp_path: Path, defer: bool) -> None:
    from pacs.archive import Archive

    archive = Archive.open(Settings(data_dir=tmp_path / "data", lmdb_map_size=1 << 28,
                                    defer_index=defer))
    try:
        assert archive.writer.defer_index is defer
    finally:
        archive.close()


def test_remote_tables(tmp_path: Path) -> None:
    toml = tmp_path / "pacs.toml"
    toml.write_text('[remote.STORESCP]\nhost = "127.0.0.1"\nport = 11113\n'
                    '[remote.VIEWER]\nhost = "10.0.0.2"\nport = 104\nmove_destination = false\n'
                    '[remote.SITE2]\nhost = "pacs.site2"\nport = 2762\ntls = true\n')
    s = load_settings(toml, environ={})
    assert s.remotes["STORESCP"] == RemoteAE("STORESCP", "127.0.0.1", 11113, True)
    assert s.remotes["VIEWER"].move_destination is False
    assert s.remotes["SITE2"].tls is True and s.remotes["STORESCP"].tls is False


def test_access_and_retention_tables(tmp_path: Path) -> None:
    toml = tmp_path / "pacs.toml"
    toml.write_text('allow_unknown_aets = false\n'
                    '[remote.CT1]\nhost = "10.0.0.7"\npermissions = ["echo", "store"]\n'
                    'check_host = true\nmax_associations = 3\n'
                    '[[retention]]\nolder_than_days = 3650\n'
                    '[[retention]]\nolder_than_days = 365\nmodality = "CR"\n')
    s = load_settings(toml, environ={})
    ct1 = s.remotes["CT1"]
    assert (ct1.port, ct1.move_destination, ct1.check_host, ct1.max_associations) == (
        0, False, True, 3)
    assert ct1.permissions == {"echo", "store"}
    assert s.allow_unknown_aets is False
    assert [(r.older_than_days, r.modality) for r in s.retention] == [(3650, ""), (365, "CR")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = 70000", "port"),
        ('port = "abc"', "port"),
        ('aet = "WAY_TOO_LONG_AE_TITLE"', "aet"),
        ('aet = "A\\\\B"', "aet"),
        ('on_duplicate = "sometimes"', "on_duplicate"),
        ("max_pdu_size = 10", "max_pdu_size"),
        ("sync_spin = 2", "sync_spin"),
        ("sync_spin = -0.001", "sync_spin"),
        ("nonsense = 1", "nonsense"),
        ("[remote.X]\nport = 104\n", "remote.X"),
        ("[remote.X]\nhost = 'h'\nport = -1\n", "remote.X.port"),
        ("[remote.X]\nhost = 'h'\npermissions = ['store', 'fly']\n", "remote.X.permissions"),
        ("[remote.X]\nhost = 'h'\nmax_associations = -1\n", "remote.X.max_associations"),
        ("[remote.X]\nhost = 'h'\ntls = 'yes'\n", "remote.X.tls"),
        ("[[retention]]\nmodality = 'CR'\n", "retention #1"),
        ("[[retention]]\nolder_than_days = 1\ncolour = 1\n", "retention #1"),
        ("tls_port = 2762\n", "tls_cert"),
        ("tls_port = 2762\ntls_cert = '/nonexistent'\ntls_key = '/nonexistent'\n", "tls_cert"),
        ("port = ", "config file"),
        ("port = 4242\nhttp_port = 4242\n", "http_port: 4242 is also port"),
        # the DICOM port's default host, 0.0.0.0, takes the port on 127.0.0.2 as well
        ("port = 4242\nhl7_port = 4242\nhl7_host = '127.0.0.2'\n", "hl7_port"),
        ("http_port = 4242\nhl7_port = 4242\n", "hl7_port: 4242 is also http_port"),
        (f"port = 2762\ntls_port = 2762\ntls_cert = '{__file__}'\ntls_key = '{__file__}'\n",
         "tls_port: 2762 is also port"),
    ],
)
def test_bad_settings(tmp_path: Path, text: str, message: str) -> None:
    toml = tmp_path / "pacs.toml"
    toml.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_settings(toml, environ={})


def test_bad_environment_value() -> None:
    with pytest.raises(ConfigError, match="idle_timeout"):
        load_settings(environ={"PACS_IDLE_TIMEOUT": "soon"})


def test_cli_bad_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pacs", "serve", "--port", "99999", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "port" in proc.stderr


def test_cli_version_names_the_scanner() -> None:
    proc = subprocess.run([sys.executable, "-m", "pacs", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    assert "tag scanner: " in proc.stdout
    assert proc.stdout.split("tag scanner: ")[1].startswith(("cython", "python"))


def test_one_port_on_two_distinct_hosts_is_two_listeners(tmp_path: Path) -> None:
    toml = tmp_path / "pacs.toml"
    toml.write_text("host = '127.0.0.1'\nport = 4242\nhttp_host = '127.0.0.2'\n"
                    "http_port = 4242\nhl7_port = 0\n")
    settings = load_settings(toml, environ={})
    assert (settings.port, settings.http_port) == (4242, 4242)
