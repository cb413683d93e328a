"""atheris target for the pure twin (pacs/dicom/_pyscan.py); run by ``make fuzz``."""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["pacs.dicom", "tests.fuzz.harness"]):
    from tests.fuzz.harness import main

if __name__ == "__main__":
    main("python")
