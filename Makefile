# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell $(PYTHON) -c 'import hashlib,sys;print(hashlib.sha1(open("pyproject.toml","rb").read()).hexdigest()[:12])')

.PHONY: run test lint venv clean

venv: $(STAMP)

# compat mode puts the checkout itself on sys.path, so twisted/plugins/ here
# is found by `twistd` and edits need no reinstall.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(BIN)/twistd -n --pidfile= pushd $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info

# -- benchmark (issue 6): pushd vs Nchan vs Node on loopback -----------------
# Writes bench/results/<date>.md + .svg. BENCH_ARGS=--quick for a smoke run.
# python -m bench installs what is missing (nginx + Nchan, Node + Express) when root.
.PHONY: bench
bench: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]" --config-settings editable_mode=compat
	$(BIN)/python -m bench $(BENCH_ARGS)
