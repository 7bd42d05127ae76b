# Two commands on a fresh machine: `make run` and `make test`. Both create .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-asan test-pythons check-pythons typecheck bench lint clean

$(STAMP): pyproject.toml setup.py $(wildcard fastalloc_shm/_core/*)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,redis,daemon,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fastalloc-shmd

test: $(STAMP)
	bash tests/ensure_servers.sh
	$(BIN)/ruff check fastalloc_shm daemon clients tests benchmarks
	$(MAKE) --no-print-directory typecheck
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# mypy --strict on the example programs (the files and settings: [tool.mypy] in pyproject.toml), and the
# core's stub (fastalloc_shm/_core.pyi) against the built module: a method added, removed or re-signed
# in _core/type.c or module.c without the stub fails here.
typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest --mypy-config-file pyproject.toml fastalloc_shm._core

lint: $(STAMP)
	$(BIN)/ruff check fastalloc_shm daemon clients tests benchmarks

clean:
	rm -rf $(VENV) $(foreach v,$(PYTHONS),.venv-$(v)) $(REDIS_PY5) build *.egg-info

# Every supported Python besides the one of .venv (requires-python, the classifiers): the core's and
# the contract's tests again in .venv-<version>, each with the project installed (the core compiles
# per interpreter: _core.cpython-312-*.so beside the others). The interpreters are pyenv's builds
# ($(PYENV_ROOT)/versions/<version>.*) or python<version> on PATH. Under CI a missing one fails the
# run; elsewhere it is skipped with a warning.
PYTHONS ?= 3.12 3.13
PYTHONS_TESTS := tests/test_contract.py tests/test_layout.py tests/test_bad_input.py tests/test_channels.py \
	$(sort $(wildcard tests/test_unit_*.py))
PYENV_ROOT ?= $(HOME)/.pyenv
find_python = $(or $(shell ls -d $(PYENV_ROOT)/versions/$(1).*/bin/python$(1) 2>/dev/null | sort -V | tail -n 1),$(shell \
	PATH="$$(echo "$$PATH" | tr : '\n' | grep -v /shims | paste -sd:)" command -v python$(1)))
PYTHONS_FOUND := $(foreach v,$(PYTHONS),$(if $(call find_python,$(v)),$(v)))
PYTHONS_MISSING := $(filter-out $(PYTHONS_FOUND),$(PYTHONS))

test-pythons: check-pythons $(foreach v,$(PYTHONS_FOUND),.venv-$(v)/.installed)
	@for v in $(PYTHONS_FOUND); do \
	  echo "== Python $$(.venv-$$v/bin/python -c 'import platform; print(platform.python_version())')"; \
	  .venv-$$v/bin/python -m pytest -q -p no:cacheprovider $(PYTHONS_TESTS) || exit 1; done

check-pythons:
	@if [ -n "$(PYTHONS_MISSING)" ]; then \
	  echo "Python $(PYTHONS_MISSING) not found (looked in $(PYENV_ROOT)/versions and on PATH);" \
	    "install it, e.g. pyenv install $(firstword $(PYTHONS_MISSING))"; \
	  if [ "$$CI" = true ]; then exit 1; fi; echo "skipping it here (CI fails)"; fi

# RedisPool on the oldest redis-py major the project allows (5.x; pyproject: redis>=5.0): its cluster
# client retries a timed-out command on its own unless the pool keeps it from doing so, which the
# once-only, epoch and resharding tests catch. The main venv has the newest redis-py.
REDIS_PY5 := .venv-redis-py5
REDIS_PY5_TESTS := tests/test_redis_request_ids.py tests/test_redis_resharding.py tests/test_redis_epochs.py
.PHONY: test-redis-py5
test-redis-py5: $(REDIS_PY5)/.installed
	$(REDIS_PY5)/bin/python -c "import redis; print('== redis-py', redis.__version__)"
	$(REDIS_PY5)/bin/python -m pytest -q -p no:cacheprovider $(REDIS_PY5_TESTS)

