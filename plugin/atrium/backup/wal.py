"""The command PostgreSQL runs to archive and restore WAL files::

    archive_command = '<python> -m atrium.backup.wal push --config FILE %p %f'
    restore_command = '<python> -m atrium.backup.wal fetch --config FILE %f %p'

It reads the backup store from ``FILE`` (written by ``atrium backup setup`` or
``atrium restore``, mode 0600), not from Atrium's settings: it runs as the server's
user, in the data directory, without Atrium's environment. Exit status 0: done;
1: ``fetch`` of a file the archive does not hold (PostgreSQL's signal that
recovery has reached the end of the archive); 2: an error, told on stderr (which
PostgreSQL writes to its log).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from atrium.backup.archive import ArchiveConfig, ArchiveError, fetch_wal, push_wal
from atrium.storage import StorageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atrium-wal", description=__doc__)
    parser.add_argument("action", choices=["push", "fetch"])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("first", help="push: %%p (path); fetch: %%f (file name)")
    parser.add_argument("second", help="push: %%f (file name); fetch: %%p (path)")
    args = parser.parse_args(argv)
    try:
        store = ArchiveConfig.read(args.config).open()
        if args.action == "push":
            push_wal(store, Path(args.first), args.second)
            return 0
        return 0 if fetch_wal(store, args.first, Path(args.second)) else 1
    except (ArchiveError, StorageError, OSError) as exc:
        print(f"atrium wal {args.action}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
