# The whole set-up on a fresh machine: `make test`.  Everything lands in .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nomyo-installed
SOURCES := pyproject.toml setup.py csrc/build.py $(wildcard csrc/*.c csrc/*.h) src/nomyo/_constants.py

.PHONY: demo test lint bench install clean sanitize sanitize-build sanitize-runtime fuzz

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# editable install: builds both compiled modules into src/nomyo; a failed C build is an
# error here.  A test build: NOMYO_TEST_HOOKS compiles the debug capture in (what
# `pip install .` ships never has it; tests/test_package.py checks both)
$(STAMP): $(PY) $(SOURCES)
	NOMYO_REQUIRE_EXTENSION=1 NOMYO_TEST_HOOKS=1 $(PY) -m pip install --quiet -e '.[test]'
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

# ---- sanitizer lane: both compiled modules built with ASan + UBSan (csrc/build.py,
# NOMYO_SANITIZE) into build/sanitize, never src/nomyo; that dir goes first on
# PYTHONPATH (with the package's .py files linked in) and this venv's
# uninstrumented interpreter runs with the runtime preloaded.  Every process
# started by the tests inherits the environment.  PYTHONMALLOC=malloc puts
# Python's objects on ASan's checked heap; detect_leaks=0 since the
# interpreter's own allocations look like leaks.  ASan's reports go to files
# in SAN_LOGS (1777: the RLIMIT_MEMLOCK tests drop to uid 65534): any file
# there fails the run, also for children whose exit code a test does not
# check.  UBSan ignores log_path here (see tests/conftest.py): every finding
# is fatal (-fno-sanitize-recover) and run_python scans children's stderr.
SANITIZERS ?= address,undefined
SAN_DIR    := $(CURDIR)/build/sanitize
SAN_LOGS   := $(SAN_DIR)/logs
# the memory tests, and those that drive the C codec, pack and wipe (about 40 s)
SAN_TESTS  ?= tests/test_sanitize.py tests/test_memory_native.py tests/test_memory_api.py \
              tests/test_memory_faults.py tests/test_memory_limits.py tests/test_fallback_lane.py \
              tests/test_envelope.py tests/test_hybrid.py tests/test_keys.py tests/test_client_validation.py \
              tests/test_native_boundary.py \
              tests/test_native_defects.py
SAN_ENV    := PYTHONPATH=$(SAN_DIR) NOMYO_SANITIZE=$(SANITIZERS) PYTHONMALLOC=malloc \
              LD_PRELOAD="$$(gcc -print-file-name=libasan.so)" \
              ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:log_path=$(SAN_LOGS)/asan \
              UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

# gcc's own dev package carries libasan.so and libubsan.so (Debian: libgcc-N-dev)
sanitize-runtime:
	@test -f "$$(gcc -print-file-name=libasan.so)" -a -f "$$(gcc -print-file-name=libubsan.so)" || \
	  { apt-get update -qq && apt-get install -y -qq "libgcc-$$(gcc -dumpversion | cut -d. -f1)-dev"; }

# rebuilt every time (about 2 s): no stale instrumented objects
sanitize-build: $(STAMP) sanitize-runtime
	rm -rf $(SAN_DIR) && mkdir -p $(SAN_DIR)/nomyo
	cd $(SAN_DIR) && NOMYO_SANITIZE=$(SANITIZERS) $(CURDIR)/$(PY) $(CURDIR)/csrc/build.py \
	  > build.log 2>&1 || { cat build.log; exit 1; }
	ln -s $(CURDIR)/src/nomyo/*.py $(CURDIR)/src/nomyo/*.pyi $(CURDIR)/src/nomyo/py.typed $(SAN_DIR)/nomyo/

# segfaults_on_purpose: guard-page SIGSEGVs, which ASan turns into reports (see the tests)
sanitize: sanitize-build
	mkdir -m 1777 $(SAN_LOGS)
	$(SAN_ENV) $(PY) -m pytest -p no:cacheprovider -m 'not segfaults_on_purpose' $(SAN_TESTS); \
	status=$$?; \
	if [ -n "$$(ls -A $(SAN_LOGS))" ]; then \
	  cat $(SAN_LOGS)/*; echo "make sanitize: sanitizer reports above" >&2; exit 1; \
	fi; \
	exit $$status

# ---- fuzzing lane: tests/fuzz_codec.py, the JSON decoder, the package decoder,
# base64 and the encoder, each against the stdlib, over the sanitize build and
# environment.  Hypothesis, derandomized (no database, PYTHONHASHSEED=0): the
# same examples every run, so a failure reproduces with the same command.
# FUZZ_EXAMPLES: the encoder's examples (the decoders run 3x as many); the
# default takes about three minutes here.
FUZZ_EXAMPLES ?= 2000
fuzz: sanitize-build
	mkdir -m 1777 $(SAN_LOGS)
	$(SAN_ENV) PYTHONHASHSEED=0 NOMYO_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest \
	  -p no:cacheprovider -q --durations=0 --hypothesis-show-statistics tests/fuzz_codec.py; \
	status=$$?; \
	if [ -n "$$(ls -A $(SAN_LOGS))" ]; then \
	  cat $(SAN_LOGS)/*; echo "make fuzz: sanitizer reports above" >&2; exit 1; \
	fi; \
	exit $$status

clean:
	rm -rf $(VENV) .venv-interop build dist src/*.egg-info src/nomyo/_securemem* src/nomyo/_pyglue*.so .pytest_cache .mypy_cache .ruff_cache .benchmarks .hypothesis
