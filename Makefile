# Two commands on a fresh machine: `make run` and `make test`. Both create .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-asan bench lint clean

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
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check fastalloc_shm daemon clients tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info

# The core's tests again with the core built under AddressSanitizer and UBSan:
# a copy of the package and its tests whose _core is the instrumented build.
ASAN_DIR := build/asan
ASAN_TESTS := tests/test_fuzz_segment.py tests/test_layout.py tests/test_contract.py tests/test_bad_input.py \
	tests/test_crash_matrix.py tests/test_lock_soundness.py tests/test_kinds.py tests/test_torn_reads.py tests/test_threads.py
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
