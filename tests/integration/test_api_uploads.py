"""``/api/uploads`` against a real Orthanc: a file sent in chunks — out of order,
overlapping, one sent twice — is complete once every byte has come, and a claim
assembles exactly the file; bad chunks are 400 problems that store nothing; uploads
are their owner's; expired ones leave nothing behind; S3 holds chunks and the
assembled file alike; and a gigabyte passes through Orthanc in bounded memory.

Claims are made from Python against the same database and object storage, as a
consumer inside Atrium makes them (POST /api/slides).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from atrium.errors import Conflict
from atrium.storage import FileObjectStore, ObjectStore, S3ObjectStore, open_store
from atrium.uploads.ranges import ContentRange
from atrium.uploads.store import UploadLimits, UploadStore
from tests.integration.conftest import AtriumUnderTest
from tests.integration.s3server import S3Server
from tests.integration.test_storage_s3 import empty_bucket

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
ORG = "Upload Lab"
PROBLEM = "application/problem+json"


def content(size: int, seed: bytes = b"upload") -> bytes:
    block = hashlib.sha256(seed).digest() * 2053  # 65,696 bytes, not a power of two
    return (block * (size // len(block) + 1))[:size]


class Uploader:
    """One user's calls to the upload routes."""

    def __init__(self, atrium: AtriumUnderTest, role: str = "clinician", org: str = ORG,
                 user: str | None = None) -> None:
        self.atrium = atrium
        self.headers = atrium.auth(role, org, user or f"uploader-{uuid.uuid4().hex[:8]}")
        self.session = requests.Session()

    @property
    def user_id(self) -> uuid.UUID:
        me = self.session.get(f"{self.atrium.url}/api/me", headers=self.headers, timeout=30)
        return uuid.UUID(me.json()["id"])

    def create(self, size: int, filename: str = "slide.svs", **fields: Any) -> requests.Response:
        return self.session.post(f"{self.atrium.url}/api/uploads", headers=self.headers,
                                 json={"filename": filename, "size": size, **fields}, timeout=30)

    def put(self, upload_id: str, body: bytes, content_range: str | None,
            content_type: str = "application/octet-stream") -> requests.Response:
        headers = {**self.headers, "Content-Type": content_type}
        if content_range is not None:
            headers["Content-Range"] = content_range
        return self.session.put(f"{self.atrium.url}/api/uploads/{upload_id}", data=body,
                                headers=headers, timeout=120)

    def send(self, upload_id: str, data: bytes, start: int, end: int) -> requests.Response:
        """Bytes ``start`` to ``end - 1`` of ``data``."""
        return self.put(upload_id, data[start:end], f"bytes {start}-{end - 1}/{len(data)}")

    def get(self, upload_id: str) -> requests.Response:
        return self.session.get(f"{self.atrium.url}/api/uploads/{upload_id}",
                                headers=self.headers, timeout=30)


def upload_store(atrium: AtriumUnderTest, objects: ObjectStore | None = None) -> UploadStore:
    """The store Atrium's consumers use, on the same database and objects."""
    return UploadStore(lambda: psycopg.connect(atrium.database_url),
                       objects or FileObjectStore(atrium.workdir / "objects"))


def chunk_objects(atrium: AtriumUnderTest, upload_id: str) -> list[str]:
    directory = atrium.workdir / "objects" / "uploads" / upload_id
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def chunk_rows(atrium: AtriumUnderTest, upload_id: str) -> int:
    return int(atrium.scalar("SELECT count(*) FROM upload_chunks WHERE upload_id = %s",
                             (upload_id,)))


# ------------------------------------------------------------------- the protocol


