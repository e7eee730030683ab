#!/bin/bash
# Runs once, when the PostgreSQL volume is empty (docker-entrypoint-initdb.d).
# Creates Orthanc's index database and Atrium's mirror database, each owned by its
# own login role, so that neither service can read or alter the other's tables.
# Passwords come from the environment and reach SQL as psql variables (:'name'),
# which quotes them: no password character can break out of the statement.
set -euo pipefail

: "${PG_ORTHANC_USER:?PG_ORTHANC_USER is not set}"
: "${PG_ORTHANC_PASSWORD:?PG_ORTHANC_PASSWORD is not set}"
: "${PG_ATRIUM_USER:?PG_ATRIUM_USER is not set}"
: "${PG_ATRIUM_PASSWORD:?PG_ATRIUM_PASSWORD is not set}"
: "${PG_ATRIUM_APP_PASSWORD:?PG_ATRIUM_APP_PASSWORD is not set}"

psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v orthanc_user="$PG_ORTHANC_USER" -v orthanc_password="$PG_ORTHANC_PASSWORD" \
    -v atrium_user="$PG_ATRIUM_USER" -v atrium_password="$PG_ATRIUM_PASSWORD" \
    -v app_password="$PG_ATRIUM_APP_PASSWORD" <<'SQL'
CREATE ROLE :"orthanc_user" LOGIN PASSWORD :'orthanc_password';
CREATE DATABASE orthanc OWNER :"orthanc_user";
REVOKE ALL ON DATABASE orthanc FROM PUBLIC;

CREATE ROLE :"atrium_user" LOGIN PASSWORD :'atrium_password';
-- Migrations read shared_preload_libraries to decide whether TimescaleDB is usable;
-- that setting is visible to superusers and this role only.
GRANT pg_read_all_settings TO :"atrium_user";
CREATE DATABASE atrium OWNER :"atrium_user";
REVOKE ALL ON DATABASE atrium FROM PUBLIC;
-- The role Atrium runs as: neither superuser nor owner, so that audit rows are
-- beyond its reach; Atrium grants it the tables after each migration.
CREATE ROLE atrium_app LOGIN PASSWORD :'app_password';
GRANT CONNECT ON DATABASE atrium TO atrium_app;

-- TimescaleDB is not a trusted extension: only a superuser may create it. Created
-- here, Atrium's migrations find it and build hypertables instead of falling back
-- to native monthly partitions.
\connect atrium
CREATE EXTENSION IF NOT EXISTS timescaledb;
SQL
