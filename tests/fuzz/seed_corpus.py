"""Write the fuzz seed corpus: the first bytes of the datasets of pydicom's test files.

``python -m tests.fuzz.seed_corpus DIR`` (``make fuzz`` does it). Each seed starts with a
selector byte (see harness.runs) naming the file's own transfer syntax.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from pacs.dicom import part10
from pacs.errors import DicomFormatError
from tests.fuzz.harness import SYNTAXES
from tests.unit.dicom.builders import pydicom_test_files

MAX_SEED = 4096


def write_seeds(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in pydicom_test_files():
        data = path.read_bytes()
        try:
            meta, offset = part10.read_file_meta(data)
        except DicomFormatError:
            continue
        syntax = meta.get("TransferSyntaxUID", "").rstrip("\x00 ")
        index = SYNTAXES.index(syntax) if syntax in SYNTAXES else 1
        seed = bytes([index << 5 | 1]) + data[offset : offset + MAX_SEED]
        name = hashlib.sha1(seed).hexdigest()
        (directory / name).write_bytes(seed)
        count += 1
    return count


if __name__ == "__main__":
    print(f"{write_seeds(Path(sys.argv[1]))} seeds in {sys.argv[1]}")
