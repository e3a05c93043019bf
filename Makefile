# The two entry points the README promises. Both create ./.venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-deps lint bench lock audit screenshot

# The runtime dependencies come from the hash-checked lock file, the dev tools from pyproject.
$(BIN)/syncd: pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/syncd

install: $(BIN)/syncd

demo: install
	$(BIN)/syncd demo

lint: install
	$(BIN)/ruff check syncd tests bench
	$(BIN)/ruff format --check syncd tests bench
	$(BIN)/mypy

# What the tests need beyond the venv, from Debian's packages (as root, non-interactive), installed
# only when missing: the browser of tests/test_dashboard.py, and the PostgreSQL and Redis server
# binaries the tests start private instances of (never the machine's own servers).
test-deps:
	@missing=""; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		missing="$$missing postgresql"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		echo "make test-deps: installing$$missing"; \
		apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# Three workers, one test file each at a time (--dist loadfile keeps a module's fixtures in one
# process): the suite spends most of its time waiting on real servers, files and clocks, so it
# takes half as long on two cores.
test: lint test-deps
	$(BIN)/pytest -n 3 --dist loadfile

# Regenerate docs/img/dashboard.png: the browser test's page against a real daemon and emulator.
screenshot: install test-deps
	SYNCD_SCREENSHOT=docs/img/dashboard.png $(BIN)/pytest -q tests/test_dashboard.py -k dropped_file

bench: install
	$(BIN)/python -m bench

# Re-pin the runtime dependencies (after editing [project].dependencies).
lock: install
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url \
		--no-emit-find-links --no-header -o requirements.lock.new pyproject.toml
	grep '^#' requirements.lock > requirements.lock.tmp
	cat requirements.lock.new >> requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock && rm requirements.lock.new

# Known vulnerabilities in the locked dependencies (asks PyPI's advisory data: needs network).
audit: install
	$(BIN)/pip install --quiet pip-audit
	$(BIN)/pip-audit --require-hashes --disable-pip -r requirements.lock
