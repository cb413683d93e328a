"""The ``pacs`` command: serve, reindex, verify, export, compact, jobs, import, migrate,
retention.

Exit codes: 0 success, 1 the command ran and found problems (verify), 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pacs import __version__
from pacs.config import Settings, load_settings
from pacs.errors import ConfigError

log = logging.getLogger("pacs")

# Flag name -> setting name, for the flags `serve` takes (every setting is also PACS_<NAME>).
_SERVE_FLAGS: dict[str, tuple[str, type, str]] = {
    "--data-dir": ("data_dir", str, "data directory (index, blobs, spool)"),
    "--aet": ("aet", str, "our AE title"),
    "--host": ("host", str, "DICOM listen address"),
    "--port": ("port", int, "DICOM listen port"),
    "--http-host": ("http_host", str, "HTTP listen address"),
    "--http-port": ("http_port", int, "HTTP listen port"),
    "--workers": ("workers", int, "DICOM worker processes (0: one per core)"),
    "--max-associations": ("max_associations", int, "associations open at once, all workers"),
    "--max-pdu-size": ("max_pdu_size", int, "maximum PDU length we receive"),
    "--acse-timeout": ("acse_timeout", float, "ARTIM timeout, seconds"),
    "--idle-timeout": ("idle_timeout", float, "drop an association idle this long, seconds"),
    "--log-level": ("log_level", str, "DEBUG, INFO, WARNING or ERROR"),
    "--log-format": ("log_format", str, "text (default) or json (one object per line)"),
    "--on-duplicate": ("on_duplicate", str, "keep or replace a re-sent SOP Instance UID"),
    "--store-backend": ("store_backend", str, "blob store: segments (default) or files"),
    "--max-find-results": ("max_find_results", int, "C-FIND responses per query (0: no cap)"),
}


_EXPORT_SELECTORS = {
    "--patient": "PatientID",
    "--study": "StudyInstanceUID",
    "--series": "SeriesInstanceUID",
    "--instance": "SOPInstanceUID",
}


def scanner_implementation() -> str:
    from pacs.dicom.scan import IMPLEMENTATION

    return IMPLEMENTATION


class _Version(argparse.Action):
    """``--version``, naming the active tag scanner (imported only when asked: it is heavy)."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kwargs: Any) -> None:
        print(f"pacs {__version__} (tag scanner: {scanner_implementation()})")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pacs", description="A high-throughput DICOM archive.")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run the DICOM (and HTTP) server"),
        ("reindex", "rebuild the index from the blob store"),
        ("verify", "check every indexed blob exists and matches its hash"),
        ("export", "write instances out as ordinary Part-10 files"),
        ("compact", "rewrite segments whose dead fraction is high, reclaiming the space"),
        ("jobs", "list the forwarding queue (routing rules) and its failures"),
        ("import", "bulk import files, folders, zip archives and DICOMDIR sets"),
        ("migrate", "pull a whole remote archive (C-FIND by StudyDate, C-MOVE to us)"),
        ("retention", "run the [[retention]] rules once: delete (and audit) old studies"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", type=Path, help="TOML settings file")
        for flag, (_setting, kind, text) in _SERVE_FLAGS.items():
            if name != "serve" and flag not in ("--data-dir", "--log-level") and not (
                    name == "migrate" and flag in ("--aet", "--port", "--host")):
                continue
            cmd.add_argument(flag, type=kind, default=None, help=text)
        if name == "compact":
            cmd.add_argument("--min-dead-fraction", type=float, default=0.5,
                             help="rewrite sealed segments at least this dead (0-1)")
        if name == "import":
            cmd.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                             help="files, folders (recursive), zip archives, DICOMDIR sets")
            cmd.add_argument("--report", type=Path, default=None,
                             help="report file (default: ./import-report-<timestamp>.txt)")
            cmd.add_argument("--jobs", type=int, default=None,
                             help="import processes (default: the workers setting)")
            cmd.add_argument("--in-place", action="store_true",
                             help="index Part-10 files where they lie instead of copying them "
                                  "(zip members are still copied)")
        if name == "migrate":
            _migrate_arguments(cmd)
        if name == "retention":
            cmd.add_argument("--dry-run", action="store_true",
                             help="list the studies the rules would delete, delete nothing")
        if name == "export":
            cmd.add_argument("out_dir", type=Path, help="folder to write study/series/sop.dcm")
            for option, keyword in _EXPORT_SELECTORS.items():
                cmd.add_argument(option, dest=keyword, default=None,
                                 help=f"only instances with this {keyword}")
    _user_arguments(sub)
    return parser


