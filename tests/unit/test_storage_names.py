"""Object names, and the object-store contract run against the file backend.

:class:`ObjectStoreContract` specifies every backend's behaviour once; the S3 backend
runs the same class in ``tests/integration/test_storage_s3.py``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import posixpath
import string
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from hypothesis import given
from hypothesis import strategies as st
from minio import Minio

from atrium.storage import (
    FileObjectStore,
    InvalidObjectName,
    ObjectNotFound,
    ObjectStore,
    S3ObjectStore,
    StorageError,
    _parse_endpoint,
    open_store,
    validate_object_name,
)

MiB = 1024 * 1024

# --------------------------------------------------------------------------- names

ACCEPTED = [
    "a",
    "slides/3f2a/original.svs",
    "recordings/2024-01/ecg_100.dat",
    "a.b.c",
    "...",  # only '.' and '..' are special
    ".zattrs",
    "x" * 255,
    "/".join(["y" * 255, "z" * 255]),  # 511 characters
    "A-Z_0.9/UPPER",
]

REJECTED = [
    ("../x", "'..'"),
    ("a/../../b", "'..'"),
    ("./a", "'.'"),
    ("a/.", "'.'"),
    ("/abs", "leading '/'"),
    ("a//b", "empty segment"),
    ("a/", "empty segment"),
    ("a\\b", "backslash"),
    ("..\\..\\x", "backslash"),
    ("a\x00b", "U+0000"),
    ("a\nb", "U+000A"),
    ("a\x7fb", "U+007F"),
    ("%2e%2e/x", "percent"),
    ("a%2Fb", "percent"),
    ("a" * 513, "513 characters"),
    ("x" * 256, "255"),
    ("", "empty"),
    ("a b", "' '"),
    ("a:b", "':'"),
    ("a~b", "'~'"),
    ("ｓｌｉｄｅ", "U+FF53"),  # fullwidth look-alikes of "slide"
    ("a\u2215..\u2215b", "U+2215"),  # DIVISION SLASH
    ("caf\u00e9", "U+00E9"),
    ("a\u200bb", "U+200B"),  # zero-width space
]


@pytest.mark.parametrize("name", ACCEPTED)
def test_safe_names_are_accepted_unchanged(name: str) -> None:
    assert validate_object_name(name) == name


@pytest.mark.parametrize(("name", "hint"), REJECTED)
def test_unsafe_names_are_rejected_with_a_sentence_naming_the_rule(name: str, hint: str) -> None:
    with pytest.raises(InvalidObjectName) as caught:
        validate_object_name(name)
    assert hint in str(caught.value)


@pytest.mark.parametrize("value", [None, b"a", 1, Path("a")])
def test_non_string_names_are_rejected(value: object) -> None:
    with pytest.raises(InvalidObjectName, match="must be a string"):
        validate_object_name(value)  # type: ignore[arg-type]


def test_invalid_name_is_both_a_storage_error_and_a_value_error() -> None:
    with pytest.raises(StorageError):
        validate_object_name("../x")
    with pytest.raises(ValueError):
        validate_object_name("../x")


def test_rejection_does_not_echo_a_huge_name() -> None:
    with pytest.raises(InvalidObjectName) as caught:
        validate_object_name("z" * 10_000)
    assert len(str(caught.value)) < 200


# Characters that make names dangerous, mixed with ordinary ones.
HOSTILE = st.text(alphabet="ab./\\%2e\x00\n~ ｅ\u2215", max_size=40)
SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=1, max_size=20)
SAFE = st.lists(SEGMENT.filter(lambda s: s not in {".", ".."}), min_size=1, max_size=8).map(
    "/".join
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("root").resolve()


@given(name=HOSTILE | SAFE)
def test_any_accepted_name_resolves_inside_the_root(root: Path, name: str) -> None:
    try:
        validate_object_name(name)
    except InvalidObjectName:
        return
    resolved = (root / name).resolve()
    assert resolved.is_relative_to(root)
    assert resolved != root
    assert posixpath.normpath(name) == name  # already normal: one name, one key


@given(name=SAFE)
def test_names_built_from_safe_segments_are_accepted(name: str) -> None:
    assert validate_object_name(name) == name


# ------------------------------------------------------------------ the store contract


class OneByteAtATime:
    """A stream with no length, no seek, and short reads: nothing can cheat."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.reads = 0

    def read(self, size: int = -1, /) -> bytes:
        self.reads += 1
        return self._data.read(1 if size < 0 else min(size, 1))


