# The whole set-up on a fresh machine: `make test`.  Everything lands in .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nomyo-installed
SOURCES := pyproject.toml setup.py csrc/build.py $(wildcard csrc/*.c csrc/*.h)

.PHONY: demo test lint bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# editable install: builds the cffi extension into src/nomyo; a failed C build is an error here
$(STAMP): $(PY) $(SOURCES)
	NOMYO_REQUIRE_EXTENSION=1 $(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

# the package with the server extra is enough for the demo (the test install is a superset)
$(VENV)/.nomyo-demo: $(PY) $(SOURCES)
	NOMYO_REQUIRE_EXTENSION=1 $(PY) -m pip install --quiet -e '.[server]'
	touch $@

demo: $(VENV)/.nomyo-demo
	$(PY) -m nomyo demo

# the tests, then every benchmark body once (no timing): benchmarks must keep working
test: $(STAMP)
	$(PY) -m pytest
	$(PY) -m pytest benchmarks --benchmark-disable -q

lint: $(STAMP)
	$(PY) -m ruff check --no-cache src tests benchmarks csrc setup.py
	$(PY) -m ruff format --no-cache --check src tests benchmarks csrc setup.py
	$(PY) -m mypy

# micro and end-to-end benchmarks, then the side-by-side run against the published client
bench: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-sort=name --benchmark-columns=min,median,mean,ops,rounds
	$(PY) benchmarks/compare_published.py

clean:
	rm -rf $(VENV) .venv-interop build dist src/*.egg-info src/nomyo/_securemem* .pytest_cache .mypy_cache .ruff_cache .benchmarks
