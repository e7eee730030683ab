"""The depth of JSON text, measured without parsing: exact on JSON, never below
what a parser reaches on anything else, and safe on a thread with a small stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from atrium.json_nesting import nests_deeper_than

PLUGIN = Path(__file__).resolve().parents[2] / "plugin"

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text("[]{}\"\\ab,:"),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text("[]{}\"\\ab", max_size=4), children, max_size=4),
    max_leaves=60)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


def depth_reached(text: str) -> int:
    """The deepest a parser gets reading ``text`` from the start: a walk that
    knows strings and escapes, the reference for prefixes of JSON."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


@given(values)
def test_on_json_the_depth_is_exact(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        depth = depth_of(value)
        assert not nests_deeper_than(text, depth)
        if depth:
            assert nests_deeper_than(text, depth - 1)


@given(values, st.data())
def test_on_a_cut_text_it_never_answers_below_what_a_parser_reaches(
        value: Any, data: st.DataObject) -> None:
    text = json.dumps(value)
    cut = text[:data.draw(st.integers(0, len(text)))]
    reached = depth_reached(cut)
    if reached:
        assert nests_deeper_than(cut, reached - 1)


def test_brackets_in_strings_and_escaped_quotes_are_text() -> None:
    assert not nests_deeper_than(json.dumps({"a": "[" * 500, "b": '\\"[{' * 100}), 1)
    assert nests_deeper_than(json.dumps([[["[" * 500]]]), 2)
    assert not nests_deeper_than(json.dumps([[["[" * 500]]]), 3)


def test_a_string_left_open_counts_its_brackets() -> None:
    assert nests_deeper_than('["' + "[" * 100, 64)


PARSE_ON_A_SMALL_STACK = """
import threading
from atrium.api.params import parse_json
from atrium.errors import BadRequest

outcome = []

def parse():
    try:
        parse_json(b"[" * 100_000 + b"]" * 100_000)
    except BadRequest as refused:
        outcome.append(refused.detail)

threading.stack_size(100 * 1024)  # an Orthanc HTTP thread's
worker = threading.Thread(target=parse)
worker.start()
worker.join()
print(outcome)
"""


def test_a_deep_body_is_refused_on_a_thread_with_orthancs_stack() -> None:
    done = subprocess.run([sys.executable, "-c", PARSE_ON_A_SMALL_STACK], timeout=120,
                          env={**os.environ, "PYTHONPATH": str(PLUGIN)},
                          capture_output=True, text=True)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "nests deeper than 64 levels" in done.stdout
