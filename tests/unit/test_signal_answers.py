"""The answers of ``/signal`` (``atrium.signals.answers``): JSON, binary and Arrow
carry the same numbers; Arrow's columns, names, padding and metadata; the caps.

``decode_binary`` and ``decode_arrow`` are the decoders of ``docs/SIGNALS.md``;
the integration tests use them on real answers."""

from __future__ import annotations

import struct
import subprocess
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from atrium.errors import BadRequest
from atrium.signals import answers
from atrium.signals.answers import (
    MAX_ANSWER_SAMPLES,
    MAX_EXPORT_SAMPLES,
    MAX_JSON_ANSWER_SAMPLES,
    MAX_WINDOW_SAMPLES,
    ChannelAnswer,
    SignalAnswer,
    arrow_column_names,
    channel_answer,
    check_export_size,
    check_window_size,
    encode_arrow,
    encode_binary,
    window_samples,
)
from atrium.signals.store import first_sample_at


def decode_binary(blob: bytes) -> dict[str, Any]:
    """The layout of docs/SIGNALS.md, "Binary answers", as the JSON answer's shape
    (without names and units, which the layout does not repeat)."""
    assert blob[:4] == b"ATRS"
    version, kind, count, rate, start, end = struct.unpack_from("<BBHddd", blob, 4)
    assert version == 1
    offset = 4 + struct.calcsize("<BBHddd")
    channels = []
    for _ in range(count):
        index, channel_rate, first, n, has_positions = struct.unpack_from("<HdqIB", blob, offset)
        offset += struct.calcsize("<HdqIB")
        entry: dict[str, Any] = {"index": index, "sampling_rate": channel_rate,
                                 "first_sample": first}
        if has_positions:
            entry["positions"] = np.frombuffer(blob, "<i8", n, offset).tolist()
            offset += 8 * n
        dtype = "<i4" if kind == 0 else "<f8"
        entry["samples"] = np.frombuffer(blob, dtype, n, offset).tolist()
        offset += np.dtype(dtype).itemsize * n
        channels.append(entry)
    assert offset == len(blob)
    return {"sampling_rate": rate, "start": start, "end": end, "channels": channels}


def decode_arrow(blob: bytes) -> dict[str, Any]:
    """An Arrow answer (docs/SIGNALS.md, "Arrow answers") as the JSON answer's shape."""
    table = pa.ipc.open_stream(blob).read_all()
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    by_name = {}
    channels = []
    for field, column in zip(table.schema, table.columns, strict=True):
        info = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
        values = column.to_pylist()[:int(info["length"])]
        assert None not in values
        if "positions_of" in info:
            by_name[info["positions_of"]]["positions"] = values
            continue
        entry = {"index": int(info["index"]), "name": field.name, "units": info["units"],
                 "sampling_rate": float(info["sampling_rate"]),
                 "first_sample": int(info["first_sample"]), "samples": values,
                 "type": str(field.type)}
        by_name[field.name] = entry
        channels.append(entry)
    return {"sampling_rate": float(meta["sampling_rate"]), "start": float(meta["start"]),
            "end": float(meta["end"]), "units": meta["units"], "channels": channels}


def channel(name: str = "I", rate: float = 100.0, gain: float = 200.0, baseline: float = 5.0,
            spf: int = 1) -> dict[str, Any]:
    return {"name": name, "units": "mV", "gain": gain, "baseline": baseline,
            "sampling_rate": rate, "samples_per_frame": spf}


def answer_of(windows: list[np.ndarray], metas: list[dict[str, Any]], *, digital: bool,
              max_points: int | None = None, start: float = 0.0, frames: int = 1000
              ) -> SignalAnswer:
    return SignalAnswer(sampling_rate=100.0, start=start, end=start + 2.5, digital=digital,
                        channels=tuple(channel_answer(i, m, w, start=start, frames=frames,
                                                      digital=digital, max_points=max_points)
                                       for i, (w, m) in enumerate(zip(windows, metas,
                                                                      strict=True))))


RNG = np.random.default_rng(11)
WINDOWS = [RNG.integers(-2**31, 2**31 - 1, 250, dtype=np.int64).astype(np.int32),
           RNG.integers(-2000, 2000, 500, dtype=np.int32)]
METAS = [channel("I"), channel("fast", rate=200.0, gain=3.7, baseline=-11, spf=2)]


@pytest.mark.parametrize("digital", [True, False], ids=["digital", "physical"])
@pytest.mark.parametrize("max_points", [None, 40], ids=["all", "max_points"])
def test_binary_and_arrow_decode_to_the_json_numbers(digital: bool, max_points: int | None
                                                     ) -> None:
    answer = answer_of(WINDOWS, METAS, digital=digital, max_points=max_points, start=1.25)
    as_json = answer.to_json()
    binary, arrow = decode_binary(encode_binary(answer)), decode_arrow(encode_arrow(answer))
    for decoded in (binary, arrow):
        assert [decoded[k] for k in ("sampling_rate", "start", "end")] == \
            [as_json[k] for k in ("sampling_rate", "start", "end")]
        assert len(decoded["channels"]) == len(as_json["channels"])
        for mine, theirs in zip(decoded["channels"], as_json["channels"], strict=True):
            for key in ("index", "sampling_rate", "first_sample", "samples"):
                assert mine[key] == theirs[key], key
            assert mine.get("positions") == theirs.get("positions")
    assert [c["type"] for c in arrow["channels"]] == ["int32" if digital else "double"] * 2
    assert arrow["units"] == ("digital" if digital else "physical")
    assert [c["units"] for c in arrow["channels"]] == ["" if digital else "mV"] * 2


