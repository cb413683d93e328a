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

# Debian's dcmtk gives the real DICOM clients (echoscu, storescu, ...) the tests talk to.
system-deps:
	@command -v storescu >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends dcmtk; }

lint: $(STAMP)
	$(BIN)/ruff check pacs tests bench setup.py
	$(BIN)/mypy pacs

pytest: $(STAMP)
	TCP_NODELAY=1 $(BIN)/pytest -q

bench: system-deps $(STAMP)
	TCP_NODELAY=1 $(BIN)/python -m bench.ingest $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info pacs/dicom/_cscan*.so ext/*.c
