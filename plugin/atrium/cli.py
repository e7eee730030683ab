"""The ``atrium`` command.

``run`` is the local environment behind ``make run``; the other commands act on a
running Atrium: ``migrate``, ``verify`` (exit 1 when the mirror differs from
Orthanc), ``reconcile``, ``backfill``, ``status``. ``token`` prints a token signed
by the local dev issuer (when no ``ATRIUM_OIDC_ISSUER`` is configured).
``audit verify`` checks the audit log's hash chain (exit 1 naming the first broken row).
``backup`` and ``restore``: backups with point-in-time recovery (docs/OPERATIONS.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from atrium.settings import Settings, SettingsError, load_settings

log = logging.getLogger("atrium.cli")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "orthanc-config" / "orthanc.json"


def _read_config(path: Path | None) -> dict[str, Any]:
    path = path or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    if path is None:
        return {}
    try:
        parsed = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SettingsError(f"cannot read the Orthanc configuration {path}: {exc}") from None
    if not isinstance(parsed, dict):
        raise SettingsError(f"the Orthanc configuration {path} must be a JSON object")
    return parsed


def _pool(settings: Settings) -> Any:
    from psycopg_pool import ConnectionPool

    pool: ConnectionPool[Any] = ConnectionPool(settings.database_url, min_size=1, max_size=4,
                                               timeout=10, open=True)
    return pool


def _mirror(settings: Settings, pool: Any, workers: int = 4) -> Any:
    from atrium.app import build_mirror

    return build_mirror(settings, pool, fetch_workers=workers)


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from atrium.migrations import apply_migrations

    applied = apply_migrations(settings.database_url)
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    """``audit verify``: exit 0 when the hash chain is intact and matches every signed
    checkpoint, 1 naming the first broken row or checkpoint; ``audit anchor``."""
    from atrium.operations.command import audit_command

    return audit_command(settings, args)


def cmd_maintain(settings: Settings, args: argparse.Namespace) -> int:
    from atrium.operations.command import maintain_command

    return maintain_command(settings, args)


def cmd_retention(settings: Settings, args: argparse.Namespace) -> int:
    from atrium.operations.command import retention_command

    return retention_command(settings, args)


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    from atrium.mirror.verify import compare

    with _pool(settings) as pool:
        mirror = _mirror(settings, pool)
        report = compare(mirror.api, pool.connection,
                         progress=None if args.quiet else lambda m: print(m, file=sys.stderr))
    for level, count in report.orthanc_counts.items():
        print(f"{level:8} orthanc={count} mirror={report.mirror_counts.get(level)}")
    for difference in report.differences:
        print(difference)
    print("clean" if report.clean else f"{len(report.differences)} difference(s)")
    return 0 if report.clean else 1


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from atrium.jobs import Job
    from atrium.mirror.verify import compare, repair

    with _pool(settings) as pool:
        mirror = _mirror(settings, pool)
        report = compare(mirror.api, pool.connection)
        job = Job(pool.connection, "reconcile", total=len(report.differences))
        try:
            repaired = repair(report, mirror)
            after = compare(mirror.api, pool.connection)
            job.progress(repaired, force=True)
            job.succeed({"differences": len(report.differences), "repaired": repaired,
                         "remaining": len(after.differences)})
        except Exception as exc:
            job.fail(f"{type(exc).__name__}: {exc}")
            raise
    print(f"{len(report.differences)} difference(s) found, {len(after.differences)} remaining")
    return 0 if after.clean else 1


def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from atrium.mirror.backfill import backfill

    with _pool(settings) as pool:
        mirror = _mirror(settings, pool, workers=args.workers)
        with tqdm(unit="instance", disable=args.quiet) as bar:
            def on_progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = backfill(mirror, pool.connection, on_progress)
    print(json.dumps(result))
    return 0


def cmd_status(settings: Settings, _args: argparse.Namespace) -> int:
    from atrium.api.mirror_status import mirror_status
    from atrium.app import orthanc_client

    with _pool(settings) as pool:
        status = mirror_status(orthanc_client(settings), pool)
    print(json.dumps(status, indent=2, default=str))
    return 0


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    """Print a dev-issuer token on stdout alone, so ``TOKEN=$(atrium token ...)`` works."""
    from atrium.auth.dev_issuer import DEFAULT_TTL_SECONDS, DevIssuerError, load_or_create

    if settings.oidc_issuer:
        print(f"atrium: ATRIUM_OIDC_ISSUER is set ({settings.oidc_issuer}), so Atrium accepts "
              "only that issuer's tokens; get a token from it instead", file=sys.stderr)
        return 2
    try:
        token = load_or_create(settings.data_dir).mint(
            args.user, args.role, args.org, audience=settings.oidc_audience,
            org_claim=settings.org_claim, email=args.email,
            ttl=DEFAULT_TTL_SECONDS if args.ttl is None else args.ttl)
    except DevIssuerError as error:
        print(f"atrium: {error}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _token_arguments(command: argparse.ArgumentParser) -> None:
    from atrium.auth.principal import KNOWN_ROLES  # cheap; dev_issuer loads cryptography

    command.add_argument("--user", required=True, help="user name (preferred_username)")
    command.add_argument("--role", action="append", required=True, choices=sorted(KNOWN_ROLES),
                         help="a role; repeat for several")
    command.add_argument("--org", required=True, help="the user's organization")
    command.add_argument("--ttl", type=int, help="lifetime in seconds (default 3600)")
    command.add_argument("--email", help="the user's e-mail address (optional)")


def cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    """Backups with point-in-time recovery (:mod:`atrium.backup.command`)."""
    from atrium.backup.command import backup_command

    return backup_command(settings, args)


def cmd_restore(settings: Settings, args: argparse.Namespace) -> int:
    from atrium.backup.command import restore_command

    return restore_command(settings, args)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """What ``make run`` runs (:mod:`atrium.runner`)."""
    from atrium.runner import run

    return run(settings, _read_config(args.config), nodes=args.nodes)


def _node_count(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {raw!r}") from None
    if not 1 <= value <= _MAX_NODES:
        raise argparse.ArgumentTypeError(f"must be between 1 and {_MAX_NODES}, got {value}")
    return value


# Each node is a whole Orthanc with Atrium loaded: more than this on one machine
# measures the machine, not Atrium.
_MAX_NODES = 16


COMMANDS = {
    "run": (cmd_run, "start PostgreSQL and Orthanc with Atrium in the foreground"),
    "migrate": (cmd_migrate, "apply pending database migrations"),
    "audit": (cmd_audit, "audit log: `audit verify` checks its hash chain and checkpoints; "
                         "`audit anchor` writes a checkpoint"),
    "maintain": (cmd_maintain, "create the monthly partitions ahead"),
    "retention": (cmd_retention, "remove expired data (--dry-run lists it); "
                                 "`retention restore --month YYYY-MM`"),
    "verify": (cmd_verify, "list every difference between Orthanc and the mirror"),
    "reconcile": (cmd_reconcile, "repair every difference between Orthanc and the mirror"),
    "backfill": (cmd_backfill, "mirror everything Orthanc holds, as a job with progress"),
    "status": (cmd_status, "print the mirror's status"),
    "token": (cmd_token, "print a token signed by the local dev issuer"),
    "backup": (cmd_backup, "base backup + WAL archive on the schedule; `backup setup|list|prune`"),
    "restore": (cmd_restore, "prepare a fresh data directory recovering to --to TIMESTAMP"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atrium", description=__doc__)
    parser.add_argument("--config", type=Path, help="Orthanc configuration file "
                        "(default: orthanc-config/orthanc.json)")
    parser.add_argument("-q", "--quiet", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        if name in ("audit", "retention"):
            from atrium.operations import command as operations_cli

            (operations_cli.add_audit_arguments if name == "audit"
             else operations_cli.add_retention_arguments)(command)
        if name == "backfill":
            command.add_argument("--workers", type=int, default=4,
                                 help="parallel reads from Orthanc (default 4)")
        if name == "token":
            _token_arguments(command)
        if name == "run":
            command.add_argument("--nodes", type=_node_count, default=1,
                                 help="Orthanc + Atrium processes behind HAProxy on the "
                                      "HTTP and DICOM ports (default 1: no balancer)")
        if name in ("backup", "restore"):
            from atrium.backup import command as backup_cli

            (backup_cli.add_backup_arguments if name == "backup"
             else backup_cli.add_restore_arguments)(command)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings(_read_config(args.config))
    except SettingsError as error:
        print(f"atrium: configuration error: {error}", file=sys.stderr)
        return 2
    handler = COMMANDS[args.command][0]
    return handler(settings, args)


if __name__ == "__main__":
    sys.exit(main())