def test_physical_samples_are_digital_less_baseline_over_gain() -> None:
    answer = answer_of([np.array([5, 205, -195], dtype=np.int32)], [channel()], digital=False)
    assert answer.channels[0].samples.tolist() == [0.0, 1.0, -1.0]


def test_first_sample_is_the_first_index_at_or_after_start() -> None:
    answer = answer_of(WINDOWS, METAS, digital=True, start=1.25)
    assert [c.first_sample for c in answer.channels] == [125, 250]


def test_a_shorter_arrow_column_is_padded_with_nulls_and_says_its_length() -> None:
    table = pa.ipc.open_stream(encode_arrow(answer_of(WINDOWS, METAS, digital=True))).read_all()
    assert table.num_rows == 500
    short = table.column("I")
    assert short.null_count == 250 and short.to_pylist()[:250] == WINDOWS[0].tolist()
    assert table.schema.field("I").metadata[b"length"] == b"250"
    assert table.column("fast").null_count == 0


def test_arrow_names_are_unique_and_deterministic() -> None:
    metas = [channel("V1"), channel(""), channel("V1"), channel("V1#2")]
    answer = answer_of([np.arange(3, dtype=np.int32)] * 4, metas, digital=True,
                       max_points=2)
    assert arrow_column_names(answer) == [
        "V1", "#1", "V1#2", "V1#2#3",
        "V1#positions", "#1#positions", "V1#2#positions", "V1#2#3#positions"]
    table = pa.ipc.open_stream(encode_arrow(answer)).read_all()
    assert table.column_names == arrow_column_names(answer)


def test_arrow_metadata_numbers_parse_back_exactly() -> None:
    answer = SignalAnswer(sampling_rate=1 / 3, start=0.1, end=0.30000000000000004,
                          digital=False, channels=(ChannelAnswer(
                              index=7, name="x", units="uV", sampling_rate=2 / 3,
                              first_sample=1, samples=np.array([0.1, 1e-300])),))
    decoded = decode_arrow(encode_arrow(answer))
    assert (decoded["sampling_rate"], decoded["start"], decoded["end"]) == (1 / 3, 0.1,
                                                                          0.30000000000000004)
    assert decoded["channels"][0]["sampling_rate"] == 2 / 3
    assert decoded["channels"][0]["samples"] == [0.1, 1e-300]


def test_an_empty_window_makes_an_arrow_stream_without_rows() -> None:
    answer = answer_of([np.array([], dtype=np.int32)], [channel()], digital=True)
    table = pa.ipc.open_stream(encode_arrow(answer)).read_all()
    assert table.num_rows == 0 and table.column_names == ["I"]


def test_importing_the_answers_does_not_import_pyarrow() -> None:
    code = "import sys, atrium.signals.answers; print('pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("rate", [1.0, 3.0, 360.0, 1000.0, 1 / 0.0028])
def test_window_samples_counts_i_with_start_le_i_over_rate_lt_end(rate: float) -> None:
    count = 5000
    for start, end in [(0.0, None), (0.1, 0.3), (1.0, 1.0), (2.5, 7.0), (9.99, 1e9)]:
        expected = sum(1 for i in range(count) if start <= i / rate
                       and (end is None or i / rate < end))
        assert window_samples(start, end, rate, count) == expected
        assert first_sample_at(start, rate, count) == next(
            (i for i in range(count) if start <= i / rate), count)


@pytest.mark.parametrize(("wanted_format", "cap"), [
    ("json", MAX_JSON_ANSWER_SAMPLES), ("binary", MAX_ANSWER_SAMPLES),
    ("arrow", MAX_ANSWER_SAMPLES)])
def test_an_answer_over_its_formats_cap_is_refused_naming_max_points(
        wanted_format: str, cap: int) -> None:
    check_window_size(cap, cap, wanted_format)
    with pytest.raises(BadRequest) as refused:
        check_window_size(cap + 1, cap + 1, wanted_format)
    problem = refused.value.problem()
    assert "max_points" in problem["detail"]
    assert problem["errors"][0]["field"] == "max_points"


def test_a_window_over_the_read_cap_is_refused_even_with_max_points() -> None:
    check_window_size(MAX_WINDOW_SAMPLES, 1000, "json")
    with pytest.raises(BadRequest) as refused:
        check_window_size(MAX_WINDOW_SAMPLES + 1, 1000, "json")
    assert "shorter window" in refused.value.problem()["detail"]


def test_caps_fit_a_day_of_one_lead_and_a_quarter_hour_of_twelve() -> None:
    day_one_lead, quarter_hour_twelve_leads = 24 * 3600 * 500, 900 * 500 * 12
    assert day_one_lead <= MAX_WINDOW_SAMPLES
    assert quarter_hour_twelve_leads <= MAX_ANSWER_SAMPLES
    assert MAX_JSON_ANSWER_SAMPLES < MAX_ANSWER_SAMPLES < MAX_WINDOW_SAMPLES
    assert answers.MAX_EXPORT_SAMPLES >= 24 * 3600 * 250 * 3  # a 3-lead Holter day


def test_an_export_over_its_cap_is_refused() -> None:
    check_export_size(MAX_EXPORT_SAMPLES)
    with pytest.raises(BadRequest) as refused:
        check_export_size(MAX_EXPORT_SAMPLES + 1)
    assert str(MAX_EXPORT_SAMPLES) in refused.value.problem()["detail"]
