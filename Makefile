# Two commands on a fresh machine: `make run` and `make test`. Both create .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench lint clean

$(STAMP): pyproject.toml setup.py fastalloc_shm/_core.c fastalloc_shm/_layout.h
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
