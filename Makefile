# The two commands of the README: `make test` and `make run` (the MQTT service). Both set
# up what they need on a fresh machine: the virtualenv, the project, and the redis-server
# and mosquitto binaries (Debian packages, installed when missing and running as root).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := redis-server mosquitto alsa-utils systemd
SERVER_BINARIES := redis-server mosquitto arecord aplay systemd-analyze
# The tests alone: the console is driven in a real headless chromium.
TEST_PACKAGES := chromium chromium-driver
TEST_BINARIES := chromium chromedriver

.PHONY: test run lint typecheck unit servers test-tools install-systemd bench-cache bench-intents bench-speech bench-generate bench-e2e bench-satellite bench-understanding bench-peers test-faults fuzz clean

# On a Pi with the AI HAT+ 2: VENV_FLAGS=--system-site-packages, so that hailo_platform
# (apt's hailo-h10-all) is seen.
VENV_FLAGS ?=
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
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

# redis-server and mosquitto are real servers in the tests, the satellite speaks through
# alsa-utils (arecord, aplay), the units are checked by systemd-analyze: install them when
# missing. The tests also need chromium (test-tools); a Pi does not.
servers:
	$(call debian,$(SERVER_BINARIES),$(APT_PACKAGES))

test-tools:
	$(call debian,$(TEST_BINARIES),$(TEST_PACKAGES))

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) servers test-tools
	PATH="$$PATH:/usr/sbin" $(BIN)/pytest

test: lint typecheck unit

# The service broken while requests stream through it (Redis, the broker, the service itself,
# the disk tier's filesystem and file), each phase FAULT_SECONDS long; `make test` runs the
# same tests with phases of 3 s. As root: the full disk is a small tmpfs the test mounts.
FAULT_SECONDS ?= 20
test-faults: $(STAMP) servers
	PATH="$$PATH:/usr/sbin" FAULT_SECONDS=$(FAULT_SECONDS) $(BIN)/pytest --timeout 900 tests/test_service_faults.py

# Coverage-guided fuzzing (atheris) of the request decoder, the Wyoming reader, the WAV
# reader and the template loader, FUZZ_SECONDS each; a crash stops it with its input saved.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := request wyoming wav template
fuzz: $(STAMP)
	$(BIN)/pip install --quiet -e '.[fuzz]'
	@for target in $(FUZZ_TARGETS); do \
	    echo "fuzzing $$target for $(FUZZ_SECONDS) s"; \
	    $(BIN)/python -m tests.fuzz_atheris $$target -max_total_time=$(FUZZ_SECONDS) \
	        -rss_limit_mb=2048 -artifact_prefix=$(VENV)/fuzz-$$target- \
	        > $(VENV)/fuzz-$$target.log 2>&1 || { tail -40 $(VENV)/fuzz-$$target.log; exit 1; }; \
	    tail -1 $(VENV)/fuzz-$$target.log; \
	done

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

bench-peers: $(STAMP) servers
	PATH="$$PATH:/usr/sbin" $(BIN)/python -W ignore bench/bench_peers.py

bench-load: $(STAMP) servers
	PATH="$$PATH:/usr/sbin" $(BIN)/python bench/bench_load.py

# Requests spoken by voices the assistant never answers with: espeak-ng and flite (Debian
# packages, installed when missing and running as root).
BENCH_VOICES := espeak-ng flite
bench-understanding: $(STAMP)
	$(call debian,$(BENCH_VOICES),$(BENCH_VOICES))
	$(BIN)/python bench/bench_understanding.py

