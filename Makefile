# The README's two commands: `make demo` and `make test`. Both work on a fresh machine with
# Python 3.11+, make and apt: they create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint types pytest bench system-deps clean lock lock-upgrade lock-check wheel wheelhouse

# Locked dependencies with hashes (requirements/*.txt, from `make lock`); the package itself
# goes in editable on top, without resolving anything again.
$(STAMP): pyproject.toml requirements/dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# The locks (requirements/*.txt, hashes for every wheel) from pyproject.toml's ranges: daemon.txt
# is what a station installs, demo.txt adds `swapd demo`, dev.txt is `make test`'s. uv keeps every
# pin that still fits the ranges, so `make lock` after editing pyproject changes only what must
# change, and demo/dev take the daemon's versions (what the tests run is what ships);
# `make lock-upgrade` moves every pin to the newest release in range; `make lock-check`
# fails when a lock no longer matches pyproject.toml (tests/test_locks.py checks the same offline).
UV_COMPILE = $(abspath $(BIN))/uv pip compile pyproject.toml --python-version 3.11 --universal \
	--generate-hashes --quiet --custom-compile-command 'make lock'
# $(1): the folder holding pyproject.toml and requirements/; $(2): more uv flags.
define compile_locks
	cd $(1) && $(UV_COMPILE) $(2) --extra solver -o requirements/daemon.txt
	cd $(1) && $(UV_COMPILE) $(2) -c requirements/daemon.txt --extra solver --extra demo \
	  -o requirements/demo.txt
	cd $(1) && $(UV_COMPILE) $(2) -c requirements/daemon.txt --extra solver --extra dev \
	  --extra demo --extra sim -o requirements/dev.txt
endef
$(BIN)/uv: $(STAMP)
	$(BIN)/pip install --quiet 'uv>=0.5'
lock: $(BIN)/uv
	$(call compile_locks,.,)
lock-upgrade: $(BIN)/uv
	$(call compile_locks,.,--upgrade)
lock-check: $(BIN)/uv
	rm -rf build/lock-check && mkdir -p build/lock-check
	cp -r pyproject.toml README.md requirements build/lock-check/
	$(call compile_locks,build/lock-check,)
	diff -ru requirements build/lock-check/requirements && rm -rf build/lock-check

# The wheel (records the commit it is built from) into dist/.
wheel: $(STAMP)
	rm -rf build dist
	$(BIN)/pip wheel --quiet --no-deps -w dist .
	rm -rf build

# Every wheel a station needs, for x86-64 and aarch64 (CPython 3.11), for an offline install:
# systemd/install.sh --wheelhouse wheelhouse
wheelhouse: $(STAMP)
	PYTHON=$(BIN)/python systemd/wheelhouse.sh wheelhouse x86_64 aarch64

system-deps:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto)
	@command -v socat >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat)
	@# The contract tests run on three brokers (tests/brokers.py); the test fixtures start private
	@# instances on free ports. RabbitMQ's package starts its own service too: ours takes no
	@# default port.
	@command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server)
	@ls /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server)

demo: $(STAMP)
	$(BIN)/swapd demo --config config/station.yaml --speed 10

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy edge drivers sim

pytest: $(STAMP) system-deps
	$(BIN)/pytest

test: lint types pytest

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist wheelhouse
