"""Settings: one frozen object built from defaults, a TOML file, ``PACS_*`` variables and flags.

Later sources win: defaults < ``--config FILE`` < environment < command-line flags. Remote AEs
(C-MOVE destinations, forwarding targets) are tables of the TOML file only::

    aet = "PACS"
    port = 11112

    [remote.STORESCP]
    host = "127.0.0.1"
    port = 11113

Every setting is validated here, once; a bad one raises ``ConfigError`` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pacs.errors import ConfigError

DuplicatePolicy = Literal["keep", "replace"]
StoreBackend = Literal["segments", "files"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["text", "json"]


@dataclass(frozen=True, slots=True)
class RemoteAE:
    """A peer we may connect to as SCU (C-MOVE destination, forwarding target)."""

    aet: str
    host: str
    port: int  # 0: not reachable as SCP (a modality that only stores or queries)
    move_destination: bool = True
    # What this AE may do as calling AE (access control, pacs.server.access).
    permissions: frozenset[str] = frozenset(("echo", "store", "find", "move", "get",
                                             "worklist", "mpps", "commitment"))
    check_host: bool = False  # accept this calling AE only from ``host``
    max_associations: int = 0  # open associations of this calling AE; 0: the global cap
    tls: bool = False  # our associations to it use DICOM TLS (pacs.server.tls.client_context)


@dataclass(frozen=True, slots=True)
class Route:
    """Forward what matches (every given condition) to ``destination``, a remote AE."""

    destination: str
    calling_aet: str = ""  # only instances received from this AE
    modality: str = ""  # only instances of this Modality

    def matches(self, calling_aet: str, modality: str) -> bool:
        return (not self.calling_aet or self.calling_aet == calling_aet) and (
            not self.modality or self.modality == modality
        )


PERMISSIONS = ("echo", "store", "find", "move", "get", "worklist", "mpps", "commitment")


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """Delete studies older than ``older_than_days`` (by StudyDate; every given condition)."""

    older_than_days: int
    modality: str = ""  # only studies with a series of this Modality


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the archive; see the README's Settings section for each one's meaning."""

    data_dir: Path = Path("pacs-data")
    aet: str = "PACS"
    host: str = "0.0.0.0"
    port: int = 11112
    http_host: str = "127.0.0.1"
    http_port: int = 8042
    http_max_body: int = 4 * 1024**3  # bytes of one HTTP request body (STOW-RS); 413 beyond
    workers: int = 0  # DICOM worker processes; 0 = one per core
    max_associations: int = 200
    max_pdu_size: int = 262144
    acse_timeout: float = 30.0
    idle_timeout: float = 60.0
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "text"  # json: one JSON object per line (for log shippers)
    store_backend: StoreBackend = "segments"
    segment_size: int = 1 << 30
    segment_prefill: int = 8 << 20  # zero-filled bytes kept ahead of the tail; 0: none
    segment_direct_min: int = 64 << 10  # records this large skip the page cache; 0: never
    compact_threshold: float = 0.5  # dead fraction that triggers automatic compaction; 0: never
    compact_check_interval: float = 600.0
    on_duplicate: DuplicatePolicy = "keep"
    spool_memory_limit: int = 16 * 1024 * 1024
    max_pending_stores: int = 64
    commit_batch: int = 256
    io_threads: int = 8
    sync_spin: float = 0.0003  # seconds a worker's loop polls after an fdatasync; 0: sleeps
    index_during_sync: bool = True  # apply a batch's index transaction during its fdatasync
    defer_index: bool = True  # new instances' patient/study/series levels written later, batched
    lmdb_map_size: int = 64 * 1024**3
    max_find_results: int = 0  # C-FIND responses per query; 0: no cap
    move_associations: int = 2  # parallel associations of a large C-MOVE
    fuzzy_person_names: bool = True  # PN matching ignores case (strict when false)
    forward_retry_base: float = 5.0  # seconds before the first retry of a failed forward
    hl7_host: str = "127.0.0.1"  # HL7 v2 MLLP listener (orders -> worklist); worker 0
    hl7_port: int = 2575  # 0: no HL7 listener
    worklist_station_aet: str = ""  # Scheduled Station AE Title when an order names none
    ris_host: str = ""  # where ORU^R01 "study available" messages go over MLLP
    ris_port: int = 0  # 0: no outbound HL7
    reconcile_quiet_period: float = 60.0  # seconds a study must stay unchanged to complete
    public_url: str = ""  # base URL of the HTTP side for links sent out (viewer, WADO-RS)
    # Security and operations (issue 10).
    check_called_aet: bool = False  # refuse associations addressed to another AE title
    allow_unknown_aets: bool = True  # false: only [remote.AET] calling AEs may associate
    max_associations_per_ae: int = 0  # open associations of one calling AE; 0: no own cap
    max_dataset_size: int = 4 * 1024**3  # bytes of one received data set; larger: refused
    min_free_space: int = 128 * 1024**2  # bytes kept free on the data disk (0xA700 below)
    tls_port: int = 0  # DICOM TLS listener (PS3.15 B.1) beside the plain one; 0: none
    tls_cert: str = ""  # PEM certificate (chain) of DICOM TLS and HTTPS
    tls_key: str = ""  # PEM private key of tls_cert
    tls_ca: str = ""  # PEM CA bundle; set: TLS peers must present a certificate it signed
    http_tls: bool = False  # HTTPS on http_port with tls_cert and tls_key
    http_auth: bool = False  # users and roles on every HTTP route (`pacs user add`)
    token_lifetime: float = 8 * 3600.0  # seconds a bearer token stays valid
    audit: bool = True  # append-only audit trail (JSON lines) under data_dir/audit
    metrics: bool = True  # Prometheus /metrics on the HTTP port
    retention_check_interval: float = 86400.0  # seconds between runs of [[retention]] rules
    remotes: Mapping[str, RemoteAE] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    retention: tuple[RetentionRule, ...] = ()

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "state"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def audit_dir(self) -> Path:
        return self.data_dir / "audit"

    @property
    def users_file(self) -> Path:
        """Users of the HTTP side with hashed passwords (``pacs user add``), never the config."""
        return self.state_dir / "users.json"


