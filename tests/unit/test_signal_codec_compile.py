"""The codec's compiled loops are compiled once, on a thread with a large stack,
whichever thread codes first, and never again.

Orthanc's HTTP threads have 100 KiB stacks; numba compiling on one of them (its
first call there) overflowed the stack and killed the process. The first test
reproduces that in a fresh interpreter with an empty numba cache: a thread with
a small stack codes first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atrium.signals import codec

PLUGIN = Path(codec.__file__).resolve().parents[2]

FIRST_USE_ON_A_SMALL_STACK = """
import threading
import numpy as np
from atrium.signals import codec

outcome = []

def first_use():
    block = (np.arange(3 * 5000, dtype=np.int32).reshape(3, 5000) * 7919) % 2001 - 1000
    outcome.append(np.array_equal(codec.decode(codec.encode_block(block)), block))

threading.stack_size(64 * 1024)  # less than an Orthanc HTTP thread's 100 KiB
worker = threading.Thread(target=first_use)
worker.start()
worker.join()
print("round trip", outcome)
"""


def test_the_first_use_on_a_thread_with_a_small_stack_compiles_elsewhere(
        tmp_path: Path) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache"),
           "PYTHONPATH": str(PLUGIN)}
    done = subprocess.run([sys.executable, "-c", FIRST_USE_ON_A_SMALL_STACK], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "round trip [True]" in done.stdout
    assert any((tmp_path / "numba-cache").rglob("*.nbi")), "nothing was compiled"


def test_after_compiling_other_argument_types_are_refused_not_compiled() -> None:
    codec.compile_loops()
    residuals = np.zeros((1, 4), dtype=np.int32)  # the loops take int64
    with pytest.raises(TypeError):
        codec._rc_encode(residuals, codec._RATE)
    assert [len(dispatcher.signatures) for dispatcher, _ in codec._SIGNATURES] == \
        [1] * len(codec._SIGNATURES)


def test_a_read_only_block_is_coded_with_the_compiled_signature() -> None:
    block = np.frombuffer(np.arange(-50, 50, dtype=np.int64).tobytes(), dtype=np.int64)
    assert not block.flags.writeable
    assert np.array_equal(codec.decode(codec.encode_segment(block)), block)
