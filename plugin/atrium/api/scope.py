"""What a caller may see, as SQL: the organization and PHI conditions every query
of Atrium's resources carries, the text-search forms, and the organization of
instances derived from others (Orthanc's anonymize/modify).

Scoping happens in the database, never by filtering rows in Python: a row of
another organization is simply not found, so the answer is the same 404 as for an
id that does not exist, and no list can ever include it.

* **Organization**: ``organization_id`` equals the caller's, and the caller's
  organization is itself live (not soft-deleted) — so a deleted organization's
  data disappears at once, even for an identity the guard cached before the
  deletion. Series and instances are scoped through their study.
* **Soft deletion**: rows with ``deleted_at`` set are invisible, at every level of
  the hierarchy (an instance of a deleted series is gone too).
* **PHI** (SPEC §7): a caller without ``READ_PHI`` sees only patients with
  ``is_deidentified`` and what hangs below them; an identified patient is, for
  them, exactly like a missing one.

Fragments are composed with :mod:`psycopg.sql` (identifiers quoted, values as
server-side ``%s`` parameters in the order the fragments were added); no value
ever becomes SQL text.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

from psycopg import sql

from atrium.errors import BadRequest, FieldError, Forbidden

log = logging.getLogger(__name__)

__all__ = [
    "Conditions", "RecentlyVisible", "SourceOrganizations", "live_study_scope",
    "organization_scope", "owned_scope", "patient_scope", "prefix_tsquery",
    "require_live_organization", "require_words", "study_scope", "visible_key",
]


class Conditions:
    """A ``WHERE`` clause: fragments joined with ``AND``, and their parameters in
    order. Fragments are code (``str`` literals or composed SQL), never input."""

    def __init__(self) -> None:
        self._parts: list[sql.Composable] = []
        self.params: list[Any] = []

    def add(self, fragment: str | sql.Composable, *params: Any) -> Conditions:
        self._parts.append(sql.SQL(fragment) if isinstance(fragment, str) else fragment)
        self.params.extend(params)
        return self

    def sql(self) -> sql.Composable:
        if not self._parts:
            return sql.SQL("TRUE")
        return sql.SQL(" AND ").join(sql.SQL("({})").format(part) for part in self._parts)


V = TypeVar("V")


class RecentlyVisible(Generic[V]):
    """What the scope query said about one resource for a kind of caller
    (organization, PHI or not), kept for ``seconds``: a viewer asks for dozens of
    a slide's tiles or a recording's windows a second, and each would otherwise
    repeat the same lookup — for a recording, a probe of every partition of
    ``recordings``. The route clears it when it deletes the resource, and on the
    cluster bus when another node does; a patient's de-identification, or an
    organization's deletion, shows within ``seconds``."""

    def __init__(self, seconds: float = 2.0, capacity: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._capacity = capacity
        self._clock = clock
        self._known: dict[Hashable, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            found = self._known.get(key)
        if found is None or self._clock() - found[0] >= self._seconds:
            return None
        return found[1]

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            if len(self._known) >= self._capacity:
                self._known.clear()
            self._known[key] = (self._clock(), value)

    def clear(self, *_: Any) -> None:
        """Forget everything (extra arguments, such as a bus message's, are ignored)."""
        with self._lock:
            self._known.clear()


def visible_key(caller: Any, resource_id: Any) -> tuple[Any, ...]:
    """:class:`RecentlyVisible`'s key: what the scope answer depends on."""
    return (caller.organization_id, caller.can_read_phi, resource_id)


def _col(alias: str, column: str) -> sql.Identifier:
    return sql.Identifier(alias, column)


_LIVE_ORGANIZATION = sql.SQL(
    "EXISTS (SELECT 1 FROM organizations live_org "
    "WHERE live_org.id = %s AND live_org.deleted_at IS NULL)")


def organization_scope(caller: Any, alias: str) -> Conditions:
    """``alias.organization_id`` is the caller's live organization."""
    org = caller.organization_id
    return (Conditions()
            .add(sql.SQL("{} = %s").format(_col(alias, "organization_id")), org)
            .add(_LIVE_ORGANIZATION, org))


def require_live_organization(conn: Any, caller: Any) -> None:
    """Before a write in the caller's organization: 403 once it has been deleted
    (the guard refuses such tokens too, but may have cached the identity)."""
    row = conn.execute(sql.SQL("SELECT ") + _LIVE_ORGANIZATION,
                       (caller.organization_id,)).fetchone()
    if not (row and row[0]):
        raise Forbidden("The caller's organization has been deleted.")


def patient_scope(caller: Any, p: str = "p") -> Conditions:
    """Patients the caller may see: their organization's, live, and de-identified
    unless the caller may read PHI."""
    where = organization_scope(caller, p).add(
        sql.SQL("{} IS NULL").format(_col(p, "deleted_at")))
    if not caller.can_read_phi:
        where.add(sql.SQL("{}").format(_col(p, "is_deidentified")))
    return where


def owned_scope(caller: Any, alias: str, p: str = "p") -> Conditions:
    """Rows of their own that may have a patient — slides, recordings — the caller may
    see: their live organization's, not soft-deleted, whose patient (if any) is live
    and, without ``READ_PHI``, de-identified. The query ``LEFT JOIN patients {p}``."""
    a, patient = sql.Identifier(alias), sql.Identifier(p)
    where = organization_scope(caller, alias).add(sql.SQL(
        "{a}.deleted_at IS NULL AND ({a}.patient_id IS NULL OR {p}.deleted_at IS NULL)"
    ).format(a=a, p=patient))
    if not caller.can_read_phi:
        where.add(sql.SQL("{a}.patient_id IS NULL OR {p}.is_deidentified").format(
            a=a, p=patient))
    return where


def study_scope(caller: Any, s: str = "s", p: str = "p") -> Conditions:
    """Studies the caller may see; the query joins ``patients p ON p.id = s.patient_id``.
    The study's own organization decides (a patient and their studies never differ,
    but the study is what the mirror keeps in the organization it arrived in)."""
    where = organization_scope(caller, s).add(
        sql.SQL("{} IS NULL AND {} IS NULL").format(_col(s, "deleted_at"), _col(p, "deleted_at")))
    if not caller.can_read_phi:
        where.add(sql.SQL("{}").format(_col(p, "is_deidentified")))
    return where


def live_study_scope(caller: Any, *aliases: str, s: str = "s", p: str = "p") -> Conditions:
    """:func:`study_scope` plus ``deleted_at IS NULL`` on each of ``aliases`` (series,
    instances joined below the study)."""
    where = study_scope(caller, s, p)
    for alias in aliases:
        where.add(sql.SQL("{} IS NULL").format(_col(alias, "deleted_at")))
    return where


# ------------------------------------------------------------------ text search

_WORD = re.compile(r"[^\W_]+")  # letters and digits, any script; never tsquery syntax


def require_words(text: str, field: str = "q") -> list[str]:
    """The words of a search text; a 400 naming ``field`` when it has none (``%``,
    ``_``, ``\\`` alone): a search for nothing would silently find nothing."""
    words = _WORD.findall(text)
    if not words:
        raise BadRequest.invalid([FieldError(
            "query", field, "must contain at least one letter or digit to search for")])
    return words[:32]


def prefix_tsquery(words: Iterable[str]) -> str:
    """``["smi", "jo"]`` → ``"smi:* & jo:*"``, for ``to_tsquery``: every word must
    start a word of the text. Safe by construction: words are letters and digits
    only (:func:`require_words`), so nothing can reach the tsquery syntax."""
    return " & ".join(f"{word}:*" for word in words)


# ------------------------------------------------- organization of derived instances

_SOURCE_SERIES_ORGANIZATION = """
SELECT sibling.orthanc_id, o.name
FROM instances source
JOIN instances sibling ON sibling.series_id = source.series_id
JOIN series se ON se.id = source.series_id
JOIN studies st ON st.id = se.study_id
JOIN organizations o ON o.id = st.organization_id
WHERE source.orthanc_id = %s AND sibling.orthanc_id IS NOT NULL
"""


class SourceOrganizations:
    """Orthanc id of an instance already in the mirror → its organization's name.

    The mirror asks it about an instance that Orthanc made from another one
    (metadata ``AnonymizedFrom``/``ModifiedFrom``): the copy belongs where its
    source belongs, whatever route the copy took into Orthanc. One query answers
    for the whole series of the source (an anonymized series asks about each of its
    source's instances in turn), and answers are kept in a bounded LRU cache.
    Soft-deleted rows count: a source deleted after it was copied still names the
    organization of the copy.

    Thread-safe: the mirror resolves from several fetch threads.
    """

    def __init__(self, connect: Callable[[], Any], capacity: int = 100_000) -> None:
        self._connect = connect
        self._capacity = capacity
        self._known: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, orthanc_id: str) -> str | None:
        with self._lock:
            name = self._known.get(orthanc_id)
            if name is not None:
                self._known.move_to_end(orthanc_id)
                return name
        with self._connect() as conn:
            rows = conn.execute(_SOURCE_SERIES_ORGANIZATION, (orthanc_id,)).fetchall()
        with self._lock:
            for sibling, organization in rows:
                self._known[sibling] = organization
                self._known.move_to_end(sibling)
            while len(self._known) > self._capacity:
                self._known.popitem(last=False)
        return next((organization for sibling, organization in rows if sibling == orthanc_id),
                    None)

