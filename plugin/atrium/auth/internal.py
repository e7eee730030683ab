"""The credential of Atrium's own calls to Orthanc over HTTP.

The mirror and the DICOMweb gateway read Orthanc over loopback HTTP (SDK calls
hold the GIL and cannot forward headers), and the ``atrium`` command talks to the
running Orthanc the same way. Those calls carry no user token; they carry a
random secret kept in the data directory, readable only by the account Atrium
runs as. The request filter lets a request with that secret through only from a
loopback address.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from atrium.auth.client_address import is_loopback

__all__ = ["INTERNAL_HEADER", "internal_secret", "is_internal_call"]

INTERNAL_HEADER = "X-Atrium-Internal"
_SECRET_FILE = Path("keys") / "internal-secret"


def internal_secret(data_dir: Path) -> str:
    """The secret of this data directory, created on first use (mode 0600). Two
    processes starting at once agree: the first rename wins, the other reads it."""
    path = data_dir / _SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    candidate = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32))
    try:
        os.link(candidate, path)  # fails if another process won the race
    except FileExistsError:
        pass
    finally:
        candidate.unlink()
    return path.read_text().strip()


def is_internal_call(headers: Mapping[str, str], ip: str, secret: str) -> bool:
    """Whether a request comes from Atrium itself: the secret (lower-case header
    names), compared in constant time, from a loopback address."""
    presented = headers.get(INTERNAL_HEADER.lower(), "")
    return bool(presented) and is_loopback(ip) and hmac.compare_digest(
        presented.encode(), secret.encode())
