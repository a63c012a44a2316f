# The two commands of the README. Both set up a fresh clone first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test clean redis-server

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned and installed first so pip takes the local CPU build, never a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/eventrec demo --workdir runs/demo

# The Redis tests need a real redis-server: installed with apt-get when missing and we are root (CI);
# otherwise they are skipped (and fail under CI=true).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server not found: the Redis tests are skipped (apt-get install redis-server)"; fi; }

test: setup redis-server
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