class ChunkedStream:
    """A stream of unknown length yielding ``total`` pseudo-random bytes in odd-sized reads."""

    def __init__(self, total: int, seed: bytes = b"atrium") -> None:
        self.total = total
        self.sha256 = hashlib.sha256()
        self._block = hashlib.sha256(seed).digest() * 4099  # 131,168 bytes, not a power of 2
        self._sent = 0

    def read(self, size: int = -1, /) -> bytes:
        size = min(self.total - self._sent, 65_537 if size < 0 else min(size, 65_537))
        start = self._sent % len(self._block)
        chunk = (self._block[start:] + self._block)[:size]
        self._sent += len(chunk)
        self.sha256.update(chunk)
        return chunk

    def expected(self, offset: int, length: int) -> bytes:
        end = min(self.total, offset + length)
        repeated = self._block * (end // len(self._block) + 2)
        return repeated[offset:end]


def read_all(store: ObjectStore, name: str, chunk: int = 1 << 16) -> bytes:
    parts = []
    with store.get(name) as stream:
        while block := stream.read(chunk):
            parts.append(block)
    return b"".join(parts)


class ObjectStoreContract:
    """What every :class:`ObjectStore` does. Subclasses provide the ``store`` fixture."""

    def test_is_an_object_store(self, store: ObjectStore) -> None:
        assert isinstance(store, ObjectStore)

    def test_check_passes_on_a_usable_store(self, store: ObjectStore) -> None:
        store.check()

    def test_bytes_round_trip(self, store: ObjectStore) -> None:
        assert store.put("a/b/c.bin", b"hello world") == 11
        assert store.exists("a/b/c.bin")
        assert store.size("a/b/c.bin") == 11
        assert read_all(store, "a/b/c.bin") == b"hello world"

    def test_stream_of_unknown_length_round_trip(self, store: ObjectStore) -> None:
        data = bytes(range(256)) * 40
        stream = OneByteAtATime(data)
        assert store.put("stream.bin", stream) == len(data)
        assert read_all(store, "stream.bin") == data
        assert store.size("stream.bin") == len(data)

    def test_declared_length_reads_exactly_that_many_bytes(self, store: ObjectStore) -> None:
        stream = io.BytesIO(b"0123456789")
        assert store.put("first-four", stream, length=4) == 4
        assert read_all(store, "first-four") == b"0123"
        assert stream.read() == b"456789"  # the rest is left for the caller

    def test_stream_shorter_than_declared_length_fails_and_keeps_the_old_object(
        self, store: ObjectStore
    ) -> None:
        store.put("kept", b"old content")
        with pytest.raises(StorageError):
            store.put("kept", io.BytesIO(b"short"), length=100)
        assert read_all(store, "kept") == b"old content"
        with pytest.raises(StorageError):
            store.put("never", io.BytesIO(b"short"), length=100)
        assert not store.exists("never")

    def test_bytes_with_a_wrong_length_are_refused(self, store: ObjectStore) -> None:
        with pytest.raises(ValueError, match="length"):
            store.put("x", b"abc", length=4)
        with pytest.raises(ValueError, match="length"):
            store.put("x", io.BytesIO(b"abc"), length=-1)
        assert not store.exists("x")

    def test_a_text_stream_is_refused(self, store: ObjectStore) -> None:
        with pytest.raises(TypeError, match="binary"):
            store.put("text", io.StringIO("not bytes"))  # type: ignore[arg-type]
        assert not store.exists("text")

    def test_put_replaces_the_object(self, store: ObjectStore) -> None:
        store.put("doc", b"version one, the longer one")
        store.put("doc", b"v2")
        assert read_all(store, "doc") == b"v2"
        assert store.size("doc") == 2

    def test_empty_object(self, store: ObjectStore) -> None:
        assert store.put("empty", b"") == 0
        assert store.exists("empty")
        assert store.size("empty") == 0
        assert read_all(store, "empty") == b""
        assert store.get_range("empty", 0, 10) == b""

    def test_get_streams_in_pieces(self, store: ObjectStore) -> None:
        store.put("pieces", b"abcdefghij")
        with store.get("pieces") as stream:
            assert stream.read(3) == b"abc"
            assert stream.read(3) == b"def"
            assert stream.read() == b"ghij"
            assert stream.read(5) == b""

    def test_leaving_a_stream_half_read_does_not_disturb_later_reads(
        self, store: ObjectStore
    ) -> None:
        store.put("big", b"x" * (2 * MiB))
        store.put("small", b"0123456789")
        for _ in range(15):  # more than a connection pool holds
            with store.get("big") as stream:
                assert stream.read(1) == b"x"
            assert store.get_range("small", 2, 3) == b"234"

    @pytest.mark.parametrize(
        ("offset", "length", "expected"),
        [
            (0, 3, b"012"),
            (4, 2, b"45"),
            (9, 1, b"9"),
            (0, 10, b"0123456789"),
            (7, 3, b"789"),  # exactly to the end
            (7, 100, b"789"),  # past the end: what there is
            (10, 5, b""),  # at the end
            (1000, 5, b""),  # far past the end
            (3, 0, b""),
        ],
    )
    def test_get_range(self, store: ObjectStore, offset: int, length: int, expected: bytes) -> None:
        store.put("digits", b"0123456789")
        assert store.get_range("digits", offset, length) == expected

    def test_a_range_reader_reads_what_get_range_reads(self, store: ObjectStore) -> None:
        store.put("digits", b"0123456789")
        ranges = store.open_ranges("digits")
        try:
            for offset, length in [(0, 3), (4, 2), (7, 3), (7, 100), (10, 5), (1000, 5), (3, 0),
                                   (0, 10)]:
                assert ranges.read(offset, length) == store.get_range("digits", offset, length)
            with pytest.raises(ValueError, match=">= 0"):
                ranges.read(-1, 3)
        finally:
            ranges.close()

    def test_a_range_reader_of_a_missing_object_finds_none(self, store: ObjectStore) -> None:
        with pytest.raises(ObjectNotFound):
            store.open_ranges("absent").read(0, 1)

    @pytest.mark.parametrize(("offset", "length"), [(-1, 3), (0, -1)])
    def test_negative_range_is_refused(self, store: ObjectStore, offset: int, length: int) -> None:
        store.put("digits", b"0123456789")
        with pytest.raises(ValueError, match=">= 0"):
            store.get_range("digits", offset, length)

    def test_delete_is_idempotent(self, store: ObjectStore) -> None:
        store.put("gone", b"data")
        store.delete("gone")
        assert not store.exists("gone")
        store.delete("gone")
        store.delete("never/existed")
        assert not store.exists("gone")

    def test_deleting_one_object_keeps_its_neighbours(self, store: ObjectStore) -> None:
        store.put("dir/one", b"1")
        store.put("dir/two", b"2")
        store.delete("dir/one")
        assert not store.exists("dir/one")
        assert read_all(store, "dir/two") == b"2"

    @pytest.mark.parametrize(
        "read",
        [
            lambda s: read_all(s, "missing"),
            lambda s: s.size("missing"),
            lambda s: s.get_range("missing", 0, 1),
            lambda s: s.get_range("missing", 0, 0),
            lambda s: s.get_range("missing", 50, 1),
        ],
        ids=["get", "size", "get_range", "get_range-empty", "get_range-past-end"],
    )
    def test_missing_object_raises_object_not_found(
        self, store: ObjectStore, read: Callable[[ObjectStore], object]
    ) -> None:
        assert not store.exists("missing")
        with pytest.raises(ObjectNotFound):
            read(store)

    @pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a//b", "a\\b", "%2e%2e/x", ""])
    @pytest.mark.parametrize(
        "call",
        [
            lambda s, n: s.put(n, b"x"),
            lambda s, n: read_all(s, n),
            lambda s, n: s.get_range(n, 0, 1),
            lambda s, n: s.delete(n),
            lambda s, n: s.exists(n),
            lambda s, n: s.size(n),
            lambda s, n: s.url(n),
        ],
        ids=["put", "get", "get_range", "delete", "exists", "size", "url"],
    )
    def test_every_method_refuses_unsafe_names(
        self, store: ObjectStore, name: str, call: Callable[[ObjectStore, str], object]
    ) -> None:
        with pytest.raises(InvalidObjectName):
            call(store, name)

    def test_url_names_the_object(self, store: ObjectStore) -> None:
        url = store.url("slides/1/a.svs")
        assert url.endswith("/slides/1/a.svs")
        assert url != store.url("slides/1/b.svs")

    def test_twelve_mib_stream_of_unknown_length(self, store: ObjectStore) -> None:
        source = ChunkedStream(12 * MiB)
        assert store.put("large/stream.bin", source) == 12 * MiB
        assert store.size("large/stream.bin") == 12 * MiB
        digest = hashlib.sha256()
        with store.get("large/stream.bin") as stream:
            while block := stream.read(MiB):
                digest.update(block)
        assert digest.hexdigest() == source.sha256.hexdigest()
        for offset, length in [
            (0, 100),
            (5 * MiB - 50, 100),  # across a 5 MiB boundary
            (8 * MiB - 7, 14),  # across the S3 store's default part boundary
            (12 * MiB - 10, 10),
            (12 * MiB - 10, 1000),
        ]:
            got = store.get_range("large/stream.bin", offset, length)
            assert got == source.expected(offset, length), (offset, length)


    # ------------------------------------------------------------- compose

    def test_compose_concatenates_ranges_of_objects(self, store: ObjectStore) -> None:
        store.put("parts/a", b"0123456789")
        store.put("parts/b", b"abcdefghij")
        parts = [("parts/b", 0, 3), ("parts/a", 5, 5), ("parts/b", 9, 1), ("parts/a", 0, 0)]
        assert store.compose("whole/file", parts) == 9
        assert read_all(store, "whole/file") == b"abc56789j"
        assert read_all(store, "parts/a") == b"0123456789"  # sources are left alone

    def test_compose_may_read_the_object_it_replaces(self, store: ObjectStore) -> None:
        store.put("grow", b"head")
        store.put("tail", b"-tail")
        assert store.compose("grow", [("grow", 0, 4), ("tail", 0, 5), ("grow", 0, 1)]) == 10
        assert read_all(store, "grow") == b"head-tailh"

    def test_compose_of_no_parts_is_an_empty_object(self, store: ObjectStore) -> None:
        assert store.compose("nothing", []) == 0
        assert store.exists("nothing") and store.size("nothing") == 0

    def test_compose_of_large_parts(self, store: ObjectStore) -> None:
        first, second = ChunkedStream(6 * MiB, seed=b"first"), ChunkedStream(7 * MiB, b"second")
        store.put("big/first", first)
        store.put("big/second", second)
        parts = [("big/second", MiB + 3, 5 * MiB), ("big/first", 0, 6 * MiB),
                 ("big/second", 17, 100)]
        assert store.compose("big/whole", parts) == 11 * MiB + 100
        expected = hashlib.sha256(second.expected(MiB + 3, 5 * MiB) + first.expected(0, 6 * MiB)
                                  + second.expected(17, 100)).hexdigest()
        digest = hashlib.sha256()
        with store.get("big/whole") as stream:
            while block := stream.read(MiB):
                digest.update(block)
        assert digest.hexdigest() == expected

    def test_compose_refuses_a_part_past_the_end_of_its_source(self, store: ObjectStore) -> None:
        store.put("short", b"12345")
        store.put("kept", b"old")
        with pytest.raises(StorageError, match="has 5 bytes"):
            store.compose("kept", [("short", 0, 5), ("short", 3, 3)])
        with pytest.raises(StorageError, match="has 5 bytes"):
            store.compose("never", [("short", 6, 1)])
        assert read_all(store, "kept") == b"old"
        assert not store.exists("never")

    def test_compose_of_a_missing_source_is_object_not_found(self, store: ObjectStore) -> None:
        store.put("present", b"abc")
        store.put("kept", b"old")
        with pytest.raises(ObjectNotFound):
            store.compose("kept", [("present", 0, 3), ("absent", 0, 1)])
        assert read_all(store, "kept") == b"old"

    @pytest.mark.parametrize(("name", "parts"), [
        ("../escape", [("ok", 0, 1)]),
        ("fine", [("../escape", 0, 1)]),
        ("fine", [("a//b", 0, 1)]),
    ])
    def test_compose_refuses_unsafe_names(self, store: ObjectStore, name: str,
                                          parts: list[tuple[str, int, int]]) -> None:
        store.put("ok", b"x")
        with pytest.raises(InvalidObjectName):
            store.compose(name, parts)
        assert not store.exists("fine")

    def test_compose_refuses_negative_ranges(self, store: ObjectStore) -> None:
        store.put("ok", b"xyz")
        with pytest.raises(ValueError, match=">= 0"):
            store.compose("fine", [("ok", -1, 2)])
        assert not store.exists("fine")


# ---------------------------------------------------------------- the file backend


class TestFileObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FileObjectStore:
        return FileObjectStore(tmp_path / "objects")

    def test_objects_are_files_under_the_root(self, store: FileObjectStore) -> None:
        store.put("a/b.bin", b"payload")
        assert (store.root / "a" / "b.bin").read_bytes() == b"payload"

    def test_url_is_a_file_uri_of_the_object(self, store: FileObjectStore) -> None:
        store.put("a/b.bin", b"payload")
        url = store.url("a/b.bin")
        assert url.startswith("file:///")
        assert Path(unquote(urlparse(url).path)).read_bytes() == b"payload"

    def test_no_temporary_files_remain(self, store: FileObjectStore) -> None:
        store.put("dir/ok", b"fine")
        with pytest.raises(StorageError):
            store.put("dir/short", io.BytesIO(b"x"), length=10)
        with pytest.raises(TypeError):
            store.put("dir/text", io.StringIO("x"))  # type: ignore[arg-type]
        assert sorted(p.name for p in (store.root / "dir").iterdir()) == ["ok"]

    def test_objects_are_private_to_the_owner(self, store: FileObjectStore) -> None:
        store.put("phi", b"secret")
        assert (store.root / "phi").stat().st_mode & 0o077 == 0

    def test_a_symlink_out_of_the_root_is_refused(
        self, store: FileObjectStore, tmp_path: Path
    ) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "target").write_bytes(b"not yours")
        store.root.mkdir(parents=True)
        (store.root / "evil").symlink_to(outside)
        with pytest.raises(StorageError, match="outside"):
            store.put("evil/x", b"payload")
        with pytest.raises(StorageError, match="outside"):
            read_all(store, "evil/target")
        with pytest.raises(StorageError, match="outside"):
            store.delete("evil/target")
        assert sorted(p.name for p in outside.iterdir()) == ["target"]
        assert (outside / "target").read_bytes() == b"not yours"

    def test_a_name_cannot_be_both_object_and_directory(self, store: FileObjectStore) -> None:
        store.put("a", b"object")
        with pytest.raises(StorageError, match="cannot store"):
            store.put("a/b", b"below an object")
        store.put("c/d", b"object")
        with pytest.raises(StorageError, match="cannot store"):
            store.put("c", b"over a directory")
        assert not store.exists("c")
        with pytest.raises(ObjectNotFound):
            read_all(store, "c")
        store.delete("c")  # a directory is not an object: nothing to delete
        assert read_all(store, "c/d") == b"object"

    def test_compose_leaves_no_temporary_file(self, store: FileObjectStore) -> None:
        store.put("dir/a", b"abc")
        with pytest.raises(StorageError):
            store.compose("dir/b", [("dir/a", 0, 10)])
        with pytest.raises(ObjectNotFound):
            store.compose("dir/b", [("dir/a", 0, 1), ("dir/missing", 0, 1)])
        assert sorted(p.name for p in (store.root / "dir").iterdir()) == ["a"]

    def test_compose_copies_without_copy_file_range_too(
        self, store: FileObjectStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def refused(*_args: object) -> int:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refused)
        source = ChunkedStream(3 * MiB + 5)
        store.put("src", source)
        assert store.compose("dst", [("src", 7, 3 * MiB - 2), ("src", 0, 7)]) == 3 * MiB + 5
        assert read_all(store, "dst") == source.expected(7, 3 * MiB - 2) + source.expected(0, 7)

    def test_check_creates_a_missing_root(self, store: FileObjectStore) -> None:
        assert not store.root.exists()
        store.check()
        assert store.root.is_dir()
        assert list(store.root.iterdir()) == []  # the probe file is gone

    def test_check_fails_when_the_root_is_a_file(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_bytes(b"")
        with pytest.raises(StorageError, match="unusable"):
            FileObjectStore(tmp_path / "file").check()


# ---------------------------------------------------------------------- open_store


def test_open_store_file_url(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/my%20objects")
    assert isinstance(store, FileObjectStore)
    assert store.root == (tmp_path / "my objects").resolve()


def test_open_store_s3_url_builds_a_client_without_network() -> None:
    store = open_store(
        "s3://atrium-objects/site/a/",
        s3_endpoint="http://127.0.0.1:1",  # nothing listens: construction does no I/O
        s3_access_key="key",
        s3_secret_key="secret",
    )
    assert isinstance(store, S3ObjectStore)
    assert (store.bucket, store.prefix) == ("atrium-objects", "site/a")
    assert store.url("x/y") == "s3://atrium-objects/site/a/x/y"


@pytest.mark.parametrize(
    ("endpoint", "secure", "expected"),
    [
        ("minio:9000", True, ("minio:9000", True)),
        ("minio:9000", False, ("minio:9000", False)),
        ("http://minio:9000", True, ("minio:9000", False)),  # the scheme decides
        ("https://minio:9000/", False, ("minio:9000", True)),
    ],
)
def test_s3_endpoint_forms(endpoint: str, secure: bool, expected: tuple[str, bool]) -> None:
    assert _parse_endpoint(endpoint, secure) == expected


@pytest.mark.parametrize(
    ("url", "kwargs", "message"),
    [
        ("file://relative/path", {}, "file:///absolute/path"),
        ("file:relative", {}, "file:///absolute/path"),
        ("http://example.org/x", {}, "file:// or s3://"),
        ("/plain/path", {}, "file:// or s3://"),
        ("", {}, "file:// or s3://"),
        ("file:///x?y=1", {}, "query"),
        ("s3://bucket", {}, "ATRIUM_S3_ENDPOINT is required"),
        ("s3://Bad_Bucket", {"s3_endpoint": "h:1"}, "not a valid S3 bucket name"),
        ("s3://", {"s3_endpoint": "h:1"}, "not a valid S3 bucket name"),
        ("s3://bucket/../x", {"s3_endpoint": "h:1"}, "prefix is invalid"),
        ("s3://bucket", {"s3_endpoint": "ftp://h:1"}, "ATRIUM_S3_ENDPOINT must be"),
        ("s3://bucket", {"s3_endpoint": "http://h:1/path"}, "ATRIUM_S3_ENDPOINT must be"),
        ("s3://bucket", {"s3_endpoint": "h:1/path"}, "ATRIUM_S3_ENDPOINT must be"),
        ("s3://bucket", {"s3_endpoint": "h:1", "s3_access_key": "k"}, "secret key"),
    ],
)
def test_open_store_refuses_bad_settings_with_a_clear_sentence(
    url: str, kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises(StorageError, match=message.replace("?", r"\?")):
        open_store(url, **kwargs)  # type: ignore[arg-type]


def test_s3_part_size_must_respect_s3_limits() -> None:
    client = Minio("127.0.0.1:1", secure=False)
    with pytest.raises(ValueError, match="5 MiB"):
        S3ObjectStore(client, "bucket", part_size=MiB)
    assert S3ObjectStore(client, "bucket", part_size=5 * MiB).part_size == 5 * MiB
