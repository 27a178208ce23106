# The verbs a newcomer types. Every target sets up .venv itself when needed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CC ?= cc
SHIM_DIR := src/mechasandbox/runner/shim
SHIM := $(SHIM_DIR)/mechasandbox-exec
AGENT := $(SHIM_DIR)/mechasandbox-agent

.PHONY: install shim demo test test-security lint typecheck ci bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	# An editable install leaves the package's own modules uncompiled: compile them now, or
	# a CLI call compiles them all again whenever the interpreter may not write bytecode.
	$(PY) -m compileall -q src
	touch $(STAMP)

install: $(STAMP) shim

# The exec shim (see src/mechasandbox/runner/native.py): Linux only and optional; runs are
# faster with it. Without a working C compiler it is skipped with a note, and runs take the
# forked Python way (CI requires it: MECHASANDBOX_REQUIRE_SHIM=1 fails the tests without).
shim:
	@if [ "$$(uname -s)" != Linux ]; then \
	  true; \
	elif ! command -v $(CC) >/dev/null 2>&1; then \
	  echo "note: no C compiler ($(CC)): the exec shim is not built; runs take the slower, forked way"; \
	elif ! $(MAKE) --no-print-directory $(SHIM); then \
	  echo "note: the exec shim did not build (see above); runs take the slower, forked way"; \
	fi
	@if [ "$$(uname -s)" = Linux ] && command -v $(CC) >/dev/null 2>&1 && \
	  ! $(MAKE) --no-print-directory $(AGENT); then \
	  echo "note: the session agent did not build (see above; it needs a static libc, Debian: libc6-dev): no sessions on bubblewrap and landlock"; \
	fi

$(SHIM): $(SHIM_DIR)/exec_shim.c $(SHIM_DIR)/records.h
	$(CC) -std=c11 -O2 -Wall -Wextra -Werror -o $@.tmp $<
	mv $@.tmp $@

# The session agent (docs/sessions.md): static, so that it runs in any sandbox or image.
$(AGENT): $(SHIM_DIR)/session_agent.c $(SHIM_DIR)/records.h
	$(CC) -std=c11 -O2 -Wall -Wextra -Werror -static -o $@.tmp $<
	mv $@.tmp $@

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

test: install
	$(PY) -m pytest

# The security and contract suites alone: what CI also runs as an ordinary user
# (scripts/ci-unprivileged.sh). Backends missing here skip with the reason, as in `make test`.
SECURITY_TESTS ?= $(sort $(wildcard tests/backends/test_*security*.py \
	tests/backends/test_contract_*.py)) tests/backends/test_docker.py \
	tests/backends/test_podman.py tests/backends/test_process_limits.py \
	tests/backends/test_oci_hardening.py tests/integration/test_hostile_project.py \
	tests/integration/test_verify.py

test-security: install
	MECHASANDBOX_REQUIRE_EXERCISED=1 $(PY) -m pytest $(SECURITY_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

ci: lint typecheck test

bench: install
	PYTHONPATH=src $(PY) bench/suite.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis $(SHIM) $(AGENT)
