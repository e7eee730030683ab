# syntax=docker/dockerfile:1
#
# Atrium's production image: Orthanc from the orthancteam image, with Atrium baked
# in as the script its Python plugin loads. docker-compose.yml builds and runs it;
# docs/DEPLOYMENT.md explains the stack.
#
# The tag is pinned, never `latest`, so that a rebuild cannot silently change
# Orthanc underneath the mirror. 26.4.2 ships Orthanc 1.12.11 (Python plugin 7.1,
# DICOMweb 1.23, PostgreSQL plugins 10.1) on Ubuntu with Python 3.13.
# Do not go below Orthanc 1.12.11: earlier releases carry the 2026 DICOM-parser
# CVEs, reachable by anyone who can send DICOM.
FROM orthancteam/orthanc:26.4.2

# The image runs its entrypoint as root by default; we need root only to build.
USER root

# `python3 -m venv` needs ensurepip, which the image's python3 lacks.
RUN export DEBIAN_FRONTEND=noninteractive \
    && apt-get update \
    && apt-get install --assume-yes --no-install-recommends python3-venv \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/atrium

# Packaging metadata first: the dependency layer below is then rebuilt only when
# it changes. README.md is read by setup.cfg for the long description.
COPY setup.cfg pyproject.toml README.md LICENSE ./
COPY plugin/ ./plugin/
COPY sql/ ./sql/
COPY orthanc-config/ ./orthanc-config/

# The venv must come from the system python3: libOrthancPython.so embeds that
# interpreter, and the entry script adds this venv's site-packages to its sys.path
# (ATRIUM_VENV below). A venv made from any other Python would hold wheels built
# for the wrong ABI. The install also provides the `atrium` command
# (`docker compose exec orthanc atrium migrate`).
RUN python3 -m venv /opt/atrium/.venv \
    && /opt/atrium/.venv/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/atrium/.venv/bin/pip install --no-cache-dir /opt/atrium \
    && /opt/atrium/.venv/bin/python -c "import atrium.settings, psycopg, minio, pydicom" \
    && ln -s /opt/atrium/.venv/bin/atrium /usr/local/bin/atrium

# Orthanc's configuration: the image's entrypoint merges every /etc/orthanc/*.json
# with the ORTHANC__* environment variables (docker-compose.yml sets the index
# database and network access there), then starts Orthanc.
COPY orthanc-config/orthanc.json /etc/orthanc/atrium.json

# Storage and Atrium's data directory exist in the image, owned by the unprivileged
# `orthanc` user, so that fresh named volumes mounted there inherit that owner.
RUN install -d -o orthanc -g orthanc /var/lib/orthanc/db /var/lib/orthanc/atrium

# PythonScript enables the Python plugin in the orthancteam image. The script is
# the checkout's copy (next to the `atrium` package it imports); the venv supplies
# the dependencies. ATRIUM_SQL_DIR points the migration runner at the migrations
# shipped here, applied automatically at start-up.
# The DICOMweb plugin answers under a private root only Atrium reaches; Atrium
# serves /dicom-web/ itself, scoped to each caller (docs/SECURITY.md).
ENV ORTHANC__PYTHON_SCRIPT=/opt/atrium/plugin/atrium_entry.py \
    ORTHANC__DICOM_WEB__ROOT=/atrium-dicomweb-plugin/ \
    ATRIUM_VENV=/opt/atrium/.venv \
    ATRIUM_SQL_DIR=/opt/atrium/sql \
    ATRIUM_DATA_DIR=/var/lib/orthanc/atrium \
    NUMBA_CACHE_DIR=/var/lib/orthanc/atrium/numba-cache \
    PYTHONDONTWRITEBYTECODE=1
# The signal codec's compiled loops are cached in the data volume: compiled once
# per host (about 7 s of CPU, on a thread of their own at start), not per container.
# The venv is deliberately not put first on PATH: the image's entrypoint runs its
# configuration generator with the system python3 and the packages installed there.

# The image's entrypoint is written to run as its `orthanc` user (uid 999): it only
# writes to /tmp, /etc/hostid and the plugin folder, all owned by that user.
USER orthanc
WORKDIR /var/lib/orthanc

# 8042: HTTP (Atrium's /api, DICOMweb, Orthanc's REST API); 4242: DICOM.
EXPOSE 8042 4242

# /api/health answers 200 only when PostgreSQL and object storage are reachable and
# the mirror is keeping up, so "healthy" means Atrium works, not just that Orthanc
# is up. The image has no curl; its python3 has urllib.
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://localhost:8042/api/health', timeout=4).status == 200 else 1)"]
