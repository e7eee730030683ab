"""How the mirror reads a batch when Orthanc's index is at hand: one file per
series, the rest from the index; and when it completes headers. Fakes stand in for
Orthanc and the database."""

from __future__ import annotations

from typing import Any

from atrium.mirror.extract import orthanc_id
from atrium.mirror.orthanc_index import InstanceFacts
from atrium.mirror.sync import Mirror, MirrorWorker
from atrium.orthanc_api import OrthancError

PATIENT = "P-1"
STUDY = "1.2.3"


def file_tags(series_uid: str, number: int) -> dict[str, Any]:
    return {"PatientID": PATIENT, "PatientName": "Doe^Jane", "PatientIdentityRemoved": "YES",
            "StudyInstanceUID": STUDY, "StudyDescription": "CT chest",
            "SeriesInstanceUID": series_uid, "Modality": "CT",
            "SOPInstanceUID": f"{series_uid}.{number}", "InstanceNumber": str(number),
            "AcquisitionTime": "101600", "SliceThickness": "1.5"}


class FakeOrthanc:
    def __init__(self, instances: dict[str, dict[str, Any]], gone: set[str] = frozenset()
                 ) -> None:
        self.instances = instances
        self.gone = set(gone)
        self.files_read: list[str] = []

    def get_json(self, path: str) -> Any:
        instance_id = path.split("/")[2]
        if instance_id in self.gone:
            raise OrthancError(path, 404)
        assert path.endswith("/tags?simplify"), path
        self.files_read.append(instance_id)
        return dict(self.instances[instance_id])

    def get_bytes(self, path: str) -> bytes:
        raise AssertionError(path)

    def delete(self, path: str) -> None:
        raise AssertionError(path)


class FakeIndex:
    def __init__(self, facts: dict[str, InstanceFacts]) -> None:
        self.facts = facts

    def instance_facts(self, ids: list[str]) -> dict[str, InstanceFacts]:
        return {i: self.facts[i] for i in ids if i in self.facts}


def two_series(count: int) -> tuple[dict[str, dict[str, Any]], dict[str, InstanceFacts]]:
    files, facts = {}, {}
    for series_uid in ("1.2.3.1", "1.2.3.2"):
        series_id = orthanc_id(PATIENT, STUDY, series_uid)
        for number in range(1, count + 1):
            tags = file_tags(series_uid, number)
            instance_id = orthanc_id(PATIENT, STUDY, series_uid, tags["SOPInstanceUID"])
            files[instance_id] = tags
            facts[instance_id] = InstanceFacts(
                1000 + number, {"Origin": "RestApi"}, series_id,
                {"SOPInstanceUID": tags["SOPInstanceUID"], "InstanceNumber": str(number)})
    return files, facts


def mirror(api: FakeOrthanc, facts: dict[str, InstanceFacts]) -> Mirror:
    return Mirror(api, writer=None, organization_for=lambda metadata: "Org",  # type: ignore[arg-type]
                  index=FakeIndex(facts))  # type: ignore[arg-type]


def test_a_batch_reads_one_file_per_series_and_the_rest_from_the_index() -> None:
    files, facts = two_series(5)
    api = FakeOrthanc(files)
    result = mirror(api, facts).fetch(list(files))

    assert len(api.files_read) == 2
    assert len(result.records) == 10 and result.gone == result.rejected == 0
    sources = sorted(r.instance_metadata["tags_source"] for r in result.records)
    assert sources == ["file"] * 2 + ["index"] * 8
    for record in result.records:
        # The series header gives every instance its patient, study and series.
        assert record.is_deidentified and record.study_description == "CT chest"
        assert record.instance_number == int(record.sop_instance_uid.rsplit(".", 1)[1])
        assert record.file_size_bytes == 1000 + record.instance_number
        if record.instance_metadata["tags_source"] == "index":
            # What only the file has waits for the header's completion.
            assert record.acquisition_time is None
            assert "SliceThickness" not in record.instance_metadata["tags"]


def test_the_series_header_is_read_once_across_batches() -> None:
    files, facts = two_series(4)
    api = FakeOrthanc(files)
    reader = mirror(api, facts)
    ids = list(files)
    reader.fetch(ids[::2])
    reader.fetch(ids[1::2])
    assert len(api.files_read) == 2


def test_a_deleted_first_instance_hands_the_header_to_the_next() -> None:
    files, facts = two_series(3)
    first = next(iter(files))
    api = FakeOrthanc(files, gone={first})
    result = mirror(api, facts).fetch(list(files))
    assert result.gone == 1 and len(result.records) == 5
    assert first not in {r.instance_orthanc_id for r in result.records}


def test_instances_missing_from_the_index_are_gone() -> None:
    files, facts = two_series(2)
    absent = list(files)[-1]
    del facts[absent]
    result = mirror(FakeOrthanc(files), facts).fetch(list(files))
    assert result.gone == 1 and len(result.records) == 3


class FakeMirror:
    def __init__(self) -> None:
        self.new_instances = 0
        self.to_complete = 250
        self.completed_calls = 0

    def catch_up(self) -> int:
        applied, self.new_instances = self.new_instances, 0
        return applied

    def complete_tags(self, limit: int = 100) -> int:
        self.completed_calls += 1
        done = min(limit, self.to_complete)
        self.to_complete -= done
        return done


def test_headers_are_completed_only_once_stores_have_paused() -> None:
    fake = FakeMirror()
    worker = MirrorWorker(fake, prepare=lambda: None, idle_seconds=60)  # type: ignore[arg-type]
    fake.new_instances = 10
    assert worker.step() is False
    assert fake.completed_calls == 0  # a burst is on: Orthanc's CPU is left to it

    worker.idle_seconds = 0
    results = [worker.step() for _ in range(4)]
    assert results == [True, True, True, False]
    assert fake.to_complete == 0
