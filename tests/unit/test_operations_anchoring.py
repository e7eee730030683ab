"""Anchoring's pure parts: the key file, signed checkpoints, their object names."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atrium.operations.anchoring import (
    AnchorError,
    Checkpoint,
    key_id,
    list_names,
    load_or_create_key,
    load_public_key,
    public_pem,
    read_checkpoint,
    sign_checkpoint,
)
from atrium.storage import FileObjectStore

WHEN = dt.datetime(2026, 11, 27, 22, 5, 1, 123456, tzinfo=dt.UTC)
CHECKPOINT = Checkpoint("head", 42, "0b6f8c8e-1b5e-4c55-9d53-4f1c1c6b7a01", "ab" * 32, WHEN,
                        "node-1")


def test_the_key_is_created_once_owner_only_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "anchor.pem"

    first = load_or_create_key(path)
    again = load_or_create_key(path)

    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert key_id(first.public_key()) == key_id(again.public_key())


def test_nodes_creating_the_key_at_once_all_get_the_same_complete_key(tmp_path: Path) -> None:
    """Replicas starting together on a shared volume: one creates the key, the others
    read it whole (never a half-written file), and no draft is left behind."""
    import multiprocessing

    path = tmp_path / "shared" / "anchor.pem"
    with multiprocessing.get_context("fork").Pool(8) as pool:
        ids = pool.map(_key_id_of, [path] * 32)
    assert len(set(ids)) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["anchor.pem"]


def _key_id_of(path: Path) -> str:
    return key_id(load_or_create_key(path).public_key())


def test_a_key_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "anchor.pem"
    load_or_create_key(path)
    path.chmod(0o644)

    with pytest.raises(AnchorError, match="readable by others .*chmod 600"):
        load_or_create_key(path)


def test_a_signed_checkpoint_reads_back_with_the_public_key(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "public.pem").write_bytes(public_pem(key.public_key()))

    read = read_checkpoint(sign_checkpoint(CHECKPOINT, key),
                           load_public_key(tmp_path / "public.pem"), "cp.json")

    assert read == Checkpoint(**{**CHECKPOINT.__dict__, "name": "cp.json"})


@pytest.mark.parametrize("field, value", [("seq", 41), ("row_hash", "cd" * 32),
                                          ("anchored_at", "2030-01-01T00:00:00+00:00")])
def test_any_change_to_a_signed_checkpoint_is_refused(field: str, value: object) -> None:
    key = Ed25519PrivateKey.generate()
    document = json.loads(sign_checkpoint(CHECKPOINT, key))
    document["checkpoint"][field] = value

    with pytest.raises(AnchorError, match="the signature does not verify"):
        read_checkpoint(json.dumps(document).encode(), key.public_key(), "cp.json")


def test_a_checkpoint_signed_by_another_key_is_refused() -> None:
    data = sign_checkpoint(CHECKPOINT, Ed25519PrivateKey.generate())

    with pytest.raises(AnchorError, match="was signed by key .*, not by the anchoring key"):
        read_checkpoint(data, Ed25519PrivateKey.generate().public_key(), "cp.json")


def test_garbage_is_not_a_checkpoint() -> None:
    with pytest.raises(AnchorError, match="is not a readable checkpoint"):
        read_checkpoint(b"{}", Ed25519PrivateKey.generate().public_key(), "cp.json")


def test_object_names_sort_by_seq_and_are_listed_under_their_prefix(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path)
    names = [Checkpoint("head", seq, "id", "00" * 32, WHEN, "n").object_name("audit-anchors")
             for seq in (10, 9, 100)]
    for name in names:
        store.put(name, b"{}")
    store.put("elsewhere/x.json", b"{}")

    assert names[0] == "audit-anchors/head/2026/11/000000000000010-20261127T220501123456Z-n.json"
    assert list_names(store, "audit-anchors") == [names[1], names[0], names[2]]
    assert list_names(store, "nothing-here") == []