_TABLES = ("remotes", "routes", "retention")
_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name not in _TABLES}
_DEFAULTS = Settings()


def _check_aet(name: str, value: str) -> str:
    # PS3.5 AE VR: 16 characters at most, no backslash or control characters, not all spaces.
    if not value.strip() or len(value) > 16 or any(c == "\\" or ord(c) < 32 for c in value):
        raise ConfigError(f"{name}: {value!r} is not a valid AE title (1-16 characters, no '\\')")
    return value.strip()


def _coerce(name: str, raw: Any) -> Any:
    """Turn a TOML, environment or flag value into the setting's type, or raise ConfigError."""
    default = getattr(_DEFAULTS, name)
    literal = _LITERALS.get(name)
    try:
        if literal is not None:
            value = str(raw).upper() if name == "log_level" else str(raw).lower()
            if value not in literal:
                raise ValueError(f"must be one of {', '.join(literal)}")
            return value
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("must be true or false")
        if isinstance(default, int):
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError("must be an integer")
            return int(raw)
        if isinstance(default, float):
            if isinstance(raw, bool):
                raise ValueError("must be a number")
            return float(raw)
        if isinstance(default, Path):
            return Path(str(raw))
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {raw!r} {exc}") from None


_LITERALS: dict[str, tuple[str, ...]] = {
    "log_level": get_args(LogLevel),
    "log_format": get_args(LogFormat),
    "store_backend": get_args(StoreBackend),
    "on_duplicate": get_args(DuplicatePolicy),
}

# Inclusive bounds for numeric settings.
_BOUNDS: dict[str, tuple[float, float]] = {
    "port": (0, 65535),
    "http_port": (0, 65535),
    "http_max_body": (1024, 1 << 40),
    "workers": (0, 64),
    "max_associations": (1, 100_000),
    "max_pdu_size": (4096, 16 * 1024 * 1024),  # PS3.8 allows more; we cap the receive buffer
    "acse_timeout": (0.01, 3600),
    "idle_timeout": (0.01, 86400),
    "spool_memory_limit": (0, 1 << 34),
    "segment_size": (4096, 1 << 40),
    "segment_prefill": (0, 1 << 32),
    "segment_direct_min": (0, 1 << 40),
    "compact_threshold": (0, 1),
    "compact_check_interval": (0.1, 7 * 86400),
    "max_pending_stores": (1, 100_000),
    "commit_batch": (1, 100_000),
    "io_threads": (1, 256),
    "sync_spin": (0, 1),
    "lmdb_map_size": (1 << 20, 1 << 50),
    "max_find_results": (0, 1 << 31),
    "move_associations": (1, 64),
    "forward_retry_base": (0.01, 3600),
    "hl7_port": (0, 65535),
    "ris_port": (0, 65535),
    "reconcile_quiet_period": (0, 7 * 86400),
    "max_associations_per_ae": (0, 100_000),
    "max_dataset_size": (1024, 1 << 40),
    "min_free_space": (0, 1 << 50),
    "tls_port": (0, 65535),
    "token_lifetime": (1, 366 * 86400),
    "retention_check_interval": (1, 366 * 86400),
}


def _validate(values: dict[str, Any]) -> None:
    for name, (low, high) in _BOUNDS.items():
        if not low <= values[name] <= high:
            raise ConfigError(f"{name}: {values[name]!r} is out of range [{low:g}, {high:g}]")
    values["aet"] = _check_aet("aet", values["aet"])
    if values["tls_port"] or values["http_tls"]:
        for name in ("tls_cert", "tls_key"):
            if not values[name]:
                raise ConfigError(f"{name}: needed by tls_port / http_tls")
    for name in ("tls_cert", "tls_key", "tls_ca"):
        if values[name] and not Path(values[name]).is_file():
            raise ConfigError(f"{name}: {values[name]!r} is not a readable file")
    _check_listeners(values)


