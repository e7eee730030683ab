"""Signal codec benchmark, part one: Atrium's codec against FLAC and zstd.

For each record in ``../shared/data/signals`` (WFDB records through ``wfdb``,
EDF files through ``pyedflib``), on the same digital samples, in one run:

* **Atrium, per channel**: one segment per channel per 10 s window, every
  byte of every segment counted;
* **Atrium, joint**: one segment per 10 s window holding all channels of the
  same sampling rate (channels predicted from the earlier ones);
* **Atrium, stored**: joint, in the windows the store gives the record (about
  24,000 samples of all channels, 2 to 10 s: ``store.window_seconds``) — what
  ``signal_segments`` holds;
* **FLAC** at its highest level (``soundfile``, libFLAC level 8), each channel
  a whole mono file, and the channels as stereo pairs (an odd last one mono),
  headers included — whole files, which favours FLAC over 10 s segments;
* **zstd** level 19 on the raw samples, little-endian int16 when they fit, else
  int32, in frame order as a ``.dat`` stores them;
* the codec's encode and decode rates in MB/s of raw samples counted as 4-byte
  ints (int32), per-channel segments, best of ``--rounds``.

Part two (``--hours``, 24 by default; 0 skips it), through Atrium's API on an
Orthanc started here with its own PostgreSQL cluster:

* a 12-lead, 500 Hz EDF of ``--hours`` hours is made from PTB s0010_re's twelve
  standard leads (taken at every other sample, each repetition rotated by a
  random offset so that no two windows are the same), sent as a resumable upload
  and made a recording (``POST /api/recordings`` with its ``upload_ids``): the
  rate in MB of EDF a second and in samples a second, and Orthanc's resident
  memory growth;
* random 10 s windows of all 12 leads, ``--windows`` a round over ``--rounds``
  rounds, by one keep-alive client: ``format=binary`` digital (what a viewer
  asks), and JSON physical; the same windows read in this process straight from
  the database (``read_window``: no HTTP, token or audit) as the baseline; and
  ``GET /api/me`` as often, the cost of any request's path (HTTP, token, user)
  — p50 and p95 of each; and a reader scrolling (binary 10 s windows stepping
  5 s, twelve at a time from random places), which the store's cache of decoded
  segments serves half from memory.

    .venv/bin/python bench/signals.py [--data ../shared/data/signals] [--rounds 3]
                                      [--hours 24] [--windows 300]
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyedflib
import soundfile
import wfdb
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from atrium.signals.codec import decode, encode_block, encode_segment  # noqa: E402
from atrium.signals.store import window_seconds  # noqa: E402

WINDOW_SECONDS = 10
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "signals"


@dataclass(frozen=True)
class Record:
    """Digital samples of one record, grouped by sampling rate (Hz)."""

    name: str
    groups: list[tuple[int, np.ndarray]]  # (rate, samples of shape (channels, n))

    @property
    def samples(self) -> int:
        return sum(block.size for _rate, block in self.groups)


def read_wfdb(header: Path) -> Record:
    record = wfdb.rdrecord(str(header.with_suffix("")), physical=False)
    return Record(header.stem, [(int(record.fs), record.d_signal.T.astype(np.int64))])


def read_edf(path: Path) -> Record | None:
    # edflib refuses non-ASCII header text (test_generator_2 writes '°' as a unit).
    data = path.read_bytes()
    header = int(data[184:192])
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name
        copy.write_bytes(data[:header].replace(b"\xb0", b"d") + data[header:])
        with pyedflib.EdfReader(str(copy)) as reader:
            by_rate: dict[int, list[np.ndarray]] = {}
            for i in range(reader.signals_in_file):
                rate = round(reader.getSampleFrequency(i))
                by_rate.setdefault(rate, []).append(reader.readSignal(i, digital=True))
    if not by_rate:
        return None  # an annotations-only EDF+ file
    groups = [(rate, np.stack(chs).astype(np.int64)) for rate, chs in sorted(by_rate.items())]
    return Record(path.stem, groups)


def stored_seconds(record: Record) -> float:
    """The window the store gives this record (``store.window_seconds``)."""
    return window_seconds(sum(rate * block.shape[0] for rate, block in record.groups))


def windows(record: Record, seconds: float = WINDOW_SECONDS) -> list[np.ndarray]:
    out = []
    for rate, block in record.groups:
        width = max(1, int(seconds * rate))
        out.extend(block[:, s : s + width] for s in range(0, block.shape[1], width))
    return out


def atrium_bytes(record: Record, *, joint: bool, seconds: float = WINDOW_SECONDS) -> int:
    total = 0
    for window in windows(record, seconds):
        if joint:
            segment = encode_block(window)
            assert np.array_equal(decode(segment), window)
            total += len(segment)
        else:
            for channel in window:
                segment = encode_segment(channel)
                assert np.array_equal(decode(segment), channel)
                total += len(segment)
    return total


def flac_bytes(samples: np.ndarray, rate: int) -> int | None:
    """One FLAC file of 1 or 2 channels at level 8, checked to decode exactly."""
    low, high = int(samples.min()), int(samples.max())
    if low >= -(2**15) and high < 2**15:
        data, subtype, shift = samples.T.astype(np.int16), "PCM_16", 0
    elif low >= -(2**23) and high < 2**23:
        # libsndfile keeps the top 24 bits of int32 data.
        data, subtype, shift = (samples.T << 8).astype(np.int32), "PCM_24", 8
    else:
        return None  # FLAC stores at most 24 bits a sample
    buffer = io.BytesIO()
    soundfile.write(buffer, data, rate, subtype=subtype, format="FLAC", compression_level=1.0)
    back, _rate = soundfile.read(io.BytesIO(buffer.getvalue()), dtype=data.dtype, always_2d=True)
    assert np.array_equal(back.astype(np.int64) >> shift, samples.T)
    return len(buffer.getvalue())


def flac_total(record: Record, *, pairs: bool) -> int | None:
    total = 0
    for rate, block in record.groups:
        step = 2 if pairs else 1
        for c in range(0, block.shape[0], step):
            size = flac_bytes(block[c : c + step], rate)
            if size is None:
                return None
            total += size
    return total


def zstd_bytes(record: Record) -> int:
    total = 0
    compressor = zstandard.ZstdCompressor(level=19)
    for _rate, block in record.groups:
        fits16 = int(block.min()) >= -(2**15) and int(block.max()) < 2**15
        raw = block.T.astype("<i2" if fits16 else "<i4").tobytes()
        total += len(compressor.compress(raw))
    return total


def best_seconds(action: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def codec_rates(record: Record, rounds: int) -> tuple[float, float]:
    channels = [channel for window in windows(record) for channel in window]
    segments = [encode_segment(channel) for channel in channels]
    megabytes = 4 * record.samples / 1e6
    encode_s = best_seconds(lambda: [encode_segment(c) for c in channels], rounds)
    decode_s = best_seconds(lambda: [decode(s) for s in segments], rounds)
    return megabytes / encode_s, megabytes / decode_s


def load(data: Path) -> list[Record]:
    records: list[Record] = []
    for header in sorted(data.glob("*.hea")):
        records.append(read_wfdb(header))
    for path in sorted(data.glob("*.edf")) + sorted(data.glob("*.bdf")):
        record = read_edf(path)
        if record is not None:
            records.append(record)
    return records


def holter_edf(path: Path, data: Path, hours: float, seed: int = 0) -> int:
    """Writes a 12-lead 500 Hz EDF of ``hours`` hours; the number of samples."""
    source = wfdb.rdrecord(str(data / "s0010_re"), physical=False)
    leads = source.d_signal[::2, :12].T.astype(np.int32)  # 1000 Hz → 500 Hz
    names = source.sig_name[:12]
    rate, per_record = 500, 500  # 1 s data records
    total = int(hours * 3600) * rate
    rng = np.random.default_rng(seed)
    low, high = int(leads.min()), int(leads.max())
    headers = [{"label": name, "dimension": "uV", "sample_frequency": rate,
                "physical_min": float(low), "physical_max": float(high),
                "digital_min": low, "digital_max": high, "transducer": "", "prefilter": ""}
               for name in names]
    writer = pyedflib.EdfWriter(str(path), len(names), file_type=pyedflib.FILETYPE_EDFPLUS)
    try:
        writer.setSignalHeaders(headers)
        written = 0
        chunk = 3600 * rate  # an hour at a time: bounded memory
        while written < total:
            n = min(chunk, total - written)
            pieces = []
            have = 0
            while have < n:
                rotated = np.roll(leads, int(rng.integers(leads.shape[1])), axis=1)
                pieces.append(rotated[:, :n - have])
                have += pieces[-1].shape[1]
            block = np.concatenate(pieces, axis=1)
            assert n % per_record == 0
            writer.writeSamples([np.ascontiguousarray(row) for row in block], digital=True)
            written += n
    finally:
        writer.close()
    return total * len(names)


def api_part(data: Path, hours: float, windows_per_round: int, rounds: int) -> None:
    import shutil
    import statistics
    import uuid

    import psycopg
    import requests

    from atrium.auth.dev_issuer import load_or_create
    from atrium.signals.store import read_window
    from bench.common import PeakMemory, percentile, private_cluster, start_atrium, upload

    root, cluster = private_cluster("atrium-bench-signals-")
    process = None
    try:
        edf = root / "holter.edf"
        began = time.perf_counter()
        samples = holter_edf(edf, data, hours)
        print(f"\n# {hours:g} h, 12 leads, 500 Hz EDF: {edf.stat().st_size / 1e6:,.0f} MB, "
              f"{samples:,} samples, written in {time.perf_counter() - began:.0f} s")
        process = start_atrium(root, cluster, "signals")
        assert process.proc is not None
        url = process.url
        token = load_or_create(root / "orthanc").mint("bench-clinician", ["clinician"], "Default")
        headers = {"Authorization": f"Bearer {token}"}
        with PeakMemory(process.proc.pid) as memory:
            began = time.perf_counter()
            upload_id, chunk_rate = upload(url, headers, edf, 64 * 1024 * 1024)
            sent = time.perf_counter() - began
            answer = requests.post(f"{url}/api/recordings", headers=headers, timeout=7200,
                                   json={"upload_ids": [upload_id], "recording_type": "ECG"})
            answer.raise_for_status()
            elapsed = time.perf_counter() - began
        recording = answer.json()
        duration = float(recording["duration_seconds"])
        print(f"upload: chunks at {chunk_rate:,.0f} MB/s ({sent:.0f} s), recording made "
              f"{elapsed - sent:.0f} s later; end to end {edf.stat().st_size / 1e6 / elapsed:.1f} "
              f"MB/s = {samples / elapsed / 1e6:.2f} M samples/s; Orthanc resident memory "
              f"growth {memory.growth:,.0f} MiB")
        with psycopg.connect(cluster.url("signals_atrium")) as conn:
            # The ingest wrote some 300 MB of rows: let PostgreSQL's checkpoint of them
            # happen now rather than during the first round of reads.
            began = time.perf_counter()
            conn.execute("CHECKPOINT")
            print(f"checkpoint after the ingest: {time.perf_counter() - began:.1f} s")
            stored = conn.execute("SELECT sum(length(data_blob)) FROM signal_segments "
                                  "WHERE recording_id = %s", (recording["id"],)).fetchone()[0]
            print(f"stored: {stored / samples:.3f} bytes a sample "
                  f"(EDF: {edf.stat().st_size / samples:.3f})")
            recording_id = uuid.UUID(recording["id"])
            rng = np.random.default_rng(1)
            series: dict[str, list[float]] = {"binary": [], "json": [], "in-process": [],
                                              "/api/me": [], "scrolling": []}
            session = requests.Session()
            for n in range(rounds):
                # Each kind reads windows of its own, so that none is served from
                # the segments another kind left in Atrium's cache.
                starts_of = {kind: rng.uniform(0, duration - 10, size=windows_per_round)
                             for kind in ("binary", "json", "in-process", "/api/me")}
                rates: list[str] = []
                kinds = ["binary", "json", "in-process", "/api/me"]
                for kind in kinds if n % 2 == 0 else list(reversed(kinds)):
                    latencies = []
                    for start in starts_of[kind]:
                        t0 = time.perf_counter()
                        if kind == "/api/me":
                            got = session.get(f"{url}/api/me", headers=headers, timeout=60)
                            got.raise_for_status()
                        elif kind == "in-process":
                            window = read_window(conn, recording_id, start=float(start),
                                                 end=float(start) + 10)
                            assert len(window) == 12
                        else:
                            params = {"start": f"{start:.6f}", "end": f"{start + 10:.6f}",
                                      "format": kind,
                                      "units": "digital" if kind == "binary" else "physical"}
                            got = session.get(f"{url}/api/recordings/{recording_id}/signal",
                                              params=params, headers=headers, timeout=60)
                            if got.status_code != 200:
                                raise SystemExit(f"{kind}: {got.status_code} {got.text[:300]}")
                        latencies.append((time.perf_counter() - t0) * 1000)
                    series[kind].extend(latencies)
                    rates.append(f"{kind} p50 {percentile(latencies, .5):.1f} ms "
                                 f"p95 {percentile(latencies, .95):.1f} ms")
                # A reader scrolling: 10 s windows stepping 5 s from random places.
                latencies = []
                for first in rng.uniform(0, duration - 70, size=max(1, windows_per_round // 12)):
                    for step in range(12):
                        start = float(first) + 5 * step
                        t0 = time.perf_counter()
                        got = session.get(
                            f"{url}/api/recordings/{recording_id}/signal", headers=headers,
                            timeout=60, params={"start": f"{start:.6f}",
                                                "end": f"{start + 10:.6f}",
                                                "format": "binary", "units": "digital"})
                        latencies.append((time.perf_counter() - t0) * 1000)
                        if got.status_code != 200:
                            raise SystemExit(f"scrolling: {got.status_code} {got.text[:300]}")
                series["scrolling"].extend(latencies)
                rates.append(f"scrolling p50 {percentile(latencies, .5):.1f} ms "
                             f"p95 {percentile(latencies, .95):.1f} ms")
                print(f"round {n + 1}: " + "; ".join(rates))
            for kind, latencies in series.items():
                print(f"10 s × 12 leads, {kind:10s}: p50 {percentile(latencies, .5):5.1f} ms, "
                      f"p95 {percentile(latencies, .95):5.1f} ms, mean "
                      f"{statistics.fmean(latencies):5.1f} ms over {len(latencies)} windows"
                      + (" (goal p95 ≤ 20 ms)" if kind == "binary" else ""))
    finally:
        if process is not None:
            process.stop()
        cluster.stop("fast")
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--windows", type=int, default=300)
    parser.add_argument("--skip-codec", action="store_true")
    args = parser.parse_args()
    if not args.skip_codec:
        codec_part(args)
    if args.hours > 0:
        api_part(args.data, args.hours, args.windows, args.rounds)


def codec_part(args: argparse.Namespace) -> None:

    encode_segment(np.arange(64))  # compile (or load) the codec's loops before timing
    decode(encode_block(np.stack([np.arange(64), np.arange(64)])))
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"# bytes per sample ({WINDOW_SECONDS} s segments for Atrium; 'stored': the "
          "store's own window for the record, all channels a segment); MB/s of int32 samples")
    columns = (
        "record", "channels", "samples", "atrium/ch", "atrium/joint", "stored",
        "flac mono", "flac pairs", "zstd-19", "enc MB/s", "dec MB/s",
    )  # fmt: skip
    print(" | ".join(f"{c:>12}" for c in columns))
    for record in load(args.data):
        n = record.samples

        def ratio(size: int | None, n: int = n) -> str:
            return "n/a" if size is None else f"{size / n:.3f}"

        encode_rate, decode_rate = codec_rates(record, args.rounds)
        row = (
            record.name,
            str(sum(block.shape[0] for _r, block in record.groups)),
            str(n),
            ratio(atrium_bytes(record, joint=False)),
            ratio(atrium_bytes(record, joint=True)),
            f"{ratio(atrium_bytes(record, joint=True, seconds=stored_seconds(record)))} "
            f"({stored_seconds(record):g} s)",
            ratio(flac_total(record, pairs=False)),
            ratio(flac_total(record, pairs=True)),
            ratio(zstd_bytes(record)),
            f"{encode_rate:.2f}",
            f"{decode_rate:.2f}",
        )
        print(" | ".join(f"{c:>12}" for c in row), flush=True)


if __name__ == "__main__":
    main()
