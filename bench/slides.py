"""Whole-slide benchmark: tiles through Atrium's API against the reader called
directly, a viewer's pan-and-zoom trace, and a chunked upload's rate and memory.

One run, one machine. A 50,000 × 50,000 JPEG-tiled pyramid (BigTIFF, 256-pixel
tiles) is generated, sent to an Orthanc with Atrium as a resumable upload (chunks
of ``--chunk-mib``) while Orthanc's resident memory is sampled, and made a slide.
Then, with the token, organization scope and the (coalesced) audit on:

* **random tiles**: the same list of random (level, col, row) over every level,
  fetched by 4 parallel clients (kept-alive connections; a lean client, so that
  the load generator takes little of the two cores the server runs on) through
  ``/api/slides/{id}/tiles/…``, and read by 4 threads in this process straight
  from the file — (a) with Atrium's reader (``open_tiff_slide``: a ranged read
  and the JPEG tables merged, no decode), the ceiling; (b) the usual way a tile
  server uses the reader library: tifffile decodes the tile and it is encoded
  again as JPEG. Both orders alternate over ``--rounds`` rounds.
* **viewer trace**: what OpenSeadragon asks for in a 1280 × 800 window when a
  pathologist opens the slide, zooms in step by step towards a point and pans —
  every Deep Zoom tile of each view, 6 at a time as a browser does, first visits
  only (no tile twice).

Prints tiles/s, p50/p95 and the ratios for ``docs/BENCHMARKS.md``.

    .venv/bin/python bench/slides.py [--size 50000] [--tiles 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import queue
import random
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import imagecodecs
import requests
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from atrium.auth.dev_issuer import load_or_create  # noqa: E402
from atrium.slides.source import StoreSource  # noqa: E402
from atrium.slides.tiff import open_tiff_slide  # noqa: E402
from atrium.storage import FileObjectStore  # noqa: E402
from bench.common import (  # noqa: E402
    KeepAliveClient,
    PeakMemory,
    percentile,
    private_cluster,
    start_atrium,
    upload,
)
from tests.support.slidegen import write_big_jpeg_pyramid  # noqa: E402

CLIENTS = 4
BROWSER_CONNECTIONS = 6
WINDOW = (1280, 800)


def random_tiles(levels: list[tuple[int, int]], tile: int, count: int, seed: int
                 ) -> list[tuple[int, int, int]]:
    """``count`` random (level, col, row): a level first, uniformly, then a tile of it."""
    rng = random.Random(seed)
    picks = []
    for _ in range(count):
        level = rng.randrange(len(levels))
        width, height = levels[level]
        picks.append((level, rng.randrange(math.ceil(width / tile)),
                      rng.randrange(math.ceil(height / tile))))
    return picks


def run_parallel(work: Sequence[Any], fetch: Callable[[Any], None], clients: int
                 ) -> tuple[float, list[float]]:
    """Items per second and each item's latency (ms), ``clients`` at a time."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(item: Any) -> None:
        began = time.perf_counter()
        fetch(item)
        spent = (time.perf_counter() - began) * 1000
        with lock:
            latencies.append(spent)

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, work))
    return len(work) / (time.perf_counter() - began), latencies


def api_fetcher(url: str, prefix: str, headers: dict[str, str]) -> Callable[[Any], None]:
    """GET ``prefix/{level}/{col}/{row}`` (or ``..._{row}.jpeg`` for Deep Zoom, when
    ``prefix`` ends with ``dzi_files``) on kept-alive connections, one per request in
    flight, kept from one batch to the next as a browser keeps them."""
    idle: queue.SimpleQueue[KeepAliveClient] = queue.SimpleQueue()
    deep_zoom = prefix.endswith("dzi_files")

    def fetch(item: tuple[int, int, int]) -> None:
        try:
            client = idle.get_nowait()
        except queue.Empty:
            client = KeepAliveClient(url, headers)
        path = (f"{prefix}/{item[0]}/{item[1]}_{item[2]}.jpeg" if deep_zoom
                else f"{prefix}/{item[0]}/{item[1]}/{item[2]}")
        status, body = client.get(path)
        idle.put(client)
        if status != 200 or not body:
            raise SystemExit(f"{path}: {status} {body[:200]!r}")

    return fetch


