"""How deeply a JSON text nests, measured without parsing it.

Python's ``json`` parses arrays and objects by recursion in C. Orthanc's HTTP
threads have 100 KiB stacks: a few hundred ``[`` in a row overflow one long
before Python's recursion limit is reached, and the process dies of a
segmentation fault, not an exception. So every JSON text from outside — a body,
a form part, a token's header — is measured here first: linear time, no
recursion, every step at C speed.

Pure: no Orthanc, no HTTP.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["nests_deeper_than"]

# A JSON string literal (unrolled: linear, no backtracking); the brackets inside
# one are text, not structure.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_OPENING = (ord("["), ord("{"))


def nests_deeper_than(text: str, limit: int) -> bool:
    """Whether ``text`` opens more than ``limit`` arrays or objects inside one another.

    Brackets inside string literals do not count. On a text that is not valid
    JSON the answer is an upper bound of the depth a parser would reach before
    it stops at the error (an unterminated string's brackets count), so a
    ``False`` is always safe to parse.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).encode("ascii")
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where(np.isin(codes, _OPENING), 1, -1).astype(np.int32)
    return bool(codes.size) and int(np.cumsum(steps).max()) > limit
