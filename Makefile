# `make demo` and `make test` work on a fresh machine: each sets up .venv (and Chromium for the
# browser test) before it runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The manual, rebuilt whole (-E: autodoc cannot see a docstring change) with warnings as errors.
SPHINX := $(PY) -m sphinx -b html -E -W --keep-going -q docs docs/_build/html

.PHONY: demo test lint docs bench chromium clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,docs]'
	touch $@

# Debian's Chromium for the browser test (Playwright drives it; it never downloads a browser).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

demo: $(STAMP)
	$(PY) -m nbflow.demo

test: $(STAMP) chromium
	$(PY) -m ruff check .
	$(SPHINX)
	$(PY) -m pytest tests example_notebooks --nbval -p no:cacheprovider

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The manual (docs/*.md, the API from docstrings, example_notebooks/ as saved) into docs/_build/html;
# `make test` builds it too, so a broken link or a malformed docstring fails CI.
docs: $(STAMP)
	$(SPHINX)

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info test-output docs/_build
