"""The pattern every resource module follows, shown on a small "notes" resource.

A resource module has three parts, in this order:

1. its schemas, built with :mod:`atrium.api.schema` (objects refuse unknown fields);
2. its ordering for lists, a :class:`~atrium.api.pagination.Keyset`;
3. ``routes(app) -> list[Route]``: handlers as closures over ``app``, and the
   table of routes declaring each one's contract (auth, query, body, responses).

Handlers never parse or check input: ``request.params``, ``request.args`` and
``request.json`` arrive validated and typed. They raise an :mod:`atrium.errors`
exception for anything else (404, 409) and answer with ``json_response``.

Here the "database" is a list so that the test runs without PostgreSQL; a real
module runs the SQL of :class:`Keyset` (see :mod:`atrium.api.pagination`).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from atrium.api.http import (
    AUTHENTICATED,
    Reply,
    Request,
    Response,
    Route,
    Router,
    json_response,
    no_content,
)
from atrium.api.pagination import PAGE_PARAMETERS, Keyset, page_schema
from atrium.api.schema import array, boolean, date_time, enum, obj, string
from atrium.api.schema import uuid as uuid_schema
from atrium.errors import Conflict, NotFound

# ----------------------------------------------------------------- the resource

NOTE_FIELDS = {
    "title": string(min_length=1, max_length=200),
    "body": string(max_length=10_000),
    "kind": enum("finding", "todo"),
    "pinned": boolean(),
}
NEW_NOTE = obj(NOTE_FIELDS, required=["title", "kind"])
NOTE_CHANGES = obj(NOTE_FIELDS, min_properties=1)
NOTE = obj({**NOTE_FIELDS, "id": uuid_schema(), "created_at": date_time()},
           required=["id", "title", "kind", "created_at"])
NOTE_SEARCH = obj({**PAGE_PARAMETERS, "kind": enum("finding", "todo"),
                   "ids": array(uuid_schema(), max_items=100),
                   "created_from": date_time(), "q": string(max_length=200)})

NOTES_ORDER = Keyset("notes", ("created_at", "id"))


@dataclass
class NotesApp:
    """What ``routes`` closes over; in Atrium this is the ``Atrium`` application."""

    notes: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)
    clock: dt.datetime = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)

    def tick(self) -> dt.datetime:
        self.clock += dt.timedelta(seconds=1)
        return self.clock


def routes(app: NotesApp) -> list[Route]:
    def find(note_id: uuid.UUID) -> dict[str, Any]:
        note = app.notes.get(note_id)
        if note is None:
            raise NotFound(f"No note {note_id}")
        return note

    def list_notes(request: Request) -> Response:
        args = request.args
        wanted = NOTES_ORDER.request(args)
        rows = sorted(app.notes.values(), key=lambda n: (n["created_at"], n["id"]),
                      reverse=True)
        rows = [n for n in rows
                if (wanted.after is None or (n["created_at"], n["id"]) < wanted.after)
                and args.get("kind", n["kind"]) == n["kind"]
                and (not args.get("ids") or n["id"] in args["ids"])
                and n["created_at"] >= args.get("created_from", n["created_at"])
                and args.get("q", "") in n["title"]]
        return json_response(NOTES_ORDER.page(rows[:wanted.fetch], wanted.limit,
                                              key=lambda n: (n["created_at"], n["id"])))

    def create_note(request: Request) -> Response:
        if any(n["title"] == request.json["title"] for n in app.notes.values()):
            raise Conflict("A note with this title exists; choose another title.")
        note = {**request.json, "id": uuid.uuid4(), "created_at": app.tick()}
        app.notes[note["id"]] = note
        return json_response(note, status=201,
                             headers={"Location": f"/api/notes/{note['id']}"})

    def get_note(request: Request) -> Response:
        return json_response(find(request.params["id"]))

    def update_note(request: Request) -> Response:
        note = find(request.params["id"])
        note.update(request.json)
        return json_response(note)

    def delete_note(request: Request) -> Response:
        app.notes.pop(find(request.params["id"])["id"])
        return no_content()

    tags = ("notes",)
    return [
        Route("GET", "/api/notes", list_notes, summary="Search notes", tags=tags,
              auth=AUTHENTICATED, query=NOTE_SEARCH,
              responses={200: Reply("A page of notes", page_schema(NOTE))}),
        Route("POST", "/api/notes", create_note, summary="Create a note", tags=tags,
              auth=("clinician", "researcher"), body=NEW_NOTE,
              responses={201: Reply("The new note", NOTE), 409: Reply("The title is taken")}),
        Route("GET", "/api/notes/{id:uuid}", get_note, summary="Read a note", tags=tags,
              auth=AUTHENTICATED, responses={200: Reply("The note", NOTE)}),
        Route("PATCH", "/api/notes/{id:uuid}", update_note, summary="Change a note",
              tags=tags, auth=("clinician",), body=NOTE_CHANGES,
              responses={200: Reply("The changed note", NOTE)}),
        Route("DELETE", "/api/notes/{id:uuid}", delete_note, summary="Delete a note",
              tags=tags, auth=("admin",), responses={204: Reply("Deleted")}),
    ]


# ------------------------------------------------------------------------- tests

JSON_HEADERS = {"content-type": "application/json"}


def call(router: Router, method: str, path: str, body: Any = None,
         **query: str) -> tuple[int, Any]:
    raw = b"" if body is None else json.dumps(body).encode()
    response = router.handle(Request(method, path, query=query,
                                      headers=JSON_HEADERS if raw else {}, body=raw))
    return response.status, json.loads(response.body) if response.body else None


def make_router() -> Router:
    return Router(routes(NotesApp()))


def test_a_note_is_created_read_changed_and_deleted() -> None:
    router = make_router()
    status, created = call(router, "POST", "/api/notes", {"title": "Nodule", "kind": "finding"})
    assert status == 201
    assert created["created_at"] == "2024-05-01T12:00:01+00:00"
    path = f"/api/notes/{created['id']}"
    assert call(router, "GET", path) == (200, created)
    status, changed = call(router, "PATCH", path, {"pinned": True})
    assert (status, changed["pinned"]) == (200, True)
    assert call(router, "DELETE", path) == (204, None)
    assert call(router, "GET", path)[0] == 404


def test_the_list_pages_through_every_note_once() -> None:
    router = make_router()
    for number in range(7):
        call(router, "POST", "/api/notes", {"title": f"note {number}", "kind": "todo"})
    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        status, page = call(router, "GET", "/api/notes", **query)
        assert status == 200 and len(page["items"]) <= 3
        seen += [note["title"] for note in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"note {n}" for n in reversed(range(7))]


def test_search_parameters_arrive_typed() -> None:
    router = make_router()
    _, first = call(router, "POST", "/api/notes", {"title": "a", "kind": "todo"})
    call(router, "POST", "/api/notes", {"title": "b", "kind": "finding"})
    status, page = call(router, "GET", "/api/notes", kind="todo", ids=first["id"],
                        created_from="2024-05-01T12:00:00Z")
    assert status == 200
    assert [note["title"] for note in page["items"]] == ["a"]


def test_invalid_input_is_a_400_naming_each_field() -> None:
    router = make_router()
    status, problem = call(router, "POST", "/api/notes",
                           {"title": "", "kind": "memo", "colour": "red"})
    assert status == 400
    assert {(e["field"], e["in"]) for e in problem["errors"]} == {
        ("title", "body"), ("kind", "body"), ("colour", "body")}
    assert call(router, "GET", "/api/notes/not-a-uuid")[0] == 400
    assert call(router, "GET", "/api/notes", limit="1001")[0] == 400
    assert call(router, "PATCH", f"/api/notes/{uuid.uuid4()}", {})[0] == 400


def test_a_duplicate_title_is_a_409_problem() -> None:
    router = make_router()
    call(router, "POST", "/api/notes", {"title": "once", "kind": "todo"})
    status, problem = call(router, "POST", "/api/notes", {"title": "once", "kind": "todo"})
    assert status == 409 and "another title" in problem["detail"]
