"""Annotation benchmark: viewport queries over 1,000,000 annotations, and creation
throughput with auditing on.

1. **Viewport.** ``--annotations`` (default 1,000,000) polygons of 8–64 points,
   spread over ``--slides`` (default 100) whole-slide images of 100,000 × 80,000
   pixels, generated straight into PostgreSQL in the caller's organization. Then
   ``GET /api/annotations?target_id=<slide>&bbox=x,y,w,h`` through the HTTP API
   with a clinician's token, for viewports from a screen at full resolution
   (2,048 px) to a tenth of the slide (32,768 px), at random places on random
   slides. p50/p95 per viewport size and overall (goal p95 ≤ 20 ms), and, as the
   baseline, the API's query (without the caller's scope) sent straight to
   PostgreSQL from this process: the difference is what the API adds (token,
   audit row, target check, rendering).
2. **Create.** ``--creates`` (default 2,000) ``POST /api/annotations`` of such
   polygons from 4 concurrent clients; every one is audited (its row committed
   before the answer), as always. Annotations per second.

    .venv/bin/python bench/annotations.py [--annotations 1000000] [--slides 100]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atrium.auth.dev_issuer import load_or_create  # noqa: E402
from bench.common import private_cluster  # noqa: E402
from bench.search import percentile, start  # noqa: E402

ORG = "Bench Pathology"
WIDTH, HEIGHT = 100_000, 80_000
VIEWPORTS = (2_048, 8_192, 32_768)
REPEATS = 60
BATCH = 50_000
CLIENTS = 4
LABELS = ("tumor", "stroma", "necrosis", "lymphocyte", "vessel", "mitosis")

_SLIDES = """
WITH org AS (INSERT INTO organizations (name) VALUES (%(org)s)
             ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id)
INSERT INTO slides (slide_id, organization_id, width_pixels, height_pixels, stain)
SELECT 'BENCH-SLIDE-' || g, org.id, %(width)s, %(height)s, 'H&E'
FROM generate_series(1, %(slides)s) g, org
"""

# One polygon per row: n corners (8..64) on a jittered circle of radius 20..200 px
# around a random centre; the bounding box is the corners' min/max, as the server
# would compute it. `g` appears in every random expression so that PostgreSQL
# evaluates them per row rather than once.
_ANNOTATIONS = """
INSERT INTO annotations (annotation_type, target_id, target_type, label, coordinates,
                         organization_id, user_id, created_at, updated_at)
SELECT 'wsi', s.id, 'slide', (%(labels)s::text[])[1 + g %% 6],
       jsonb_build_object(
           'type', 'polygon', 'points', pts.points,
           'bounding_box', jsonb_build_object('x', pts.x0, 'y', pts.y0,
                                              'width', pts.x1 - pts.x0,
                                              'height', pts.y1 - pts.y0)),
       s.organization_id, NULL, ts, ts
FROM generate_series(%(first)s::bigint, %(last)s::bigint) g
JOIN (SELECT id, organization_id, row_number() OVER (ORDER BY slide_id) - 1 AS n
      FROM slides WHERE slide_id LIKE 'BENCH-SLIDE-%%') s ON s.n = g %% %(slides)s
CROSS JOIN LATERAL (
    SELECT 8 + (g * 7919) %% 57 AS corners,
           20 + random() * 180 + 0 * g AS radius,
           random() * %(width)s + 0 * g AS cx,
           random() * %(height)s + 0 * g AS cy,
           now() - (%(total)s - g) * INTERVAL '1 millisecond' AS ts) c
CROSS JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object('x', x, 'y', y) ORDER BY k) AS points,
           min(x) AS x0, min(y) AS y0, max(x) AS x1, max(y) AS y1
    FROM (SELECT k,
                 round((c.cx + c.radius * (0.8 + 0.2 * random()) * cos(2 * pi() * k / c.corners))
                       ::numeric, 1)::float8 AS x,
                 round((c.cy + c.radius * (0.8 + 0.2 * random()) * sin(2 * pi() * k / c.corners))
                       ::numeric, 1)::float8 AS y
          FROM generate_series(0, c.corners - 1) k) corner) pts
"""

# The API's query with the caller's scope left out: the page's keys from the
# viewport index, then only the page's rows, their JSON as PostgreSQL's text.
_VIEWPORT_SQL = """
SELECT a.root_id, a.label, a.coordinates::text, a.properties::text, a.created_at
FROM annotations a
JOIN (SELECT a.id FROM annotations a
      WHERE a.target_id = %s AND a.is_latest AND a.deleted_at IS NULL
        AND a.bbox && box(point(%s, %s), point(%s, %s))
      ORDER BY a.created_at DESC, a.root_id DESC LIMIT 101) page ON page.id = a.id