def _user_arguments(sub: Any) -> None:
    """``pacs user add|list|remove|passwd|role``: the users of the HTTP side (http_auth)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML settings file")
    for flag in ("--data-dir", "--log-level"):
        common.add_argument(flag, type=str, default=None, help=_SERVE_FLAGS[flag][2])
    cmd = sub.add_parser("user", help="add, list, remove users of the HTTP side (http_auth)")
    actions = cmd.add_subparsers(dest="user_action", required=True)
    for action, help_text in (("add", "add a user (the password is prompted for)"),
                              ("list", "list the users and their roles"),
                              ("remove", "remove a user (their tokens stop working)"),
                              ("passwd", "set a user's password (their tokens stop working)"),
                              ("role", "change a user's role")):
        one = actions.add_parser(action, help=help_text, parents=[common])
        if action != "list":
            one.add_argument("name", help="user name")
        if action in ("add", "role"):
            one.add_argument("--role", required=True, choices=("viewer", "uploader", "admin"),
                             help="viewer: read; uploader: also STOW; admin: everything")
        if action in ("add", "passwd"):
            one.add_argument("--password-stdin", action="store_true",
                             help="read the password from the first line of stdin (scripts)")


def _migrate_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--from", dest="source", required=True, metavar="AET@HOST:PORT",
                     help="the source archive; it must know our AE title as a move destination")
    cmd.add_argument("--calling-aet", default=None,
                     help="our calling AE title towards both sides (default: --aet)")
    cmd.add_argument("--to-host", default=None,
                     help="address of our running archive (default: --host, or 127.0.0.1)")
    cmd.add_argument("--to-port", dest="port", type=int, default=None,
                     help="DICOM port of our running archive (same as --port)")
    cmd.add_argument("--parallel", type=int, default=4,
                     help="studies moved at once, one association each (default 4)")
    cmd.add_argument("--slice-limit", type=int, default=500,
                     help="split a StudyDate slice answering more studies than this")
    cmd.add_argument("--since-year", type=int, default=1900,
                     help="first yearly StudyDate slice (earlier ones: one open range)")
    cmd.add_argument("--undated", action="store_true",
                     help="also one unsliced C-FIND for studies without a StudyDate")
    cmd.add_argument("--dry-run", action="store_true",
                     help="inventory and reconcile only, move nothing")
    cmd.add_argument("--get", action="store_true",
                     help="C-GET instead of C-MOVE (the source needs not know us as a move "
                          "destination); ingested by this process beside the running archive")
    cmd.add_argument("--report", type=Path, default=None,
                     help="report file (default: ./migrate-report-<AET>-<timestamp>.txt)")
    cmd.add_argument("--tls", action="store_true",
                     help="DICOM TLS towards the source (its certificate checked against "
                          "tls_ca and its host; tls_cert presented)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for flag, (setting, _kind, _text) in _SERVE_FLAGS.items():
        attr = flag.lstrip("-").replace("-", "_")
        if hasattr(args, attr):
            overrides[setting] = getattr(args, attr)
    return load_settings(args.config, overrides=overrides)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, process tag, logger, message."""

    def __init__(self, process: str = "") -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.process:
            entry["process"] = self.process
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, process: str = "", log_format: str = "text") -> None:
    """Plain lines (or JSON lines) on stderr; worker processes tag theirs (``w0``, ...)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        tag = f"[{process}] " if process else ""
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"pacs: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, log_format=settings.log_format)
    if args.command == "user":
        from pacs.users import user_command

        return user_command(settings, args.user_action, getattr(args, "name", ""),
                            getattr(args, "role", ""), getattr(args, "password_stdin", False))
    if args.command == "serve":
        from pacs.server.app import run

        return run(settings)
    from pacs import maintenance

    if args.command == "reindex":
        return maintenance.reindex_command(settings)
    if args.command == "jobs":
        return maintenance.jobs_command(settings)
    if args.command == "compact":
        return maintenance.compact_command(settings, args.min_dead_fraction)
    if args.command == "import":
        from pacs.importer import import_command

        return import_command(settings, args.paths, args.report, args.jobs, args.in_place)
    if args.command == "migrate":
        from pacs.migrate import migrate_command

        return migrate_command(settings, args.source, args.calling_aet, args.to_host,
                               args.parallel, args.slice_limit, args.since_year, args.undated,
                               args.report, args.dry_run, args.get, args.tls)
    if args.command == "retention":
        from pacs.retention import retention_command

        return retention_command(settings, args.dry_run)
    if args.command == "export":
        selection = {k: getattr(args, k) for k in _EXPORT_SELECTORS.values()
                     if getattr(args, k) is not None}
        return maintenance.export_command(settings, args.out_dir, selection)
    return maintenance.verify_command(settings)