def library_fetcher(path: Path) -> Callable[[Any], None]:
    """The reader library as a tile server usually calls it: decode, encode."""
    tif = tifffile.TiffFile(path)
    pages = [page for page in tif.pages if page.is_tiled]  # type: ignore[union-attr]
    # Read before the threads start: tifffile loads long tag values on first use,
    # through the file handle, which would race with the tiles' reads.
    offsets = [(page.dataoffsets, page.databytecounts) for page in pages]
    descriptor = os.open(path, os.O_RDONLY)

    def fetch(item: tuple[int, int, int]) -> None:
        level, col, row = item
        page = pages[level]
        columns = math.ceil(page.imagewidth / page.tilewidth)
        index = row * columns + col
        data = os.pread(descriptor, offsets[level][1][index], offsets[level][0][index])
        pixels = page.decode(data, index, jpegtables=page.jpegtables)[0]
        imagecodecs.jpeg8_encode(pixels.reshape(pixels.shape[-3:]), level=90)

    return fetch


def atrium_reader_fetcher(path: Path) -> Callable[[Any], None]:
    store = FileObjectStore(path.parent)
    reader = open_tiff_slide(StoreSource(store, path.name, path.stat().st_size))

    def fetch(item: tuple[int, int, int]) -> None:
        reader.tile(*item, "jpeg")

    return fetch


