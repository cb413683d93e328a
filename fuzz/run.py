"""``python -m fuzz.run TARGET CORPUS_DIR [libFuzzer flags]``: fuzz one target with atheris.

The target's seeds are written into CORPUS_DIR first (named by their SHA-1, so re-runs add
nothing); libFuzzer then grows the corpus there. A crash (any exception escaping ``check``)
stops the run with a non-zero exit and writes the input to ``-artifact_prefix``.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import sys
from pathlib import Path

import atheris

# Modules whose coverage guides each target (instrumented when first imported below).
TARGETS: dict[str, list[str]] = {
    "scan": ["pacs.dicom", "tests.fuzz.harness", "fuzz.scan"],
    "pdu": ["pacs.net", "fuzz.pdu"],
    "hl7": ["pacs.worklist", "hl7", "fuzz.hl7"],
    "multipart": ["pacs.web.multipart", "fuzz.multipart"],
    "crc": ["fuzz.crc"],
}


def write_seeds(seeds: list[bytes], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz.run {{{','.join(TARGETS)}}} CORPUS_DIR [flags]")
    name, corpus = sys.argv[1], Path(sys.argv[2])
    with atheris.instrument_imports(include=TARGETS[name]):
        target = importlib.import_module(f"fuzz.{name}")
    write_seeds(target.seeds(), corpus)
    logging.disable(logging.CRITICAL)  # the targets log every rejected input
    atheris.Setup([sys.argv[0], *sys.argv[3:], str(corpus)], target.check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
