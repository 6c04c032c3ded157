# `make run` and `make test` work on a fresh machine: they create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= $(CURDIR)/state/run

.PHONY: run test lint typecheck unit sysdeps schema clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# Debian packages the test tiers drive as real peers (installed only when missing; needs root).
sysdeps:
	@bash scripts/install-sysdeps.sh

run: $(STAMP)
	@mkdir -p $(RUN_DIR)
	$(BIN)/pacslb profile mckesson --variant proxy --state-dir $(RUN_DIR) \
	  --webui-listen 127.0.0.1:9443 \
	  --vip dicom=127.0.0.30 --rip dicom=127.0.1.1,127.0.1.2 \
	  --vip web=127.0.0.31 --rip web=127.0.1.3,127.0.1.4 \
	  --vip manager=127.0.0.40 --rip manager=127.0.1.5,127.0.1.6 \
	  --vip crv=127.0.0.41 --rip crv=127.0.1.7,127.0.1.8 \
	  --vip cardiology=127.0.0.50 --rip cardiology=127.0.1.9,127.0.1.10 \
	  -o $(RUN_DIR)/pacslb.yaml
	$(BIN)/pacslb check $(RUN_DIR)/pacslb.yaml
	$(BIN)/pacslb plan $(RUN_DIR)/pacslb.yaml --state-dir $(RUN_DIR)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/golden

test: $(STAMP) sysdeps lint typecheck
	$(BIN)/pytest tests

schema: $(STAMP)
	$(BIN)/pacslb schema > docs/schema.json

clean:
	rm -rf $(VENV) state .mypy_cache .ruff_cache .pytest_cache
