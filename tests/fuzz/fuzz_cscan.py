"""atheris target for the compiled twin (ext/scan.pyx), checked against the pure twin.

The compiled loop is not coverage-instrumented (it would need a -fsanitize=fuzzer build): the
feedback comes from the Python around it (scan.py, charset.py, the pure twin it is compared
with), the seed corpus and libFuzzer's mutations. Run by ``make fuzz``.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["pacs.dicom", "tests.fuzz.harness"]):
    from tests.fuzz.harness import main

if __name__ == "__main__":
    main("cython")
