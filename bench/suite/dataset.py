"""Deterministic, realistic-looking studies: CT, MR, CR and US, written as Part-10 files.

The same ``seed`` gives byte-identical files, so two targets (``--compare``) and two runs see
the same data. ``scale`` picks image sizes: ``tiny`` (64x64, for tests), ``small`` (256x256),
``real`` (CT/MR 512x512, CR 2048x2500, US 640x480 RGB).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundImageStorage,
)

# Per modality: SOP class, instances per series, series per study, (rows, columns) per scale.
_SHAPES: dict[str, tuple[str, int, int, dict[str, tuple[int, int]]]] = {
    "CT": (CTImageStorage, 40, 2, {"tiny": (64, 64), "small": (256, 256), "real": (512, 512)}),
    "MR": (MRImageStorage, 24, 3, {"tiny": (64, 64), "small": (256, 256), "real": (512, 512)}),
    "CR": (ComputedRadiographyImageStorage, 1, 2,
           {"tiny": (64, 64), "small": (512, 512), "real": (2048, 2500)}),
    "US": (UltrasoundImageStorage, 4, 1, {"tiny": (48, 64), "small": (240, 320),
                                          "real": (480, 640)}),
}
SCALES = ("tiny", "small", "real")
_NAMES = ("Smith^John", "Garcia^Maria", "Müller^Hans", "Nguyen^Anh", "Okafor^Chidi",
          "Rossi^Giulia", "Tanaka^Yuki", "Dubois^Claire", "Kowalski^Piotr", "Haddad^Omar")


@dataclass
class Study:
    """What the generator wrote for one study (the answers the scenarios check against)."""

    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str
    modality: str
    series: dict[str, list[Path]] = field(default_factory=dict)  # series UID -> files

    @property
    def files(self) -> list[Path]:
        return [path for paths in self.series.values() for path in paths]


@dataclass
class BenchData:
    """The generated studies, in two disjoint parts: one for DIMSE, one for STOW-RS."""

    folder: Path
    dimse: list[Study]
    stow: list[Study]

    @property
    def dimse_files(self) -> list[Path]:
        return [path for study in self.dimse for path in study.files]

    @property
    def stow_files(self) -> list[Path]:
        return [path for study in self.stow for path in study.files]

    def bytes_of(self, files: list[Path]) -> int:
        return sum(path.stat().st_size for path in files)


class _Uids:
    """UIDs under 2.25 from the seeded generator: unique per run, the same for a seed."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def __call__(self) -> str:
        return f"2.25.{self.rng.getrandbits(120)}"


def _pixels(rng: np.random.Generator, rows: int, columns: int, rgb: bool) -> bytes:
    if rgb:
        return rng.integers(0, 256, (rows, columns, 3), dtype=np.uint8).tobytes()
    # Smooth gradient plus noise: compresses like a real image, not like zeros.
    base = (np.add.outer(np.arange(rows), np.arange(columns)) * 7) % 4096
    noise = rng.integers(0, 64, (rows, columns))
    return ((base + noise) % 4096).astype(np.uint16).tobytes()


def _instance(study: Study, modality: str, series_uid: str, series_number: int, number: int,
              sop_uid: str, rows: int, columns: int, pixels: bytes) -> Dataset:
    sop_class = _SHAPES[modality][0]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.AccessionNumber = f"A{study.patient_id[1:]}{series_number:02d}"
    ds.Modality = modality
    ds.Manufacturer = "BENCH"
    ds.InstitutionName = "Bench Imaging Centre"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyDescription = f"{modality} bench study"
    ds.SeriesDescription = f"{modality} series {series_number}"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = number
    rgb = modality == "US"
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = 8 if rgb else 16
    ds.BitsStored = 8 if rgb else 12
    ds.HighBit = 7 if rgb else 11
    ds.PixelRepresentation = 0
    if not rgb:
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels
    return ds


def _write(ds: Dataset, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True, little_endian=True, implicit_vr=False)


def generate(folder: Path, studies: int, scale: str = "tiny", seed: int = 1,
             modalities: tuple[str, ...] = ("CT", "MR", "CR", "US")) -> BenchData:
    """Write ``studies`` studies (cycling through ``modalities``) for DIMSE, and a quarter as
    many (at least one) for STOW-RS, under ``folder``; return what was written."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}")
    rng = random.Random(seed)
    uid = _Uids(rng)
    pixel_rng = np.random.default_rng(seed)
    made: list[Study] = []
    stow_count = max(1, studies // 4)
    for index in range(studies + stow_count):
        modality = modalities[index % len(modalities)]
        _sop_class, per_series, series_count, sizes = _SHAPES[modality]
        rows, columns = sizes[scale]
        study = Study(
            patient_id=f"P{index:06d}",
            patient_name=_NAMES[index % len(_NAMES)],
            study_uid=uid(),
            study_date=f"{2015 + index % 10}{1 + index % 12:02d}{1 + index % 28:02d}",
            modality=modality,
        )
        # One pixel buffer per series: generating noise per image would dominate generation.
        for series_number in range(1, series_count + 1):
            series_uid = uid()
            pixels = _pixels(pixel_rng, rows, columns, modality == "US")
            target = folder / f"study{index:05d}" / f"series{series_number}"
            target.mkdir(parents=True, exist_ok=True)
            paths = []
            for number in range(1, per_series + 1):
                ds = _instance(study, modality, series_uid, series_number, number, uid(),
                               rows, columns, pixels)
                path = target / f"{number:05d}.dcm"
                _write(ds, path)
                paths.append(path)
            study.series[series_uid] = paths
        made.append(study)
    return BenchData(folder, made[:studies], made[studies:])