def test_chunks_in_any_order_make_a_complete_upload_that_a_claim_assembles(
        atrium: AtriumUnderTest) -> None:
    data = content(300_000)
    user = Uploader(atrium)
    created = user.create(len(data), "case 12.svs", media_type="Image/TIFF")
    assert created.status_code == 201, created.text
    upload = created.json()
    upload_id = upload["id"]
    assert created.headers["Location"] == f"/api/uploads/{upload_id}"
    assert (upload["size"], upload["received"], upload["missing"], upload["complete"],
            upload["status"], upload["filename"], upload["media_type"]) == \
        (300_000, 0, [[0, 299_999]], False, "receiving", "case 12.svs", "image/tiff")

    last = user.send(upload_id, data, 200_000, 300_000)
    assert last.status_code == 200, last.text
    assert last.json()["missing"] == [[0, 199_999]] and last.json()["received"] == 100_000
    assert user.send(upload_id, data, 0, 100_000).json()["missing"] == [[100_000, 199_999]]
    resent = user.send(upload_id, data, 0, 100_000)  # sent again: replaces the first
    assert resent.status_code == 200 and resent.json()["received"] == 200_000
    overlapping = user.send(upload_id, data, 50_000, 150_000)
    assert overlapping.json()["missing"] == [[150_000, 199_999]]
    read = user.get(upload_id)
    assert read.status_code == 200
    assert read.json()["missing"] == [[150_000, 199_999]] and not read.json()["complete"]
    done = user.send(upload_id, data, 150_000, 200_000).json()
    assert (done["received"], done["missing"], done["complete"], done["status"]) == \
        (300_000, [], True, "complete")
    assert chunk_rows(atrium, upload_id) == 4
    assert len(chunk_objects(atrium, upload_id)) == 4  # the re-sent chunk's old object went

    destination = f"tests/{upload_id}/original.svs"
    with upload_store(atrium).claim(uuid.UUID(upload_id), user.user_id, destination) as claimed:
        assert (claimed.name, claimed.size, claimed.filename, claimed.media_type) == \
            (destination, 300_000, "case 12.svs", "image/tiff")
    assert (atrium.workdir / "objects" / destination).read_bytes() == data
    assert chunk_objects(atrium, upload_id) == [] and chunk_rows(atrium, upload_id) == 0
    assert user.get(upload_id).json()["status"] == "consumed"
    late = user.send(upload_id, data, 0, 100_000)
    assert late.status_code == 409 and "consumed" in late.json()["detail"]
    assert atrium.scalar("SELECT count(*) FROM audit_log WHERE resource_type = 'upload' "
                         "AND resource_id = %s", (upload_id,)) >= 8


def test_an_upload_is_its_owners_and_needs_the_upload_permission(
        atrium: AtriumUnderTest) -> None:
    owner, colleague = Uploader(atrium), Uploader(atrium)
    upload_id = owner.create(100).json()["id"]
    data = content(100)
    for other in (colleague, Uploader(atrium, "admin", "Elsewhere")):
        assert other.get(upload_id).status_code == 404
        refused = other.send(upload_id, data, 0, 100)
        assert refused.status_code == 404, refused.text
        assert refused.headers["Content-Type"].startswith(PROBLEM)
    assert chunk_rows(atrium, upload_id) == 0 and chunk_objects(atrium, upload_id) == []
    assert owner.get(upload_id).json()["received"] == 0
    assert colleague.get(str(uuid.uuid4())).status_code == 404

    researcher = Uploader(atrium, "researcher")
    assert researcher.create(100).status_code == 403
    assert researcher.get(upload_id).status_code == 403
    assert researcher.send(upload_id, data, 0, 100).status_code == 403


BAD_CHUNKS = [
    ("no Content-Range", None, 10, "content-range", "is required"),
    ("garbled", "bytes zero-9/100", 10, "content-range", "START must be a whole number"),
    ("another unit", "items 0-9/100", 10, "content-range", "must count bytes"),
    ("no chunk named", "bytes */100", 10, "content-range", "names no chunk"),
    ("unknown size", "bytes 0-9/*", 10, "content-range", "whole file's size"),
    ("end before start", "bytes 9-0/100", 10, "content-range", "END (0) is before START (9)"),
    ("another size", "bytes 0-9/101", 10, "content-range", "SIZE is 101"),
    ("past the end", "bytes 95-104/100", 10, "content-range", "END (104) is not below SIZE"),
    ("empty body", "bytes 0-9/100", 0, "", "the chunk is empty"),
    ("short body", "bytes 0-9/100", 5, "", "the body has 5 bytes"),
    ("long body", "bytes 0-9/100", 11, "", "the body has 11 bytes"),
]


