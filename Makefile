# `make run` and `make test` work on a fresh machine: they create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= $(CURDIR)/state/run

.PHONY: run test lint typecheck unit sysdeps schema docs-config docs-check clean deb

# setup.py builds the C modules (the head parsers' and the DICOM relay's fast paths): a change
# to one reinstalls.
$(STAMP): pyproject.toml setup.py src/pacslb/core/_headfast.c src/pacslb/proxy/_pdufast.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# Debian packages the test tiers drive as real peers (installed only when missing; needs root).
sysdeps:
	@bash scripts/install-sysdeps.sh

run: $(STAMP)
	$(BIN)/pacslb demo --state-dir $(RUN_DIR)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

# Two test processes: most tests wait on timers (health checks, VRRP adverts, takeovers), so two
# at a time halve the wall time on two cores. --dist loadfile keeps each module in one process:
# a module's fixed loopback addresses and its module-scoped namespaces are never shared.
test: $(STAMP) sysdeps lint typecheck
	$(BIN)/pytest tests -n 2 --dist loadfile

# pacslb_<version>_amd64.deb: a venv under /opt/pacslb, pacslb.service (docs/install.md).
deb: $(STAMP)
	PIP="$(BIN)/python -m pip" bash packaging/deb/build-deb.sh $(CURDIR)

schema: $(STAMP)
	$(BIN)/pacslb schema > docs/schema.json

# The configuration reference, written from the config models (a test fails when it is stale).
docs-config: $(STAMP)
	$(BIN)/python scripts/config_reference.py > docs/configuration.md

# Run every command the docs show (beside a demo in a network namespace when root) and compare
# the output with what the docs print; tests/integration/test_docs_check.py runs it too.
docs-check: $(STAMP)
	$(BIN)/python scripts/docs_check.py

clean:
	rm -rf $(VENV) state .mypy_cache .ruff_cache .pytest_cache
