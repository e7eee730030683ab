"""Install the published OHIF build (npm ``@ohif/app``) where Atrium serves it from.

The package ships a finished ``dist/`` built to live at the site's root (``/``):
its webpack runtime loads every chunk, worker and wasm file from
``__webpack_require__.p = "/"``. Atrium serves it at ``/viewer/``, so the install
rewrites that one assignment in the files that carry it; nothing else of OHIF
changes (``index.html`` is rendered per configuration when Atrium starts, see
:mod:`atrium.viewer.site`). The tarball is checked against a pinned SHA-256, so a
registry that answers with other bytes stops the install.

Usage: ``python -m atrium.viewer.install DIRECTORY`` (``scripts/bootstrap.sh``
does it); the build lands in ``DIRECTORY/ohif-<version>`` once, and a later run
with the same version does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["MOUNT", "OHIF_SHA256", "OHIF_VERSION", "InstallError", "install", "relocate",
           "target_dir"]

OHIF_VERSION = "3.13.2"
OHIF_SHA256 = "b189d3963bfc58e9394a9db8c7be75d07beb029ec211dbb126d47b62969dd3f1"
MOUNT = "/viewer/"
STAMP = ".atrium-installed"
_PUBLIC_PATH = b'__webpack_require__.p = "/";'


class InstallError(RuntimeError):
    """The build could not be fetched, or is not the pinned one."""


def target_dir(root: Path, version: str = OHIF_VERSION) -> Path:
    return root / f"ohif-{version}"


def relocate(dist: Path, mount: str = MOUNT) -> list[str]:
    """Point what ``dist`` loads from the site's root at ``mount``: the webpack
    runtime of the top-level scripts, the fonts of the style sheets (``url(/…)``),
    the icons of ``manifest.json``. The names of the files changed; idempotent."""
    here = re.escape(mount[1:].encode())
    rules = {
        "*.js": (re.compile(re.escape(_PUBLIC_PATH)),
                 b'__webpack_require__.p = "' + mount.encode() + b'";'),
        "*.css": (re.compile(rb"url\(/(?!/|" + here + rb")"), b"url(" + mount.encode()),
        "manifest.json": (re.compile(rb'"/(?!/|' + here + rb')(?=assets/)'),
                          b'"' + mount.encode()),
    }
    changed = []
    for pattern, (old, new) in rules.items():
        for path in sorted(dist.glob(pattern)):
            body = path.read_bytes()
            relocated = old.sub(new, body)
            if relocated != body:
                path.write_bytes(relocated)
                changed.append(path.name)
    return sorted(changed)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract_dist(tarball: Path, into: Path) -> Path:
    """``package/dist/`` of ``tarball`` under ``into``: regular files and directories
    only, no member outside ``into`` (tarfile's "data" filter would do this on 3.12;
    the interpreter Orthanc embeds may be older)."""
    with tarfile.open(tarball, "r:gz") as archive:
        members = []
        for member in archive.getmembers():
            name = member.name
            if not name.startswith("package/dist/") or not (member.isfile() or member.isdir()):
                continue
            parts = Path(name).parts
            if name.startswith("/") or ".." in parts:
                raise InstallError(f"{tarball.name} holds an unsafe path: {name!r}")
            members.append(member)
        archive.extractall(into, members=members)  # noqa: S202 - members checked above
    return into / "package" / "dist"


def install(root: Path, *, version: str = OHIF_VERSION, sha256: str = OHIF_SHA256,
            npm: str = "npm") -> Path:
    """The directory of the installed build, fetching it first if it is missing.

    Raises
    ------
    InstallError
        npm failed, or the tarball's checksum is not ``sha256``.
    """
    target = target_dir(root, version)
    if (target / STAMP).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=".ohif-"))
    try:
        run = subprocess.run([npm, "pack", f"@ohif/app@{version}", "--pack-destination",
                              str(work), "--silent"], capture_output=True, text=True,
                             check=False, timeout=900)
        tarballs = list(work.glob("*.tgz"))
        if run.returncode != 0 or len(tarballs) != 1:
            raise InstallError(f"npm pack @ohif/app@{version} failed: "
                               f"{(run.stderr or run.stdout).strip()[-500:]}")
        actual = _sha256(tarballs[0])
        if actual != sha256:
            raise InstallError(f"@ohif/app@{version} has sha256 {actual}, not the pinned "
                               f"{sha256}: refusing it")
        dist = _extract_dist(tarballs[0], work)
        changed = relocate(dist)
        if "index.html" not in {p.name for p in dist.iterdir()} or not changed:
            raise InstallError(f"@ohif/app@{version} is not the build Atrium knows (no "
                               "index.html, or no webpack public path to relocate)")
        (dist / STAMP).write_text(f"@ohif/app@{version} sha256={sha256} mount={MOUNT}\n")
        if target.exists():
            shutil.rmtree(target)  # a half-installed copy without its stamp
        dist.rename(target)
        log.info("viewer.installed version=%s path=%s relocated=%d", version, target,
                 len(changed))
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atrium.viewer.install",
                                     description="Install OHIF for Atrium's /viewer/")
    parser.add_argument("root", type=Path, help="where ohif-<version>/ goes")
    args = parser.parse_args(argv)
    try:
        print(install(args.root))
    except InstallError as error:
        print(f"atrium: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
