# vila-tf. Two commands on a fresh machine: `make export` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VILA_DIR ?=
OUT ?= exported
VERSION ?= 1
DTYPE ?= float32

.PHONY: venv test test-slow export bench clean

# The virtualenv is (re)built whenever the dependency files change; constraints.txt pins a set
# known to work together.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[export,dev]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# Exports every released checkpoint under VILA_DIR, or the full-size demo model without it.
export: $(STAMP)
	$(PY) -m export all --vila-dir '$(VILA_DIR)' --out '$(OUT)' --version $(VERSION) --dtype $(DTYPE)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
