"""Signal codec benchmark, part one: Atrium's codec against FLAC and zstd.

For each record in ``../shared/data/signals`` (WFDB records through ``wfdb``,
EDF files through ``pyedflib``), on the same digital samples, in one run:

* **Atrium, per channel**: one segment per channel per 10 s window (how the
  store keeps ``signal_segments``), every byte of every segment counted;
* **Atrium, joint**: one segment per 10 s window holding all channels of the
  same sampling rate (channels predicted from the earlier ones);
* **FLAC** at its highest level (``soundfile``, libFLAC level 8), each channel
  a whole mono file, and the channels as stereo pairs (an odd last one mono),
  headers included — whole files, which favours FLAC over 10 s segments;
* **zstd** level 19 on the raw samples, little-endian int16 when they fit, else
  int32, in frame order as a ``.dat`` stores them;
* the codec's encode and decode rates in MB/s of raw samples counted as 4-byte
  ints (int32), per-channel segments, best of ``--rounds``.

    .venv/bin/python bench/signals.py [--data ../shared/data/signals] [--rounds 3]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from atrium.signals.codec import decode, encode_block, encode_segment  # noqa: E402

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


def windows(record: Record) -> list[np.ndarray]:
    out = []
    for rate, block in record.groups:
        width = WINDOW_SECONDS * rate
        out.extend(block[:, s : s + width] for s in range(0, block.shape[1], width))
    return out


def atrium_bytes(record: Record, *, joint: bool) -> int:
    total = 0
    for window in windows(record):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    encode_segment(np.arange(64))  # compile (or load) the codec's loops before timing
    decode(encode_block(np.stack([np.arange(64), np.arange(64)])))
    print(f"# {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"# bytes per sample ({WINDOW_SECONDS} s segments for Atrium); MB/s of int32 samples")
    columns = (
        "record", "channels", "samples", "atrium/ch", "atrium/joint",
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
            ratio(flac_total(record, pairs=False)),
            ratio(flac_total(record, pairs=True)),
            ratio(zstd_bytes(record)),
            f"{encode_rate:.2f}",
            f"{decode_rate:.2f}",
        )
        print(" | ".join(f"{c:>12}" for c in row), flush=True)


if __name__ == "__main__":
    main()
