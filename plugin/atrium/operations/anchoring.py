"""Signed checkpoints of the audit chain, kept outside the database.

The hash chain (sql/0007) proves that no row was changed *relative to the
others*; someone with full database access can still rewrite the whole table
with a fresh, self-consistent chain, or cut its newest rows and move the head
back. A checkpoint fixes the chain at a moment: the head's ``seq``, row id and
hash, signed with an Ed25519 key that lives in a file (never in the database),
written to object storage where Atrium's database role cannot reach. Verification
later reads every checkpoint and checks that the chain still contains what each
one recorded: a rewrite changes the recorded hashes, a truncation loses the
recorded rows, and the checkpoint that no longer matches is named.

Two kinds: ``head`` (periodic, and at shutdown) and ``retention`` (the boundary
row of a retention cut, written before the expired months are dropped: the oldest
remaining row must chain onto it).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import urllib3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from minio.error import MinioException

from atrium.storage import FileObjectStore, ObjectNotFound, ObjectStore, S3ObjectStore

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FORMAT", "DEFAULT_PREFIX", "AnchorError", "AnchorReport", "Anchorer",
           "Checkpoint", "key_id", "list_names", "load_or_create_key", "load_public_key",
           "read_checkpoint", "sign_checkpoint", "verify_anchors"]

CHECKPOINT_FORMAT = "atrium-audit-checkpoint-v1"
DEFAULT_PREFIX = "audit-anchors"
KINDS = ("head", "retention")
_NODE = re.compile(r"[^A-Za-z0-9._-]")

Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


class AnchorError(Exception):
    """The anchoring key or a checkpoint is unusable; the message says why."""


# ------------------------------------------------------------------ the key

def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 signing key in ``path`` (PEM, PKCS#8), created mode 0600 on first use.

    Raises
    ------
    AnchorError
        When the file is readable by others than its owner, or is not such a key.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        # Written whole to a file of this process, then linked into place: nodes
        # starting together on a shared volume either create the key or read a
        # complete one, never a half-written file.
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
                out.flush()
                os.fsync(out.fileno())
            os.link(draft, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            log.info("audit.anchor_key_created path=%s key_id=%s", path,
                     key_id(_read_private(path).public_key()))
        finally:
            draft.unlink(missing_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise AnchorError(f"the audit anchoring key {path} is readable by others "
                          f"(mode {mode:o}): run chmod 600 on it")
    return _read_private(path)


def _read_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise AnchorError(f"cannot read the audit anchoring key {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AnchorError(f"the audit anchoring key {path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key (PEM) an auditor was given, or the public half of a private key file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AnchorError(f"cannot read the key {path}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in data:
        return _read_private(Path(path)).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise AnchorError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AnchorError(f"{path} is not an Ed25519 public key")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: Ed25519PublicKey) -> str:
    """16 hex digits naming a key: the start of the SHA-256 of its raw public bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# ------------------------------------------------------------------ checkpoints

@dataclass(frozen=True)
class Checkpoint:
    """What the chain held at ``anchored_at``: row ``seq`` (``row_id``) hashed ``row_hash``."""

    kind: str
    seq: int
    row_id: str
    row_hash: str  # lower-case hex
    anchored_at: dt.datetime
    node: str
    name: str = ""  # the object it was read from

    def body(self, signing_key_id: str) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "kind": self.kind, "seq": self.seq,
                "row_id": self.row_id, "row_hash": self.row_hash,
                "anchored_at": self.anchored_at.isoformat(), "node": self.node,
                "key_id": signing_key_id}

    def object_name(self, prefix: str) -> str:
        when = self.anchored_at.astimezone(dt.UTC)
        return (f"{prefix}/{self.kind}/{when:%Y}/{when:%m}/{self.seq:015d}-"
                f"{when:%Y%m%dT%H%M%S%fZ}-{self.node}.json")


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_checkpoint(checkpoint: Checkpoint, key: Ed25519PrivateKey) -> bytes:
    """The object's bytes: the checkpoint and an Ed25519 signature of its canonical JSON."""
    body = checkpoint.body(key_id(key.public_key()))
    signature = key.sign(_canonical(body))
    document = {"checkpoint": body, "signature": base64.b64encode(signature).decode()}
    return json.dumps(document, indent=1, sort_keys=True).encode()