$(REDIS_PY5)/.installed: pyproject.toml setup.py $(wildcard fastalloc_shm/_core/*)
	test -x $(REDIS_PY5)/bin/python || $(PYTHON) -m venv $(REDIS_PY5)
	$(REDIS_PY5)/bin/python -m pip install --quiet --upgrade pip
	$(REDIS_PY5)/bin/python -m pip install --quiet -e '.[test,redis]' 'redis>=5.0,<6'
	touch $@

.venv-%/.installed: pyproject.toml setup.py $(wildcard fastalloc_shm/_core/*)
	@test -n "$(call find_python,$*)" || { echo "Python $* not found"; exit 1; }
	test -x .venv-$*/bin/python || $(call find_python,$*) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-$*/bin/python -m pip install --quiet -e '.[test]'
	touch $@

# The core's tests again with the core built under AddressSanitizer and UBSan:
# a copy of the package and its tests whose _core is the instrumented build.
ASAN_DIR := build/asan
ASAN_TESTS := tests/test_fuzz_segment.py tests/test_layout.py tests/test_contract.py tests/test_bad_input.py \
	tests/test_crash_matrix.py tests/test_lock_soundness.py tests/test_kinds.py tests/test_torn_reads.py tests/test_threads.py \
	tests/test_thread_races.py tests/test_review_findings.py tests/test_repair_crash.py tests/test_channels.py \
	tests/test_magazine_steal.py tests/test_unit_lock.py tests/test_unit_recovery.py \
	tests/test_channel_observability.py tests/test_allocate_async.py \
	$(sort $(wildcard tests/test_unit_coverage_*.py))
test-asan: $(STAMP)
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	cp -r fastalloc_shm tests pyproject.toml README.md $(ASAN_DIR)/ && rm -f $(ASAN_DIR)/fastalloc_shm/*.so
	$(BIN)/python tools/build_core.py --sanitize --out $(ASAN_DIR)/fastalloc_shm
	# A sanitizer stops the process at once, before pytest shows what it captured: its report
	# goes to files, printed when the run fails.
	cd $(ASAN_DIR) && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:log_path=$(CURDIR)/$(ASAN_DIR)/report \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$(CURDIR)/$(ASAN_DIR)/report \
	LD_PRELOAD="$$(cc -print-file-name=libasan.so) $$(cc -print-file-name=libubsan.so)" \
	FASTALLOC_EXPECT_CORE=$(CURDIR)/$(ASAN_DIR)/fastalloc_shm \
	$(CURDIR)/$(BIN)/python -m pytest -q -p no:cacheprovider $(ASAN_TESTS) -k "not RedisPool" \
	|| { cat $(ASAN_DIR)/report.* 2>/dev/null; exit 1; }
	# A short coverage-guided fuzz of the core on its ASan build (tools/fuzz_core.py; `make fuzz` runs long).
	$(BIN)/python tools/fuzz_core.py -atheris_runs=60000 -max_total_time=25 -print_final_stats=1 >$(ASAN_DIR)/fuzz.log 2>&1; \
	rc=$$?; grep -v -e '^#.*\(NEW\|REDUCE\|pulse\) ' $(ASAN_DIR)/fuzz.log | tail -n 60; \
	grep -e '^#[0-9]' $(ASAN_DIR)/fuzz.log | tail -n 1; exit $$rc

# Coverage-guided fuzzing of the core for FUZZ_TIME seconds: tools/fuzz_core.py (atheris's libFuzzer on the
# ASan + UBSan build, segment bytes and a script of every operation per input). The corpus grows in
# build/fuzz/corpus; a finding is saved as build/fuzz/crash-* (or timeout-*), replayed by
# `python tools/fuzz_core.py build/fuzz/crash-<sha>`. The last long run's figures: tools/fuzz_core.py.
.PHONY: fuzz
FUZZ_TIME ?= 600
fuzz: $(STAMP)
	nice -n 10 $(BIN)/python tools/fuzz_core.py -max_total_time=$(FUZZ_TIME) -print_final_stats=1 $(FUZZ_ARGS)

# Coverage, C and Python: the suite in a copy whose _core is built with gcov (-O0), under
# coverage.py in every Python process it starts (tools/cov/: COVERAGE_PROCESS_START and the .pth
# coverage installs; os._exit writes gcov's counts first). A child killed by SIGKILL writes
# neither gcov nor coverage.py data: what the crash tests' killed children ran is not counted.
# The soak is left out (1,000 such kills; tests/test_soak.py). COV_TESTS narrows the run.
.PHONY: coverage
COV_DIR := build/coverage
COV_TESTS ?= tests --ignore=tests/test_soak.py
COV_STAMP := $(VENV)/.coverage-installed
$(COV_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['coverage']))" \
	| xargs $(BIN)/python -m pip install --quiet
	touch $(COV_STAMP)
coverage: $(COV_STAMP)
	rm -rf $(COV_DIR) && mkdir -p $(COV_DIR)
	cp -r $(filter-out build,$(wildcard *)) $(COV_DIR)/ && rm -f $(COV_DIR)/fastalloc_shm/*.so
	$(BIN)/python tools/build_core.py --coverage --out $(COV_DIR)/fastalloc_shm
	cd $(COV_DIR) && COVERAGE_PROCESS_START=$(CURDIR)/tools/cov/coveragerc COVERAGE_FILE=$(CURDIR)/$(COV_DIR)/.coverage \
	PYTHONPATH=$(CURDIR)/$(COV_DIR):$(CURDIR)/tools/cov FASTALLOC_EXPECT_CORE=$(CURDIR)/$(COV_DIR)/fastalloc_shm \
	$(CURDIR)/$(BIN)/python -m pytest -q -p no:cacheprovider $(COV_TESTS); echo $$? > pytest.status
	cd $(COV_DIR) && COVERAGE_FILE=.coverage $(CURDIR)/$(BIN)/python -m coverage combine -q --rcfile=$(CURDIR)/tools/cov/coveragerc \
	&& COVERAGE_FILE=.coverage $(CURDIR)/$(BIN)/python -m coverage report --rcfile=$(CURDIR)/tools/cov/coveragerc | tee python.txt
	cd $(COV_DIR) && for metric in line branch; do \
	  $(CURDIR)/$(BIN)/gcovr -j 2 --root . --filter 'fastalloc_shm/_core/.*\.c$$' --exclude-unreachable-branches \
	  --txt-metric $$metric --txt $$metric.txt && cat $$metric.txt || exit 1; done
	@echo "reports: $(COV_DIR)/line.txt branch.txt python.txt; pytest exit status $$(cat $(COV_DIR)/pytest.status)"
	@exit $$(cat $(COV_DIR)/pytest.status)

# Mutation testing, not in CI (README, Development): (a) the C core's semantic mutants of
# tools/mutants.toml, each applied to a copy in build/mutants/<id>, rebuilt and run against the suite
# (-x, the most sensitive files first); every one must be killed. (b) mutmut on the Python modules
# that decide things, one at a time in build/mutmut/<module>. Survivors: tests/MUTANTS.md.
# MUTANTS_ARGS passes options to (a), e.g. MUTANTS_ARGS="--only drain-any-owner".
.PHONY: mutants
mutants: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,redis,daemon,bench,mutants]'
	nice -n 10 $(BIN)/python tools/mutants.py c $(MUTANTS_ARGS)
	nice -n 10 $(BIN)/python tools/mutants.py mutmut