def viewer_trace(width: int, height: int, tile: int) -> list[list[tuple[int, int, int]]]:
    """Deep Zoom tiles of each view: home (the slide fits the window), then zooming
    ×2 per step towards a point of tissue, then panning half a window at a time."""
    top = math.ceil(math.log2(max(width, height)))
    focus_x, focus_y = width * 0.37, height * 0.58
    views: list[tuple[int, float, float]] = []  # (dzi level, centre x, centre y) in level-0 px
    fit = max(width / WINDOW[0], height / WINDOW[1])
    home = top - math.ceil(math.log2(fit))
    for level in range(home, top + 1):
        views.append((level, focus_x, focus_y))
    for step in range(1, 13):
        views.append((top, focus_x + step * WINDOW[0] / 2, focus_y + (step % 3) * WINDOW[1] / 4))
    seen: set[tuple[int, int, int]] = set()
    trace = []
    for level, cx, cy in views:
        scale = 2 ** (top - level)
        level_w, level_h = math.ceil(width / scale), math.ceil(height / scale)
        x0, y0 = max(0, cx / scale - WINDOW[0] / 2), max(0, cy / scale - WINDOW[1] / 2)
        x1, y1 = min(level_w, x0 + WINDOW[0]), min(level_h, y0 + WINDOW[1])
        view = [(level, c, r)
                for c in range(int(x0 // tile), int(math.ceil(x1 / tile)))
                for r in range(int(y0 // tile), int(math.ceil(y1 / tile)))
                if (level, c, r) not in seen]
        seen.update(view)
        trace.append(view)
    return trace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--tiles", type=int, default=3000, help="random tiles per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-mib", type=int, default=64)
    args = parser.parse_args()
    root, cluster = private_cluster("atrium-bench-slides-")
    process = None
    try:
        path = root / "slide.tiff"
        began = time.perf_counter()
        write_big_jpeg_pyramid(path, args.size, args.size)
        print(f"generated {args.size:,}² JPEG pyramid: {path.stat().st_size / 1e6:,.0f} MB "
              f"in {time.perf_counter() - began:.1f} s")
        process = start_atrium(root, cluster, "slides")
        assert process.proc is not None
        url = process.url
        token = load_or_create(root / "orthanc").mint("bench-clinician", ["clinician"], "Default")
        headers = {"Authorization": f"Bearer {token}"}
        with PeakMemory(process.proc.pid) as memory:
            upload_id, rate = upload(url, headers, path, args.chunk_mib * 1024 * 1024)
        growth = memory.growth
        print(f"chunked upload ({args.chunk_mib} MiB chunks): {rate:,.0f} MB/s, Orthanc "
              f"resident memory growth {growth:,.0f} MiB")
        began = time.perf_counter()
        answer = requests.post(f"{url}/api/slides", headers=headers, timeout=600,
                               json={"upload_id": upload_id, "slide_id": "BENCH-1"})
        answer.raise_for_status()
        slide = answer.json()
        print(f"slide from the upload in {time.perf_counter() - began:.1f} s: "
              f"{slide['pyramid_levels']} levels, tile {slide['tile_size']}")
        levels = [(lv["width"], lv["height"]) for lv in slide["metadata"]["levels"]]
        tile = slide["tile_size"]
        api_rates, direct_rates, library_rates = [], [], []
        api_latency: list[float] = []
        fetchers = [("api", api_fetcher(url, f"/api/slides/{slide['id']}/tiles", headers)),
                    ("atrium reader", atrium_reader_fetcher(path)),
                    ("tifffile decode+encode", library_fetcher(path))]
        warm_up = random_tiles(levels, tile, args.tiles // 6, seed=-1)
        for _, fetch in fetchers:  # connections, readers, code paths: none timed cold
            run_parallel(warm_up, fetch, CLIENTS)
        for n in range(args.rounds):
            work = random_tiles(levels, tile, args.tiles, seed=n)
            runs = fetchers[::-1] if n % 2 else fetchers
            for name, fetch in runs:
                rate, latencies = run_parallel(work, fetch, CLIENTS)
                if name == "api":
                    api_rates.append(rate)
                    api_latency.extend(latencies)
                elif name == "atrium reader":
                    direct_rates.append(rate)
                else:
                    library_rates.append(rate)
                print(f"round {n + 1}: {name:24s} {rate:8,.0f} tiles/s"
                      + (f"  p50 {percentile(latencies, .5):5.1f} ms  "
                         f"p95 {percentile(latencies, .95):5.1f} ms" if name == "api" else ""))
        api = statistics.median(api_rates)
        print(f"\nrandom tiles, {CLIENTS} clients, {args.rounds} rounds of {args.tiles}:")
        print(f"  API: {api:,.0f} tiles/s (rounds {', '.join(f'{r:,.0f}' for r in api_rates)}), "
              f"p50 {percentile(api_latency, .5):.1f} ms, p95 {percentile(api_latency, .95):.1f} "
              f"ms (goal ≥ 200/s, p95 ≤ 50 ms)")
        library = statistics.median(library_rates)
        direct = statistics.median(direct_rates)
        print(f"  tifffile decode+encode in process: {library:,.0f} tiles/s → API/library "
              f"{api / library:.2f}× (goal ≥ 0.8×)")
        print(f"  Atrium's reader in process (no HTTP): {direct:,.0f} tiles/s → API/reader "
              f"{api / direct:.2f}×")
        trace = viewer_trace(args.size, args.size, tile)
        dzi_latency: list[float] = []
        view_times: list[float] = []
        dzi = api_fetcher(url, f"/api/slides/{slide['id']}/dzi_files", headers)
        for view in trace:
            began = time.perf_counter()
            _, latencies = run_parallel(view, dzi, BROWSER_CONNECTIONS)
            view_times.append((time.perf_counter() - began) * 1000)
            dzi_latency.extend(latencies)
        print(f"viewer trace: {len(trace)} views, {len(dzi_latency)} Deep Zoom tiles: tile p50 "
              f"{percentile(dzi_latency, .5):.1f} ms, p95 {percentile(dzi_latency, .95):.1f} ms; "
              f"a whole view p50 {percentile(view_times, .5):.0f} ms, "
              f"p95 {percentile(view_times, .95):.0f} ms")
        print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}")
    finally:
        if process is not None:
            process.stop()
        cluster.stop("fast")
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
