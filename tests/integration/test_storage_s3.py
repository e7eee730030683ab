"""The S3 backend against an S3 server on loopback, through the real ``minio`` client.

It runs the whole :class:`ObjectStoreContract` that the file backend runs, plus what
only S3 has: multipart uploads, key prefixes, content types, buckets.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

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