# Installs the service for good, as root, from a checkout at /opt/assistant (README,
# "Running on a Pi"). Never run by the tests. What exists already is kept: the settings,
# Redis's password, the master key.
install-systemd: $(STAMP) servers
	@test "$$(id -u)" = 0 || { echo "error: run as root" >&2; exit 1; }
	@test "$(CURDIR)" = /opt/assistant || { echo "error: the units run /opt/assistant; check out there" >&2; exit 1; }
	id -u assistant >/dev/null 2>&1 || useradd --system --home-dir /var/lib/assistant --shell /usr/sbin/nologin assistant
	id -u assistant-satellite >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin --groups audio assistant-satellite
	install -d -m 0755 /etc/assistant /etc/credstore.encrypted
	test -f /etc/mosquitto/assistant.passwd || install -m 0640 -o root -g mosquitto /dev/null /etc/mosquitto/assistant.passwd
	# Redis's account: a random password in its ACL file and in the assistant's settings.
	test -f /etc/assistant/redis-password || { head -c 24 /dev/urandom | base64 | tr -d '/+=\n' > /etc/assistant/redis-password; chmod 0600 /etc/assistant/redis-password; }
	printf 'user default off\nuser assistant on >%s ~* &* +@all -@admin\n' "$$(cat /etc/assistant/redis-password)" > /etc/assistant/redis-users.acl
	# The assistant's MQTT account: a random password, hashed in place (never on a command line).
	test -f /etc/assistant/mqtt-password || { head -c 24 /dev/urandom | base64 | tr -d '/+=\n' > /etc/assistant/mqtt-password; chmod 0600 /etc/assistant/mqtt-password; \
	    printf 'assistant:%s\n' "$$(cat /etc/assistant/mqtt-password)" >> /etc/mosquitto/assistant.passwd; \
	    mosquitto_passwd -U /etc/mosquitto/assistant.passwd; }
	test -f /etc/assistant/assistant.toml || \
	    sed -e "s|^url = \"redis://127.0.0.1:6379/0\"|url = \"redis://assistant:$$(cat /etc/assistant/redis-password)@127.0.0.1:6379/0\"|" \
	        -e "s|^# password = \"...\" .*|password = \"$$(cat /etc/assistant/mqtt-password)\"|" \
	        -e 's|^path = "var/cache.db"|path = "/var/lib/assistant/cache.db"|' \
	        -e 's|^file = "var/master.key"|file = "/var/lib/assistant/master.key"|' \
	        -e 's|^create = true|create = false|' \
	        -e 's|^folder = "intents"|folder = "/var/lib/assistant/intents"|' \
	        -e 's|^entities_file = "configs/entities.yaml"|entities_file = "/etc/assistant/entities.yaml"|' \
	        -e 's|^embedded = "auto"|embedded = "never"|' configs/assistant.toml > /etc/assistant/assistant.toml
	test -f /etc/assistant/satellite.toml || install -m 0644 configs/satellite.toml /etc/assistant/satellite.toml
	test -f /etc/assistant/entities.yaml || install -m 0644 configs/entities.yaml /etc/assistant/entities.yaml
	# The templates where the service may write them (the console edits them).
	install -d -m 0700 -o assistant -g assistant /var/lib/assistant
	test -d /var/lib/assistant/intents || { cp -r intents /var/lib/assistant/intents && chown -R assistant:assistant /var/lib/assistant/intents; }
	chown root:assistant /etc/assistant/assistant.toml && chmod 0640 /etc/assistant/assistant.toml
	chown root:redis /etc/assistant/redis-users.acl && chmod 0640 /etc/assistant/redis-users.acl
	install -m 0644 configs/redis.conf /etc/assistant/redis.conf
	test -f /etc/mosquitto/mosquitto.conf.orig || cp /etc/mosquitto/mosquitto.conf /etc/mosquitto/mosquitto.conf.orig
	install -m 0644 configs/mosquitto.conf /etc/mosquitto/mosquitto.conf
	install -m 0644 configs/mosquitto.acl /etc/mosquitto/assistant.acl
	# mosquitto on core 0 with Redis: the models keep cores 1-3.
	install -d /etc/systemd/system/mosquitto.service.d
	printf '[Service]\nCPUAffinity=0\n' > /etc/systemd/system/mosquitto.service.d/assistant.conf
	test -f /etc/credstore.encrypted/assistant-master-key || \
	    printf '1:%s\n' "$$(head -c 32 /dev/urandom | base64)" | \
	    systemd-creds encrypt --name=assistant-master-key - /etc/credstore.encrypted/assistant-master-key
	install -m 0644 systemd/assistant*.service systemd/assistant*.timer /etc/systemd/system/
	systemctl daemon-reload
	systemctl disable --now redis-server.service 2>/dev/null || true  # Debian's, on disk and :6379
	systemctl restart mosquitto.service
	systemctl enable --now assistant-redis.service assistant.service assistant-cache-gc.timer assistant-warm.timer
	@echo "installed: add MQTT accounts with mosquitto_passwd (README), then systemctl status assistant"

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