def test_bad_chunks_are_400_problems_that_store_nothing(atrium: AtriumUnderTest) -> None:
    user = Uploader(atrium)
    upload_id = user.create(100).json()["id"]
    for name, content_range, length, field, says in BAD_CHUNKS:
        answer = user.put(upload_id, content(length), content_range)
        assert answer.status_code == 400, (name, answer.status_code, answer.text)
        assert answer.headers["Content-Type"].startswith(PROBLEM), name
        problem = answer.json()
        assert says in problem["detail"], (name, problem["detail"])
        assert problem["errors"][0]["field"] == field, name
    json_chunk = user.put(upload_id, b"{}", "bytes 0-1/100", content_type="application/json")
    assert json_chunk.status_code == 415
    assert chunk_rows(atrium, upload_id) == 0 and chunk_objects(atrium, upload_id) == []
    assert user.get(upload_id).json()["received"] == 0
    assert atrium.scalar("SELECT received_bytes FROM uploads WHERE id = %s", (upload_id,)) == 0


@pytest.mark.parametrize(("body", "field"), [
    ({"filename": "a.svs", "size": 0}, "size"),
    ({"filename": "a.svs", "size": 64 * 1024 ** 3 + 1}, "size"),
    ({"filename": "a.svs", "size": -5}, "size"),
    ({"filename": "a.svs"}, "size"),
    ({"size": 10}, "filename"),
    ({"filename": "", "size": 10}, "filename"),
    ({"filename": "dir/a.svs", "size": 10}, "filename"),
    ({"filename": "C:\\a.svs", "size": 10}, "filename"),
    ({"filename": "a.svs", "size": 10, "media_type": "tiff"}, "media_type"),
    ({"filename": "a.svs", "size": 10, "unknown": 1}, "unknown"),
])
def test_a_bad_upload_declaration_is_a_400_naming_the_field(
        atrium: AtriumUnderTest, body: dict[str, Any], field: str) -> None:
    user = Uploader(atrium, user="declarer")
    answer = user.session.post(f"{atrium.url}/api/uploads", json=body, headers=user.headers,
                               timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.json()["errors"][0]["field"] == field


# ------------------------------------------------------------------------ claims


def test_a_claim_needs_a_complete_upload_and_one_claim_at_a_time(
        atrium: AtriumUnderTest) -> None:
    data = content(50_000)
    user = Uploader(atrium)
    upload_id = user.create(len(data)).json()["id"]
    key, owner = uuid.UUID(upload_id), user.user_id
    store = upload_store(atrium)
    destination = f"tests/{upload_id}/assembled"
    user.send(upload_id, data, 10_000, 20_000)
    user.send(upload_id, data, 30_000, 40_000)
    with pytest.raises(Conflict) as incomplete, store.claim(key, owner, destination):
        pytest.fail("an incomplete upload was claimed")
    assert incomplete.value.extra["missing"] == [[0, 9_999], [20_000, 29_999],
                                                 [40_000, 49_999]]
    assert "bytes 0-9999, 20000-29999, 40000-49999" in incomplete.value.detail
    for start, end in ((0, 10_000), (20_000, 30_000), (40_000, 50_000)):
        assert user.send(upload_id, data, start, end).status_code == 200

    # A consumer that fails: no destination object, the upload still complete.
    with pytest.raises(RuntimeError, match="reader refused"), \
            store.claim(key, owner, destination) as claimed:
        assert (atrium.workdir / "objects" / claimed.name).read_bytes() == data
        raise RuntimeError("reader refused the file")
    assert not (atrium.workdir / "objects" / destination).exists()
    assert user.get(upload_id).json()["status"] == "complete"
    assert len(chunk_objects(atrium, upload_id)) == 5

    # Two claims at once: the second is refused while the first holds the upload, and
    # so is a chunk (after the row lock's timeout).
    entered, release = threading.Event(), threading.Event()
    outcome: list[object] = []

    def first_claim() -> None:
        with store.claim(key, owner, destination) as claimed:
            entered.set()
            release.wait(60)
            outcome.append(claimed.size)

    worker = threading.Thread(target=first_claim)
    worker.start()
    try:
        assert entered.wait(30)
        with pytest.raises(Conflict, match="another request"), \
                store.claim(key, owner, f"tests/{upload_id}/second"):
            pass
        busy = user.send(upload_id, data, 0, 10_000)
        assert busy.status_code == 409 and "retry" in busy.json()["detail"]
    finally:
        release.set()
        worker.join(60)
    assert outcome == [50_000]
    assert (atrium.workdir / "objects" / destination).read_bytes() == data
    assert not (atrium.workdir / "objects" / "tests" / upload_id / "second").exists()
    with pytest.raises(Conflict, match="consumed"), store.claim(key, owner, destination):
        pass
    with pytest.raises(Exception, match="No upload"), \
            store.claim(key, Uploader(atrium).user_id, destination):
        pass


def test_an_upload_holds_a_bounded_number_of_distinct_ranges(atrium: AtriumUnderTest) -> None:
    user = Uploader(atrium)
    me = user.session.get(f"{atrium.url}/api/me", headers=user.headers, timeout=30).json()
    store = UploadStore(lambda: psycopg.connect(atrium.database_url),
                        FileObjectStore(atrium.workdir / "objects"), UploadLimits(max_chunks=2))
    data = content(30)
    upload = store.create(user_id=uuid.UUID(me["id"]),
                          organization_id=uuid.UUID(me["organization_id"]),
                          filename="small.bin", size=len(data))
    owner = uuid.UUID(me["id"])
    for start, end in ((0, 10), (10, 20), (0, 10)):  # the last one is sent again: allowed
        store.put_chunk(upload.id, owner, ContentRange(start, end, 30), data[start:end])
    with pytest.raises(Conflict, match="has 2 chunks") as refused:
        store.put_chunk(upload.id, owner, ContentRange(20, 30, 30), data[20:])
    assert "bytes 20-29" in refused.value.detail
    assert len(chunk_objects(atrium, str(upload.id))) == 2
    assert user.get(str(upload.id)).json()["missing"] == [[20, 29]]


# ------------------------------------------------------------------------ expiry


def test_expired_uploads_leave_no_row_and_no_chunk_object(atrium: AtriumUnderTest) -> None:
    data = content(2_000)
    user = Uploader(atrium)
    expiring, kept = (user.create(len(data)).json()["id"] for _ in range(2))
    for upload_id in (expiring, kept):
        user.send(upload_id, data, 0, 1_000)
    user.send(expiring, data, 500, 2_000)
    assert len(chunk_objects(atrium, expiring)) == 2
    atrium.sql("UPDATE uploads SET expires_at = now() - interval '1 second' WHERE id = %s "
               "RETURNING id",
               (expiring,))
    assert user.get(expiring).status_code == 404  # expired is gone, even before the sweep

    assert upload_store(atrium).expire() >= 1
    assert atrium.scalar("SELECT count(*) FROM uploads WHERE id = %s", (expiring,)) == 0
    assert chunk_rows(atrium, expiring) == 0 and chunk_objects(atrium, expiring) == []
    assert user.get(kept).json()["received"] == 1_000
    assert len(chunk_objects(atrium, kept)) == 1


# ---------------------------------------------------------------------------- S3


@pytest.fixture
def bucket(s3_server: S3Server) -> Iterator[str]:
    name = f"atrium-uploads-{uuid.uuid4().hex[:12]}"
    yield name
    if s3_server.client().bucket_exists(name):
        empty_bucket(s3_server.client(), name)


def test_on_s3_chunks_and_the_assembled_file_are_objects_of_the_bucket(
        atrium_factory: Callable[..., AtriumUnderTest], s3_server: S3Server,
        bucket: str) -> None:
    under_test = atrium_factory(
        StorageUrl=f"s3://{bucket}/site", S3Endpoint=f"http://{s3_server.endpoint}",
        S3AccessKey=s3_server.access_key, S3SecretKey=s3_server.secret_key, S3Secure=False)
    data = content(11 * MiB + 5, b"s3")
    user = Uploader(under_test)
    upload_id = user.create(len(data), "big.tiff").json()["id"]
    for start, end in ((6 * MiB, len(data)), (0, 6 * MiB)):
        answer = user.send(upload_id, data, start, end)
        assert answer.status_code == 200, answer.text
    assert answer.json()["complete"]
    client = s3_server.client()

    def keys(prefix: str) -> list[str]:
        return sorted(str(o.object_name) for o in client.list_objects(bucket, prefix,
                                                                      recursive=True))

    chunks = keys(f"site/uploads/{upload_id}/")
    assert [k.rsplit("/", 1)[1].rsplit("-", 1)[0] for k in chunks] == \
        [f"0-{6 * MiB - 1}", f"{6 * MiB}-{len(data) - 1}"]
    objects = open_store(f"s3://{bucket}/site", s3_endpoint=f"http://{s3_server.endpoint}",
                         s3_access_key=s3_server.access_key,
                         s3_secret_key=s3_server.secret_key)
    assert isinstance(objects, S3ObjectStore)
    destination = f"slides/{upload_id}/big.tiff"
    with upload_store(under_test, objects).claim(uuid.UUID(upload_id), user.user_id,
                                                 destination) as claimed:
        assert claimed.size == len(data)
    assert keys(f"site/uploads/{upload_id}/") == []
    assert keys("site/slides/") == [f"site/{destination}"]
    stat = client.stat_object(bucket, f"site/{destination}")
    assert stat.size == len(data)
    for offset in (0, 6 * MiB - 3, len(data) - 7):
        assert objects.get_range(destination, offset, 7) == data[offset:offset + 7]


# ------------------------------------------------------------------------ memory


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@contextmanager
def peak_resident(pid: int, interval: float = 0.02) -> Iterator[list[int]]:
    """Samples the process's resident memory until the block ends; yields
    [baseline, peak] (the peak filled in at the end)."""
    samples = [resident_bytes(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            samples.append(resident_bytes(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    result = [samples[0], samples[0]]
    try:
        yield result
    finally:
        stop.set()
        thread.join(5)
        result[1] = max(samples)


@pytest.mark.timeout(180)
def test_a_gigabyte_in_chunks_keeps_orthancs_memory_bounded(
        atrium_factory: Callable[..., AtriumUnderTest]) -> None:
    chunk, count = 32 * MiB, 32  # 1 GiB
    under_test = atrium_factory(UploadMaxRequestBytes=48 * MiB)
    assert under_test.orthanc.proc is not None
    pid = under_test.orthanc.proc.pid
    user = Uploader(under_test)
    size = chunk * count

    def chunk_bytes(index: int) -> bytes:
        return hashlib.sha256(index.to_bytes(4, "big")).digest() * (chunk // 32)

    # Warm up every code path once (and Orthanc's allocator with one chunk-sized body).
    warm = user.create(chunk).json()["id"]
    assert user.put(warm, chunk_bytes(0), f"bytes 0-{chunk - 1}/{chunk}").status_code == 200
    too_large = user.put(warm, b"\0" * (48 * MiB + 1), f"bytes 0-{48 * MiB}/{chunk}")
    assert too_large.status_code == 413
    assert f"Send chunks of at most {48 * MiB} bytes" in too_large.json()["detail"]
    # A slide sent whole past the limit: 413, naming the resumable route.
    whole = requests.post(f"{under_test.url}/api/slides", timeout=60,
                          headers={**under_test.auth("clinician"),
                                   "X-HTTP-Method-Override": "PUT"},
                          files={"file": ("big.svs", b"\0" * (48 * MiB + 1))},
                          data={"slide_id": "TOO-BIG"})
    assert whole.status_code == 413, whole.text
    assert "POST /api/uploads" in whole.json()["detail"]

    upload_id = user.create(size, "whole-slide.svs").json()["id"]
    digest = hashlib.sha256()
    with peak_resident(pid) as memory:
        for index in range(count):
            data = chunk_bytes(index)
            digest.update(data)
            start = index * chunk
            answer = user.put(upload_id, data, f"bytes {start}-{start + chunk - 1}/{size}")
            assert answer.status_code == 200, answer.text
    baseline, peak = memory
    assert answer.json()["complete"]
    assert peak - baseline < 200 * 10 ** 6, (
        f"Orthanc grew by {(peak - baseline) / MiB:.0f} MiB for a 1 GiB upload")

    objects = FileObjectStore(under_test.workdir / "objects")
    destination = f"tests/{upload_id}/assembled.svs"
    with upload_store(under_test, objects).claim(uuid.UUID(upload_id), user.user_id,
                                                 destination) as claimed:
        assert claimed.size == size == objects.size(destination)
        check = hashlib.sha256()
        with objects.get(destination) as stream:
            while block := stream.read(8 * MiB):
                check.update(block)
        assert check.hexdigest() == digest.hexdigest()
    objects.delete(destination)
    assert chunk_objects(under_test, upload_id) == []
