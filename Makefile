# The two commands of the quick start. Each does all of its own set-up.
SHELL := /bin/bash
VENV  := .venv

.PHONY: run cluster test bootstrap bootstrap-test lint bench clean

run: bootstrap
	$(VENV)/bin/atrium run

# Two Orthanc + Atrium nodes behind HAProxy (docs/DEPLOYMENT.md, "Several nodes").
cluster:
	@scripts/bootstrap.sh --cluster
	$(VENV)/bin/atrium run --nodes 2

test: bootstrap-test
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bootstrap:
	@scripts/bootstrap.sh

bootstrap-test:
	@scripts/bootstrap.sh --test

lint: bootstrap-test
	$(VENV)/bin/ruff check plugin tests bench
	$(VENV)/bin/mypy

bench: bootstrap-test
	$(VENV)/bin/python bench/ingest.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
