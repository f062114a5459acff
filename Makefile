# The two commands of the README: `make test` and `make run` (the MQTT service). Both set
# up what they need on a fresh machine: the virtualenv, the project, and the redis-server
# and mosquitto binaries (Debian packages, installed when missing and running as root).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := redis-server mosquitto alsa-utils
SERVER_BINARIES := redis-server mosquitto arecord aplay

.PHONY: test run lint typecheck unit servers bench-cache bench-intents bench-speech bench-generate bench-e2e bench-satellite bench-understanding clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

# $(call debian,BINARIES,PACKAGES): install the Debian PACKAGES when one of BINARIES is
# missing (as root, with apt-get), else say which to install and fail.
define debian
	@missing=""; for b in $(1); do \
	    command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	        echo "installing$$missing (Debian packages: $(2))"; \
	        apt-get update -qq && apt-get install -y -qq --no-install-recommends $(2) >/dev/null; \
	    else \
	        echo "error: missing$$missing. Install the Debian packages: sudo apt-get install $(2)" >&2; \
	        exit 1; \
	    fi; \
	fi
endef

# redis-server and mosquitto are real servers in the tests, and the satellite speaks through
# alsa-utils (arecord, aplay): install them when missing.
servers:
	$(call debian,$(SERVER_BINARIES),$(APT_PACKAGES))

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) servers
	PATH="$$PATH:/usr/sbin" $(BIN)/pytest

test: lint typecheck unit

# The service: a private mosquitto on loopback when none listens there (the Debian package
# `servers` installs), Redis used when it answers.
run: $(STAMP) servers
	PATH="$$PATH:/usr/sbin" $(BIN)/assistant serve

bench-cache: $(STAMP) servers
	PATH="$$PATH:/usr/sbin" $(BIN)/python bench/bench_cache.py

bench-intents: $(STAMP) servers
	PATH="$$PATH:/usr/sbin" $(BIN)/python bench/bench_intents.py

bench-speech: $(STAMP) servers
	PATH="$$PATH:/usr/sbin" $(BIN)/python bench/bench_speech.py

bench-generate: $(STAMP) servers
	PATH="$$PATH:/usr/sbin" $(BIN)/python bench/bench_generate.py

bench-e2e: $(STAMP) servers
	PATH="$$PATH:/usr/sbin" $(BIN)/python bench/bench_e2e.py

bench-satellite: $(STAMP) servers
	PATH="$$PATH:/usr/sbin" $(BIN)/python bench/bench_satellite.py

# Requests spoken by voices the assistant never answers with: espeak-ng and flite (Debian
# packages, installed when missing and running as root).
BENCH_VOICES := espeak-ng flite
bench-understanding: $(STAMP)
	$(call debian,$(BENCH_VOICES),$(BENCH_VOICES))
	$(BIN)/python bench/bench_understanding.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