"""


def generate(database_url: str, count: int, slides: int) -> None:
    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(_SLIDES, {"org": ORG, "width": WIDTH, "height": HEIGHT, "slides": slides})
        for first in range(1, count + 1, BATCH):
            last = min(first + BATCH - 1, count)
            conn.execute(_ANNOTATIONS, {"first": first, "last": last, "slides": slides,
                                        "labels": list(LABELS), "width": WIDTH,
                                        "height": HEIGHT, "total": count})
            print(f"  {last:,} annotations written", end="\r", flush=True)
        conn.execute("VACUUM ANALYZE annotations")  # as autovacuum leaves it
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('annotations'))"
                            ).fetchone()
    print(f"generated {count:,} annotations on {slides} slides in "
          f"{time.perf_counter() - started:.0f} s ({size[0] if size else '?'} with indexes)")


def slide_ids(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        return [str(r[0]) for r in conn.execute(
            "SELECT id FROM slides WHERE slide_id LIKE 'BENCH-SLIDE-%' ORDER BY slide_id")]


def viewports(slides: list[str], size: int, rng: random.Random) -> list[tuple[str, int, int]]:
    return [(rng.choice(slides), rng.randrange(0, WIDTH - size), rng.randrange(0, HEIGHT - size))
            for _ in range(REPEATS)]


def part_viewport(url: str, database_url: str, headers: dict[str, str], slides: list[str]
                  ) -> None:
    rng = random.Random(11)
    everything: list[float] = []
    with requests.Session() as session, psycopg.connect(database_url) as conn:
        for size in VIEWPORTS:
            api: list[float] = []
            direct: list[float] = []
            found: list[int] = []
            for slide, x, y in viewports(slides, size, rng):
                params = {"target_type": "slide", "target_id": slide,
                          "bbox": f"{x},{y},{size},{size}", "limit": 100}
                started = time.perf_counter()
                answer = session.get(f"{url}/api/annotations", params=params, headers=headers,
                                     timeout=60)
                api.append((time.perf_counter() - started) * 1000)
                answer.raise_for_status()
                found.append(len(answer.json()["items"]))
                started = time.perf_counter()
                conn.execute(_VIEWPORT_SQL, (slide, x, y, x + size, y + size)).fetchall()
                direct.append((time.perf_counter() - started) * 1000)
            everything.extend(api)
            print(f"  viewport {size:>6} px: {statistics.mean(found):6.1f} annotations/page   "
                  f"API p50 {statistics.median(api):5.1f} ms  p95 {percentile(api, 0.95):5.1f} ms"
                  f"   its SQL alone p50 {statistics.median(direct):5.1f} ms  "
                  f"p95 {percentile(direct, 0.95):5.1f} ms")
    print(f"viewport query through the API: p50 {statistics.median(everything):.1f} ms   "
          f"p95 {percentile(everything, 0.95):.1f} ms   (goal p95 ≤ 20 ms)")


def polygon(rng: random.Random) -> dict[str, object]:
    corners = rng.randint(8, 64)
    cx, cy, radius = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT), rng.uniform(20, 200)
    return {"type": "polygon", "points": [
        {"x": round(cx + radius * math.cos(2 * math.pi * k / corners), 1),
         "y": round(cy + radius * math.sin(2 * math.pi * k / corners), 1)}
        for k in range(corners)]}


def part_create(url: str, headers: dict[str, str], slide: str, count: int) -> None:
    rng = random.Random(5)
    bodies = [{"annotation_type": "wsi", "target_type": "slide", "target_id": slide,
               "label": rng.choice(LABELS), "coordinates": polygon(rng)} for _ in range(count)]

    def create(chunk: list[dict[str, object]]) -> int:
        with requests.Session() as session:
            for body in chunk:
                session.post(f"{url}/api/annotations", json=body, headers=headers,
                             timeout=60).raise_for_status()
        return len(chunk)

    chunks = [bodies[n::CLIENTS] for n in range(CLIENTS)]
    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        created = sum(pool.map(create, chunks))
    elapsed = time.perf_counter() - started
    print(f"create: {created:,} annotations ({CLIENTS} clients, audited) in {elapsed:.1f} s = "
          f"{created / elapsed:.0f} annotations/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", type=int, default=1_000_000)
    parser.add_argument("--slides", type=int, default=100)
    parser.add_argument("--creates", type=int, default=2_000)
    args = parser.parse_args()
    root, cluster = private_cluster("atrium-bench-annotations-")
    process = None
    try:
        process, database_url = start(root, cluster)
        token = load_or_create(root / "orthanc").mint("bench-pathologist", ["clinician"], ORG)
        headers = {"Authorization": f"Bearer {token}"}
        requests.get(f"{process.url}/api/me", headers=headers, timeout=30).raise_for_status()
        generate(database_url, args.annotations, args.slides)
        slides = slide_ids(database_url)
        part_viewport(process.url, database_url, headers, slides)
        if args.creates:
            part_create(process.url, headers, slides[0], args.creates)
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
