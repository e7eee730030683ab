"""Every route Atrium serves, declared without Orthanc or a database: declaring a
route reads only the app's settings, so a stand-in app carries real ones."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import MagicMock

from atrium.api import (
    annotation_reports,
    annotations,
    audit,
    audit_export,
    health,
    instances,
    jobs,
    me,
    mirror_status,
    models,
    openapi,
    organizations,
    patients,
    predictions,
    recordings,
    slide_annotation_reports,
    slide_viewer,
    slides,
    studies,
    uploads,
    users,
    viewer,
)
from atrium.api import metrics as metrics_routes
from atrium.api.http import Route
from atrium.settings import load_settings

MODULES = [health, mirror_status, metrics_routes, openapi, me, organizations, users, patients,
           studies, jobs, instances, audit, audit_export, models, predictions, annotations,
           annotation_reports, slide_annotation_reports, uploads, slides, recordings,
           slide_viewer, viewer]


def app_routes(data_dir: Path) -> list[Route]:
    app = MagicMock()
    app.settings = load_settings({}, {"ATRIUM_DATA_DIR": str(data_dir),
                                      "ATRIUM_DATABASE_URL": "postgresql://a@127.0.0.1/a"},
                                 cwd=data_dir)
    return [route for module in MODULES for route in module.routes(app)]
