# The README's two commands: `make run` and `make test`. Both work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ARGS   ?=

.PHONY: run test lint pytest bench install system-deps clean

run: $(STAMP)
	$(BIN)/pacs serve --data-dir ./pacs-data $(ARGS)

test: system-deps $(STAMP) lint pytest

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard ext/*.pyx ext/*.pxd)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel Cython
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# Debian's dcmtk gives the real DICOM clients (echoscu, storescu, ...) the tests talk to;
# Debian's chromium is the headless browser of the viewer test (driven by Playwright).
system-deps:
	@command -v storescu >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends dcmtk; }
	@command -v Orthanc >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends orthanc && \
	  { $(SUDO) systemctl disable --now orthanc >/dev/null 2>&1 || true; }; }
	@# The tests start their own Orthanc; the package's system service would hold 4242 and 8042.
	@command -v chromium >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

lint: $(STAMP)
	$(BIN)/ruff check pacs tests bench setup.py
	$(BIN)/mypy pacs

pytest: $(STAMP)
	TCP_NODELAY=1 $(BIN)/pytest -q

bench: system-deps $(STAMP)
	TCP_NODELAY=1 $(BIN)/python -m bench.ingest $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info pacs/dicom/_cscan*.so ext/*.c

# Fuzz each scanner twin with atheris for FUZZ_SECONDS (installed into the venv if missing).
# Crash inputs land in build/fuzz/; copy one into tests/unit/dicom/fuzz_vectors/ to keep it.
FUZZ_SECONDS ?= 30
FUZZ_DIR     := build/fuzz
.PHONY: fuzz bench-guard
fuzz: $(STAMP)
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install -q atheris
	$(BIN)/python setup.py -q build_ext --inplace
	mkdir -p $(FUZZ_DIR)/seeds $(FUZZ_DIR)/corpus-pyscan $(FUZZ_DIR)/corpus-cscan
	$(BIN)/python -m tests.fuzz.seed_corpus $(FUZZ_DIR)/seeds
	for twin in pyscan cscan; do \
	  $(BIN)/python -m tests.fuzz.fuzz_$$twin -max_total_time=$(FUZZ_SECONDS) -max_len=4200 \
	    -timeout=10 -rss_limit_mb=2048 -artifact_prefix=$(FUZZ_DIR)/crash-$$twin- \
	    -print_final_stats=1 $(FUZZ_DIR)/corpus-$$twin $(FUZZ_DIR)/seeds || exit 1; \
	done

# Hot-path ratios against in-run baselines (bench/guard.py); fails below the floors.
bench-guard: system-deps $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace
	$(BIN)/python -m bench.guard