def read_checkpoint(data: bytes, public_key: Ed25519PublicKey, name: str = "") -> Checkpoint:
    """The checkpoint ``data`` holds, once its signature verifies with ``public_key``.

    Raises
    ------
    AnchorError
        For anything but a well-formed checkpoint signed by that key.
    """
    try:
        document = json.loads(data)
        body = document["checkpoint"]
        signature = base64.b64decode(document["signature"], validate=True)
        if body.get("format") != CHECKPOINT_FORMAT or body.get("kind") not in KINDS:
            raise ValueError("unknown format or kind")
        checkpoint = Checkpoint(body["kind"], int(body["seq"]), str(body["row_id"]),
                                str(body["row_hash"]),
                                dt.datetime.fromisoformat(body["anchored_at"]),
                                str(body["node"]), name)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise AnchorError(f"checkpoint {name} is not a readable checkpoint ({exc})") from None
    if body.get("key_id") != key_id(public_key):
        raise AnchorError(f"checkpoint {name} was signed by key {body.get('key_id')}, not by "
                          f"the anchoring key {key_id(public_key)}")
    try:
        public_key.verify(signature, _canonical(body))
    except InvalidSignature:
        raise AnchorError(f"checkpoint {name}: the signature does not verify: the "
                          "checkpoint was altered") from None
    return checkpoint


def list_names(store: ObjectStore, prefix: str) -> list[str]:
    """The names of the objects under ``prefix/``, sorted.

    The store interface has no listing (nothing else needs one); the two stores
    Atrium has are listed here directly.
    """
    if isinstance(store, FileObjectStore):
        root = store.root / prefix
        if not root.is_dir():
            return []
        return sorted(str(path.relative_to(store.root)) for path in root.rglob("*")
                      if path.is_file() and not path.name.startswith(".atrium~"))
    if isinstance(store, S3ObjectStore):
        base = f"{store.prefix}/" if store.prefix else ""
        try:
            objects = store.client.list_objects(store.bucket, prefix=f"{base}{prefix}/",
                                                recursive=True)
            return sorted(str(o.object_name)[len(base):] for o in objects if o.object_name)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise AnchorError(f"cannot list the checkpoints in s3://{store.bucket}/{base}"
                              f"{prefix}: {exc}") from exc
    raise AnchorError(f"cannot list objects of a {type(store).__name__}")


# ------------------------------------------------------------------ writing

_HEAD = """
SELECT h.seq, h.row_hash, a.id
FROM audit_chain_head h LEFT JOIN audit_log a ON a.seq = h.seq
"""


