"""The S3 backend against an S3 server on loopback, through the real ``minio`` client.

It runs the whole :class:`ObjectStoreContract` that the file backend runs, plus what
only S3 has: multipart uploads, key prefixes, content types, buckets.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator

import pytest
from minio import Minio

from atrium.storage import ObjectNotFound, S3ObjectStore, StorageError, open_store
from tests.conftest import free_port
from tests.integration.s3server import S3Server
from tests.unit.test_storage_names import ChunkedStream, ObjectStoreContract, read_all

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def open_s3(server: S3Server, url: str) -> S3ObjectStore:
    store = open_store(
        url,
        s3_endpoint=f"http://{server.endpoint}",
        s3_access_key=server.access_key,
        s3_secret_key=server.secret_key,
    )
    assert isinstance(store, S3ObjectStore)
    return store


def empty_bucket(client: Minio, bucket: str) -> None:
    for obj in client.list_objects(bucket, recursive=True):
        client.remove_object(bucket, str(obj.object_name))
    client.remove_bucket(bucket)


@pytest.fixture
def bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh bucket for one test, emptied and removed afterwards."""
    name = f"atrium-test-{uuid.uuid4().hex[:12]}"
    s3_server.client().make_bucket(name)
    yield name
    empty_bucket(s3_server.client(), name)


class TestS3ObjectStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, s3_server: S3Server, bucket: str) -> S3ObjectStore:
        return open_s3(s3_server, f"s3://{bucket}/prefix/dir")

    def test_objects_live_under_the_prefix(self, store: S3ObjectStore) -> None:
        store.put("a/b.bin", b"payload")
        raw = store.client.get_object(store.bucket, "prefix/dir/a/b.bin")
        try:
            assert raw.read() == b"payload"
        finally:
            raw.close()
            raw.release_conn()
        assert store.url("a/b.bin") == f"s3://{store.bucket}/prefix/dir/a/b.bin"

    def test_stores_on_different_prefixes_do_not_see_each_other(
        self,
        store: S3ObjectStore,
        s3_server: S3Server,
    ) -> None:
        other = open_s3(s3_server, f"s3://{store.bucket}/elsewhere")
        store.put("same-name", b"mine")
        assert not other.exists("same-name")
        other.put("same-name", b"theirs")
        assert read_all(store, "same-name") == b"mine"

    def test_unknown_length_stream_goes_up_in_parts(self, store: S3ObjectStore) -> None:
        source = ChunkedStream(12 * MiB, seed=b"multipart")
        assert store.put("large.bin", source) == 12 * MiB
        stat = store.client.stat_object(store.bucket, "prefix/dir/large.bin")
        assert str(stat.etag).endswith("-2")  # two 8 MiB-or-less parts: a multipart upload
        assert stat.size == 12 * MiB
        assert store.get_range("large.bin", 8 * MiB - 3, 6) == source.expected(8 * MiB - 3, 6)

    def test_small_unknown_length_stream_is_a_single_put(self, store: S3ObjectStore) -> None:
        store.put("small.bin", io.BytesIO(b"x" * 1000))
        stat = store.client.stat_object(store.bucket, "prefix/dir/small.bin")
        assert "-" not in str(stat.etag)

    def test_content_type_is_kept(self, store: S3ObjectStore) -> None:
        store.put("tile.jpg", b"\xff\xd8\xff", content_type="image/jpeg")
        stat = store.client.stat_object(store.bucket, "prefix/dir/tile.jpg")
        assert stat.content_type == "image/jpeg"

    def test_a_failed_multipart_upload_leaves_nothing(self, store: S3ObjectStore) -> None:
        class Broken(ChunkedStream):
            def read(self, size: int = -1, /) -> bytes:
                if self._sent >= 9 * MiB:  # after the first part went up
                    raise OSError("disk went away")
                return super().read(size)

        with pytest.raises(StorageError, match="disk went away"):
            store.put("broken.bin", Broken(12 * MiB))
        assert not store.exists("broken.bin")


    def test_compose_of_parts_of_5_mib_and_more_is_a_server_side_copy(
        self, store: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        copies = CallCounter(store.client.compose_object)
        monkeypatch.setattr(store.client, "compose_object", copies)
        source = ChunkedStream(11 * MiB, seed=b"copy")
        store.put("chunks/all", source)
        parts = [("chunks/all", 5 * MiB, 6 * MiB), ("chunks/all", 0, 5 * MiB),
                 ("chunks/all", 3, 4)]
        assert store.compose("assembled", parts, content_type="image/tiff") == 11 * MiB + 4
        assert copies.calls == 1
        stat = store.client.stat_object(store.bucket, "prefix/dir/assembled")
        assert str(stat.etag).endswith("-3") and stat.content_type == "image/tiff"
        assert store.get_range("assembled", 6 * MiB - 2, 4) == source.expected(11 * MiB - 2, 2) \
            + source.expected(0, 2)
        assert store.get_range("assembled", 11 * MiB, 10) == source.expected(3, 4)

    def test_compose_of_small_parts_streams_through_a_bounded_upload(
        self, store: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        copies = CallCounter(store.client.compose_object)
        monkeypatch.setattr(store.client, "compose_object", copies)
        source = ChunkedStream(12 * MiB, seed=b"stream")
        store.put("chunks/all", source)
        # A 1 MiB part before the last: S3 cannot copy it server-side.
        parts = [("chunks/all", 0, MiB), ("chunks/all", 4 * MiB, 8 * MiB),
                 ("chunks/all", MiB, 3 * MiB)]
        assert store.compose("assembled", parts) == 12 * MiB
        assert copies.calls == 0
        assert store.size("assembled") == 12 * MiB
        assert store.get_range("assembled", MiB - 2, 4) == source.expected(MiB - 2, 2) \
            + source.expected(4 * MiB, 2)
        assert store.get_range("assembled", 9 * MiB - 1, 4) == source.expected(12 * MiB - 1, 1) \
            + source.expected(MiB, 3)


class CallCounter:
    def __init__(self, function: Callable[..., object]) -> None:
        self.function, self.calls = function, 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return self.function(*args, **kwargs)


def test_ensure_bucket_creates_it_once(s3_server: S3Server) -> None:
    name = f"atrium-new-{uuid.uuid4().hex[:12]}"
    store = open_s3(s3_server, f"s3://{name}/p")
    with pytest.raises(StorageError, match="does not exist"):
        store.check()
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    store.check()
    assert s3_server.client().bucket_exists(name)
    store.put("x", b"1")
    assert store.size("x") == 1
    empty_bucket(s3_server.client(), name)


def test_a_missing_bucket_is_a_storage_error_not_a_missing_object(
    s3_server: S3Server,
) -> None:
    store = open_s3(s3_server, f"s3://atrium-absent-{uuid.uuid4().hex[:12]}")
    with pytest.raises(StorageError, match="does not exist") as caught:
        read_all(store, "x")
    assert not isinstance(caught.value, ObjectNotFound)
    with pytest.raises(StorageError, match="does not exist"):
        store.put("x", b"1")


@pytest.mark.timeout(60)
def test_an_unreachable_endpoint_fails_the_health_check_promptly() -> None:
    store = open_store("s3://bucket", s3_endpoint=f"127.0.0.1:{free_port()}", s3_secure=False)
    with pytest.raises(StorageError, match="unreachable"):
        store.check()
    with pytest.raises(StorageError, match="S3 upload"):
        store.put("x", b"1")
