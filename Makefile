# vila-tf. Two commands on a fresh machine: `make export` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VILA_DIR ?=
OUT ?= exported
VERSION ?= 1
DTYPE ?= float32
COMPUTE_DTYPE ?= float32
# TARGET_TF=X.Y: an export that runs on TensorFlow / TF Serving X.Y and newer (docs/compatibility.md).
TARGET_TF ?=

.PHONY: venv test test-slow export bench clean

# The virtualenv is (re)built whenever the dependency files change; constraints.txt pins a set
# known to work together.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[export,dev,beam,litert]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# Exports every released checkpoint under VILA_DIR, or the full-size demo model without it.
export: $(STAMP)
	$(PY) -m export all --vila-dir '$(VILA_DIR)' --out '$(OUT)' --version $(VERSION) --dtype $(DTYPE) \
	  --compute-dtype $(COMPUTE_DTYPE) $(if $(TARGET_TF),--target-tensorflow $(TARGET_TF))

# Exports the full-size demo model (float32 and bfloat16, in a temporary folder) and times it
# against native JAX; prints the table and writes benchmarks/results.json (~20 min on 2 cores);
# then one more full-size export's peak memory (benchmarks/export_memory_latest.json, ~5 min) and
# the bfloat16-compute accuracy on the fixtures' goldens (docs/accelerators.md).
# BENCH_ARGS=--quick for a shorter run.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) benchmarks/bench.py --out benchmarks/results.json $(BENCH_ARGS)
	$(PY) benchmarks/export_memory.py --out benchmarks/export_memory_latest.json
	$(PY) benchmarks/bfloat16_accuracy.py --out benchmarks/bfloat16_accuracy.json

# The streaming pipeline on 200 camera-size JPEGs: decode-only, model-only, taking turns and
# overlapped rates side by side, and `vila-tf score` end to end (docs/streaming.md). A tiny export
# by default; PIPELINE_ARGS='--full --out benchmarks/pipeline_results_full.json' for the full-size demo.
PIPELINE_ARGS ?=
.PHONY: bench-pipeline
bench-pipeline: $(STAMP)
	$(PY) benchmarks/pipeline.py --out benchmarks/pipeline_results_tiny.json $(PIPELINE_ARGS)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache

# Which TensorFlow releases run which export: a virtual environment per release (2.15 ... 2.21,
# ~2 GB each, made once under COMPAT_VENVS), the tiny fixture exported by default and with
# --target-tensorflow for the oldest reachable release, every signature run in every release against
# this environment's outputs (~30 min on 2 cores once the environments exist). Prints the matrix and
# writes benchmarks/compat.json (docs/compatibility.md). COMPAT_ARGS: e.g. --releases 2.16,2.21
# or --targets all (every target; several times longer).
COMPAT_VENVS ?= $(HOME)/.cache/vila-tf/compat-venvs
COMPAT_ARGS ?=
.PHONY: compat
compat: $(STAMP)
	$(PY) benchmarks/compat.py --venvs '$(COMPAT_VENVS)' --out benchmarks/compat.json $(COMPAT_ARGS)

# TF Hub compressed packages of every $(OUT)/<name>/<version>/: $(DIST)/<name>_<version>.tar.gz,
# its .sha256 and the model card $(DIST)/<name>.md. BASE_URL: where $(DIST) will be served from.
DIST ?= dist
BASE_URL ?=
.PHONY: package
package: $(STAMP)
	$(PY) -m export package '$(OUT)' --out '$(DIST)' $(if $(BASE_URL),--base-url '$(BASE_URL)')

# LiteRT models of every $(OUT)/<name>/<version>/ SavedModel: $(LITERT_OUT)/<name>/<version>/ with the
# float32, float16 and int8 image heads and vila_litert.json (docs/on_device.md; ~2 min per full-size model).
LITERT_OUT ?= litert
.PHONY: litert
litert: $(STAMP)
	@found=0; for d in $(OUT)/*/[0-9]*/; do test -f $$d/saved_model.pb || continue; found=1; \
	  name=$$(basename $$(dirname $$d)); version=$$(basename $$d); \
	  $(PY) -m export litert $$d --out $(LITERT_OUT)/$$name/$$version || exit 1; done; \
	  test $$found = 1 || { echo "no SavedModel under $(OUT)/<name>/<version>/: run make export first"; exit 2; }

# The float32 LiteRT model against the SavedModel's score_pixels at batch 1 in one process, the
# float16 and int8 variants, their accuracy and the runtime's batch path on the full-size demo model
# (exported and converted in a temporary folder, ~10 min on 2 cores); writes benchmarks/litert_results.json.
.PHONY: bench-litert
bench-litert: $(STAMP)
	$(PY) benchmarks/litert.py --out benchmarks/litert_results.json

# Long fault-suite runs (the bounded versions are in `make test`).
FUZZ_RUNS ?= 5000
SOAK_SECONDS ?= 120
.PHONY: fuzz soak
fuzz: $(STAMP)
	cd tests && FUZZ_STATS=$(CURDIR)/fuzz_stats.json ../$(PY) fuzz_images.py -runs=$(FUZZ_RUNS) \
	  -max_len=20000 -rss_limit_mb=4096 -timeout=60
	@echo "fuzz figures: $$(cat fuzz_stats.json)"

soak: $(STAMP)
	$(PY) tests/soak.py --seconds $(SOAK_SECONDS)

# The time to a first result: `vila-tf score MODEL photo.jpg` in a fresh process against a bare
# TensorFlow import, compilation cache cold, warm and off, and the LiteRT export when LITERT_MODEL is
# given (docs/runtime.md); needs `make export` first. PLAIN_VENV=DIR: the same in a plain
# `pip install vila-tf` environment (made there when missing). Writes benchmarks/first_result.json (~4 min).
FIRST_MODEL ?= $(OUT)/vila_demo
LITERT_MODEL ?=
PLAIN_VENV ?=
.PHONY: bench-first-result
bench-first-result: $(STAMP)
	$(if $(PLAIN_VENV),test -x $(PLAIN_VENV)/bin/vila-tf || ($(PYTHON) -m venv $(PLAIN_VENV) && \
	  $(PLAIN_VENV)/bin/pip install -q -c constraints.txt .))
	$(PY) benchmarks/first_result.py --model $(FIRST_MODEL) $(if $(LITERT_MODEL),--litert $(LITERT_MODEL)) \
	  $(if $(PLAIN_VENV),--plain-venv $(PLAIN_VENV)) --out benchmarks/first_result.json
