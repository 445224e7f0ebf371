# The two commands a new user needs: `make serve` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve test

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --editable '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/lockstep serve

# Four workers on any machine: most test time is waiting on servers and sync polls, not CPU.
# Each file stays on one worker, so a module's server and emulators start once; the slowest
# modules go out first (tests/conftest.py), not reordered by test count.
test: $(STAMP)
	$(PY) -m pytest -n 4 --dist loadfile --no-loadscope-reorder
