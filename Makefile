# The README's two commands: `make demo` and `make test`. Both work on a fresh machine with
# Python 3.11+, make and apt: they create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint types pytest bench system-deps clean lock wheel wheelhouse

# Locked dependencies with hashes (requirements/*.txt, from `make lock`); the package itself
# goes in editable on top, without resolving anything again.
$(STAMP): pyproject.toml requirements/dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# Refresh the locks from pyproject.toml's ranges (daemon: what a station installs; demo: plus
# `swapd demo`; dev: make test).
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --python-version 3.11 --universal --generate-hashes --quiet
lock: $(STAMP)
	$(BIN)/pip install --quiet 'uv>=0.5'
	$(UV_COMPILE) --extra solver -o requirements/daemon.txt
	$(UV_COMPILE) --extra solver --extra demo -o requirements/demo.txt
	$(UV_COMPILE) --extra solver --extra dev --extra demo --extra sim -o requirements/dev.txt

# The wheel (records the commit it is built from) into dist/.
wheel: $(STAMP)
	rm -rf build dist
	$(BIN)/pip wheel --quiet --no-deps -w dist .
	rm -rf build

# Every wheel a station needs, for x86-64 and aarch64 (CPython 3.11), for an offline install:
# systemd/install.sh --wheelhouse wheelhouse
wheelhouse: wheel
	rm -rf wheelhouse && mkdir -p wheelhouse
	for plat in manylinux2014_x86_64 manylinux2014_aarch64; do \
	  $(BIN)/pip download --quiet --require-hashes -r requirements/daemon.txt -d wheelhouse \
	    --only-binary=:all: --platform $$plat --python-version 3.11 --implementation cp || exit 1; \
	done
	cp dist/*.whl wheelhouse/
	cp requirements/daemon.txt wheelhouse/

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