@dataclass
class Anchorer:
    """Writes checkpoints of one database's chain into ``store`` under ``prefix``."""

    connect: Connect
    store: ObjectStore
    key: Ed25519PrivateKey
    prefix: str = DEFAULT_PREFIX
    node: str = "atrium"
    _last: tuple[int, str] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.node = _NODE.sub("-", self.node)[:64] or "atrium"
        self.prefix = self.prefix.strip("/")

    def publish_public_key(self) -> str:
        """Store the public key beside the checkpoints, for auditors; its object name."""
        name = f"{self.prefix}/keys/{key_id(self.key.public_key())}.pem"
        if not self.store.exists(name):
            self.store.put(name, public_pem(self.key.public_key()),
                           content_type="application/x-pem-file")
        return name

    def anchor(self, now: dt.datetime | None = None, *, force: bool = False
               ) -> Checkpoint | None:
        """Checkpoint the chain head; None when it has not moved since this
        anchorer's last checkpoint (unless ``force``) or the chain is empty."""
        with self._lock:
            with self.connect() as conn:
                row = conn.execute(_HEAD).fetchone()
            if row is None or row[0] == 0 or row[2] is None:
                return None
            head = (int(row[0]), bytes(row[1]).hex())
            if head == self._last and not force:
                return None
            checkpoint = self.write("head", head[0], str(row[2]), head[1], now)
            self._last = head
            return checkpoint

    def write(self, kind: str, seq: int, row_id: str, row_hash: str,
              now: dt.datetime | None = None) -> Checkpoint:
        """Sign and store one checkpoint; its ``name`` is set to the object written."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        checkpoint = Checkpoint(kind, seq, row_id, row_hash, now or dt.datetime.now(dt.UTC),
                                self.node)
        name = checkpoint.object_name(self.prefix)
        self.store.put(name, sign_checkpoint(checkpoint, self.key),
                       content_type="application/json")
        log.info("audit.anchored kind=%s seq=%d object=%s", kind, seq, name)
        return Checkpoint(kind, seq, row_id, row_hash, checkpoint.anchored_at, self.node, name)


# ------------------------------------------------------------------ verifying

@dataclass
class AnchorReport:
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        if self.ok:
            return f"anchors match: {self.checkpoints} signed checkpoint(s) checked"
        shown = "\n  ".join(self.problems[:5])
        more = f"\n  ... and {len(self.problems) - 5} more" if len(self.problems) > 5 else ""
        return (f"anchors BROKEN: {len(self.problems)} of {self.checkpoints} checkpoint(s) "
                f"no longer match the database:\n  {shown}{more}")

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checkpoints": self.checkpoints, "problems": self.problems}


def load_checkpoints(store: ObjectStore, public_key: Ed25519PublicKey, prefix: str,
                     report: AnchorReport) -> list[Checkpoint]:
    """Every checkpoint under ``prefix``; unreadable or forged ones go to ``report``."""
    found = []
    for name in list_names(store, prefix.strip("/")):
        if not name.endswith(".json"):
            continue
        report.checkpoints += 1
        try:
            with store.get(name) as stream:
                data = stream.read()
            found.append(read_checkpoint(data, public_key, name))
        except (AnchorError, ObjectNotFound) as exc:
            report.problems.append(str(exc))
    return found


def _chunks(values: list[int], size: int = 5000) -> Iterable[list[int]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def verify_anchors(conn: psycopg.Connection[Any], store: ObjectStore,
                   public_key: Ed25519PublicKey, prefix: str = DEFAULT_PREFIX) -> AnchorReport:
    """Check the database's chain against every signed checkpoint in ``store``.

    A head checkpoint must find its row with the same id and hash; a row beyond
    the chain head means the tail was cut. A retention checkpoint's boundary row
    may be gone (it left with the dropped months), but the row after it, when
    present, must carry its hash as ``prev_hash``; and every retention cut the
    database records must have been anchored. ``conn`` in autocommit.
    """
    report = AnchorReport()
    checkpoints = load_checkpoints(store, public_key, prefix, report)
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        head = conn.execute("SELECT seq FROM audit_chain_head").fetchone()
        head_seq = int(head[0]) if head else 0
        wanted = sorted({c.seq for c in checkpoints} | {c.seq + 1 for c in checkpoints})
        rows: dict[int, tuple[str, str, str]] = {}
        for chunk in _chunks(wanted):
            for seq, row_id, prev, row_hash in conn.execute(
                    "SELECT seq, id, prev_hash, row_hash FROM audit_log WHERE seq = ANY(%s)",
                    (chunk,)).fetchall():
                rows[int(seq)] = (str(row_id), bytes(prev).hex(), bytes(row_hash).hex())
        cuts = conn.execute("SELECT id, boundary_seq, encode(boundary_hash, 'hex'), checkpoint "
                            "FROM audit_retention_cuts ORDER BY id").fetchall()
    boundaries = [c for c in checkpoints if c.kind == "retention"]
    retired = max((c.seq for c in boundaries), default=0)
    for checkpoint in sorted(checkpoints, key=lambda c: (c.seq, c.name)):
        problem = _check(checkpoint, rows, head_seq, retired)
        if problem:
            report.problems.append(f"checkpoint {checkpoint.name}: {problem}")
    anchored = {(c.seq, c.row_hash) for c in boundaries}
    for cut_id, seq, boundary_hash, name in cuts:
        if (int(seq), boundary_hash) not in anchored:
            report.problems.append(f"retention cut {cut_id} (boundary seq {seq}) has no "
                                   f"matching signed checkpoint (expected {name})")
    if report.problems:
        log.warning("audit.anchors_broken problems=%d first=%s", len(report.problems),
                    report.problems[0])
    return report


def _check(checkpoint: Checkpoint, rows: dict[int, tuple[str, str, str]], head_seq: int,
           retired: int) -> str | None:
    """Why the chain no longer holds what ``checkpoint`` recorded, or None."""
    seq = checkpoint.seq
    if seq > head_seq:
        return (f"it recorded seq {seq} but the chain now ends at seq {head_seq}: rows "
                "were removed from the tail of the audit log")
    row = rows.get(seq)
    if row is not None:
        row_id, _, row_hash = row
        if (row_id, row_hash) != (checkpoint.row_id, checkpoint.row_hash):
            return (f"row seq {seq} is now {row_id} hashed {row_hash[:16]}..., the checkpoint "
                    f"recorded {checkpoint.row_id} hashed {checkpoint.row_hash[:16]}...: "
                    "the audit log was rewritten")
        return None
    if checkpoint.kind == "retention":
        following = rows.get(seq + 1)
        if following is not None and following[1] != checkpoint.row_hash:
            return (f"the oldest remaining row, seq {seq + 1}, does not chain onto the "
                    "anchored retention boundary: the audit log was rewritten")
        return None
    if seq <= retired:
        return None  # left with months an anchored retention cut dropped
    return f"row seq {seq} it recorded is missing and no anchored retention cut removed it"