# Each listening port and the host setting it binds on.
_LISTENERS = (("port", "host"), ("tls_port", "host"), ("http_port", "http_host"),
              ("hl7_port", "hl7_host"))
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def _check_listeners(values: dict[str, Any]) -> None:
    """Refuse two listeners on one port: with several workers both would bind it with
    SO_REUSEPORT and the kernel would hand each one half the other's connections."""
    seen: list[tuple[str, str, int]] = []
    for name, host_name in _LISTENERS:
        port, host = values[name], values[host_name]
        if not port:
            continue
        for other, other_host, other_port in seen:
            if port == other_port and (host == other_host or host in _WILDCARD_HOSTS
                                       or other_host in _WILDCARD_HOSTS):
                raise ConfigError(f"{name}: {port} is also {other}; each listener needs a "
                                  "port of its own")
        seen.append((name, host, port))


def _remotes(table: Any) -> dict[str, RemoteAE]:
    if not isinstance(table, dict):
        raise ConfigError("remote: must be tables like [remote.AET] with host and port")
    remotes: dict[str, RemoteAE] = {}
    for aet, entry in table.items():
        aet = _check_aet(f"remote.{aet}", aet)
        if not isinstance(entry, dict) or "host" not in entry:
            raise ConfigError(f"remote.{aet}: needs host (and port, if we connect to it)")
        unknown = set(entry) - {"host", "port", "move_destination", "permissions",
                                "check_host", "max_associations", "tls"}
        if unknown:
            raise ConfigError(f"remote.{aet}: unknown key {sorted(unknown)[0]!r}")
        port = entry.get("port", 0)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError(f"remote.{aet}.port: {port!r} is not a port number")
        permissions = entry.get("permissions", list(PERMISSIONS))
        if not isinstance(permissions, list) or not set(permissions) <= set(PERMISSIONS):
            raise ConfigError(f"remote.{aet}.permissions: a list of {', '.join(PERMISSIONS)}")
        cap = entry.get("max_associations", 0)
        if not isinstance(cap, int) or isinstance(cap, bool) or not 0 <= cap <= 100_000:
            raise ConfigError(f"remote.{aet}.max_associations: {cap!r} is not a count")
        tls = entry.get("tls", False)
        if not isinstance(tls, bool):
            raise ConfigError(f"remote.{aet}.tls: true or false")
        remotes[aet] = RemoteAE(
            aet, str(entry["host"]), port,
            bool(entry.get("move_destination", True)) and port != 0,
            frozenset(permissions), bool(entry.get("check_host", False)), cap, tls,
        )
    return remotes


def _retention(table: Any) -> tuple[RetentionRule, ...]:
    if not isinstance(table, list):
        raise ConfigError("retention: must be [[retention]] tables with older_than_days")
    rules = []
    for number, entry in enumerate(table, 1):
        where = f"retention #{number}"
        days = entry.get("older_than_days") if isinstance(entry, dict) else None
        if not isinstance(days, int) or isinstance(days, bool) or days < 1:
            raise ConfigError(f"{where}: needs older_than_days = N (a whole number, >= 1)")
        unknown = set(entry) - {"older_than_days", "modality"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        rules.append(RetentionRule(days, str(entry.get("modality", ""))))
    return tuple(rules)


def _routes(table: Any, remotes: Mapping[str, RemoteAE]) -> tuple[Route, ...]:
    if not isinstance(table, list):
        raise ConfigError("route: must be [[route]] tables with a destination")
    routes = []
    for number, entry in enumerate(table, 1):
        where = f"route #{number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("destination"), str):
            raise ConfigError(f"{where}: needs destination = \"AET\"")
        unknown = set(entry) - {"destination", "calling_aet", "modality"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        if entry["destination"] not in remotes:
            raise ConfigError(f"{where}: destination {entry['destination']!r} is not a "
                              "[remote.AET] table")
        routes.append(Route(entry["destination"], str(entry.get("calling_aet", "")),
                            str(entry.get("modality", ""))))
    return tuple(routes)


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults, the TOML file, ``PACS_*`` variables and flag overrides (None = unset)."""
    values: dict[str, Any] = {name: getattr(_DEFAULTS, name) for name in _FIELDS}
    remotes: dict[str, RemoteAE] = {}
    route_table: Any = []
    retention_table: Any = []
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from None
        for key, raw in data.items():
            if key == "remote":
                remotes = _remotes(raw)
            elif key == "route":
                route_table = raw
            elif key == "retention":
                retention_table = raw
            elif key in _FIELDS:
                values[key] = _coerce(key, raw)
            else:
                raise ConfigError(f"config file {config_file}: unknown setting {key!r}")
    env = os.environ if environ is None else environ
    for name in _FIELDS:
        raw_env = env.get(f"PACS_{name.upper()}")
        if raw_env is not None and raw_env != "":
            values[name] = _coerce(name, raw_env)
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(name, raw)
    _validate(values)
    return Settings(**values, remotes=remotes, routes=_routes(route_table, remotes),
                    retention=_retention(retention_table))


def setting_names() -> list[str]:
    """Names of the scalar settings, in declaration order (for docs and `pacs serve --help`)."""
    return list(_FIELDS)
