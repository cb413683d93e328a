"""Build only the Cython extensions; everything else lives in pyproject.toml.

PACS_NO_EXTENSIONS=1 skips them, and the package then runs on its pure-Python twins.
"""

import os

from setuptools import setup

ext_modules = []
if os.environ.get("PACS_NO_EXTENSIONS", "") not in ("1", "true", "yes"):
    from Cython.Build import cythonize
    from setuptools import Extension

    ext_modules = cythonize(
        [
            Extension("pacs.dicom._cscan", ["ext/scan.pyx"], include_dirs=["ext"]),
            Extension("pacs.store._csync", ["ext/sync.pyx"]),
            Extension("pacs.store._ccrc", ["ext/crc.pyx"], include_dirs=["ext"]),
        ],
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        include_path=["ext"],
    )

setup(ext_modules=ext_modules)
