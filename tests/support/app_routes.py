"""Every route Atrium serves, declared without Orthanc or a database: declaring a
route reads only the app's settings, so a stand-in app carries real ones."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import MagicMock

from atrium.api.http import Route
from atrium.app import api_routes
from atrium.settings import load_settings


def app_routes(data_dir: Path) -> list[Route]:
    app = MagicMock()
    app.settings = load_settings({}, {"ATRIUM_DATA_DIR": str(data_dir),
                                      "ATRIUM_DATABASE_URL": "postgresql://a@127.0.0.1/a"},
                                 cwd=data_dir)
    return api_routes(app)
