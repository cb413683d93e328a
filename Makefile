# The README's two commands: `make run` and `make test`. Both work on a fresh machine.
# The venv's interpreter: the system's CPython when it is 3.11 or newer, else the first
# python3 on PATH (PYTHON=... chooses). Debian builds its CPython with profile-guided
# optimisation: the archive takes 7-11% less CPU a small C-STORE on it than on a build without
# (e.g. pyenv's default), measured (README, "Measured").
SYSTEM_PYTHON := $(shell /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
                   2>/dev/null && echo /usr/bin/python3)
PYTHON ?= $(or $(SYSTEM_PYTHON),python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ARGS   ?=

.PHONY: run test lint pytest bench bench-deps install system-deps clean

run: $(STAMP)
	$(BIN)/pacs serve --data-dir ./pacs-data $(ARGS)

test: system-deps $(STAMP) lint pytest

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard ext/*.pyx ext/*.pxd ext/*.h)
	@# Debian ships venv (ensurepip) and the C headers the extensions build against apart.
	@py=$(BIN)/python; test -x $$py || py=$(PYTHON); \
	$$py -c 'import os, sys, sysconfig; \
	  sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  2>/dev/null && { test -x $(BIN)/python || $(PYTHON) -c 'import ensurepip' 2>/dev/null; } || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    python3-venv python3-dev; }
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
	$(BIN)/ruff check pacs tests bench fuzz setup.py
	$(BIN)/mypy pacs

pytest: $(STAMP)
	TCP_NODELAY=1 $(BIN)/pytest -q

bench: system-deps bench-deps $(STAMP)
	TCP_NODELAY=1 $(BIN)/python -m bench.ingest $(ARGS)

# Orthanc's DICOMweb plugin, for the Orthanc rows of bench_web and `python -m bench
# --with-orthanc` (the benches skip those rows with a note when it is missing).
bench-deps:
	@test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    orthanc-dicomweb; }

clean:
	rm -rf $(VENV) build *.egg-info pacs/dicom/_cscan*.so pacs/store/_csync*.so pacs/store/_ccrc*.so ext/*.c

# atheris runs of the fuzz/ targets, FUZZ_SECONDS each (CI: 5 x 12 s); any crash fails.
# Crash inputs land in build/fuzz/crash-<target>-*: make each a regression test
# (tests/unit/test_fuzz_regressions.py; scanner inputs: tests/unit/dicom/fuzz_vectors/).
FUZZ_SECONDS ?= 12
FUZZ_TARGETS ?= scan pdu hl7 multipart crc
FUZZ_DIR     := build/fuzz
.PHONY: fuzz bench-guard
fuzz: $(STAMP)
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install -q atheris
	$(BIN)/python setup.py -q build_ext --inplace
	mkdir -p $(FUZZ_DIR)
	for target in $(FUZZ_TARGETS); do \
	  $(BIN)/python -m fuzz.run $$target $(FUZZ_DIR)/corpus-$$target \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=4200 -timeout=10 -rss_limit_mb=2048 \
	    -artifact_prefix=$(FUZZ_DIR)/crash-$$target- -print_final_stats=1 || exit 1; \
	done

# Hot-path ratios against in-run baselines (bench/guard.py); fails below the floors.
bench-guard: system-deps $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace
	$(BIN)/python -m bench.guard
