"""The ``atrium`` subcommands of operations: ``maintain``, ``retention``, ``audit``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import psycopg

from atrium.operations import wiring
from atrium.operations.anchoring import AnchorError, load_public_key
from atrium.settings import Settings
from atrium.storage import StorageError

__all__ = ["add_audit_arguments", "add_retention_arguments", "audit_command",
           "maintain_command", "retention_command"]


def _connect(url: str) -> Any:
    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def maintain_command(settings: Settings, _args: argparse.Namespace) -> int:
    """Partitions ahead for every partitioned table (as the scheduled worker does)."""
    from atrium.operations.partitions import upkeep

    created = upkeep(settings.owner_url)
    print(f"created {len(created)} partition(s)" + (": " + ", ".join(created) if created else ""))
    return 0


def add_retention_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("retention_command", nargs="?", choices=["restore", "release"],
                         help="restore: bring an archived month of predictions back; "
                              "release: let retention archive a restored month again")
    command.add_argument("--dry-run", action="store_true",
                         help="list what a run would remove, remove nothing")
    command.add_argument("--month", help="YYYY-MM (restore, release)")
    command.add_argument("--json", action="store_true", help="print the result as JSON")


def _month(text: str | None) -> dt.date:
    try:
        return dt.datetime.strptime(text or "", "%Y-%m").date()
    except ValueError:
        raise SystemExit(f"atrium: --month must be YYYY-MM, got {text!r}") from None


def retention_command(settings: Settings, args: argparse.Namespace) -> int:
    from atrium.app import open_settings_store
    from atrium.operations import archive
    from atrium.operations.retention import run

    store = open_settings_store(settings)
    if args.retention_command in ("restore", "release"):
        month = _month(args.month)
        with _connect(settings.owner_url) as conn:
            if args.retention_command == "release":
                released = archive.release_month(conn, month)
                print(f"{month:%Y-%m}: " + ("released" if released else "was not held"))
                return 0
            try:
                restored = archive.restore_month(conn, store, month)
            except archive.ArchiveError as error:
                print(f"atrium: {error}", file=sys.stderr)
                return 1
        print(f"{month:%Y-%m}: {restored} prediction(s) restored; held until "
              f"`atrium retention release --month {month:%Y-%m}`")
        return 0
    anchorer = wiring.anchorer(settings, lambda: _connect(settings.database_url))
    report = run(settings.owner_url, wiring.retention_policy(settings), store, anchorer,
                 dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "plan": report.plan.as_json(),
                          **({} if args.dry_run else report.as_json())}, indent=2))
        return 0
    lines = report.plan.lines()
    verb = "would remove" if args.dry_run else "removed"
    print(f"retention {verb} {len(lines)} item(s)")
    if report.plan.audit_rows:
        print(f"  (the expired audit_log months hold {report.plan.audit_rows} row(s))")
    for line in lines:
        print(f"  {line}")
    for kept in report.kept:
        print(f"  kept, {kept}")
    return 0


def add_audit_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("audit_command", choices=["verify", "anchor"],
                         help="verify: the hash chain and every signed checkpoint; "
                              "anchor: write a checkpoint of the chain head now")
    command.add_argument("--public-key", type=Path,
                         help="verify with this Ed25519 public key (PEM) instead of the "
                              "anchoring key file")
    command.add_argument("--json", action="store_true", help="print the verdict as JSON")


def audit_command(settings: Settings, args: argparse.Namespace) -> int:
    """``audit verify``: exit 0 when the chain is intact and every checkpoint matches,
    1 naming the first broken row or the checkpoints that no longer match."""
    from atrium.operations.audit_verify import verify_audit

    store = wiring.anchor_store(settings)
    if args.audit_command == "anchor":
        try:
            anchorer = wiring.anchorer(settings, lambda: _connect(settings.database_url), store)
            anchorer.publish_public_key()
            checkpoint = anchorer.anchor(force=True)
        except (AnchorError, StorageError) as error:
            print(f"atrium: no checkpoint written: {error}", file=sys.stderr)
            return 2
        print(f"anchored seq {checkpoint.seq}: {checkpoint.name}" if checkpoint
              else "nothing to anchor: the audit log is empty")
        return 0
    key_file = args.public_key or wiring.anchor_key_path(settings)
    try:
        public_key = load_public_key(key_file) if key_file.exists() else None
    except AnchorError as error:
        print(f"atrium: {error}", file=sys.stderr)
        return 2
    with _connect(settings.database_url) as conn:
        try:
            verdict = verify_audit(conn, store, public_key,
                                   retention=dt.timedelta(days=settings.retention_audit_days))
        except (AnchorError, StorageError) as error:
            print(f"atrium: the checkpoints cannot be read: {error}", file=sys.stderr)
            return 2
    print(json.dumps(verdict.as_json(), indent=2) if args.json else verdict.describe())
    return 0 if verdict.ok else 1
