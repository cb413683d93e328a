"""What the catalog stores about one instance, as handed over by the ingest path."""

from __future__ import annotations

from dataclasses import dataclass, field

# Attributes the index keeps, by level, in the Standard's keywords. The tag scanner decodes
# exactly these from each dataset (pacs.dicom.scan.INDEX_KEYWORDS is the union).
PATIENT_KEYWORDS: tuple[str, ...] = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
STUDY_KEYWORDS: tuple[str, ...] = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
)
SERIES_KEYWORDS: tuple[str, ...] = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
)
INSTANCE_KEYWORDS: tuple[str, ...] = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber")
ALL_KEYWORDS: tuple[str, ...] = (
    PATIENT_KEYWORDS + STUDY_KEYWORDS + SERIES_KEYWORDS + INSTANCE_KEYWORDS
)
_BLANKS = ("",) * len(ALL_KEYWORDS)  # map(attributes.get, ALL_KEYWORDS, _BLANKS): get(k, "")


@dataclass(slots=True)
class InstanceRecord:
    """One stored instance: its index attributes and where its blob is."""

    attributes: dict[str, str]  # keyword -> decoded value ('' when absent); PN as 'Family^Given'
    transfer_syntax_uid: str
    location: str
    size: int
    digest: str
    source_aet: str = ""
    received_at: float = 0.0  # seconds since the epoch
    specific_character_set: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_attributes(
        cls,
        attributes: dict[str, str],
        transfer_syntax_uid: str,
        *,
        location: str = "",
        source_aet: str = "",
        received_at: float = 0.0,
    ) -> InstanceRecord:
        """A record from the scanner's index attributes (``read_index_attributes``); size and
        digest are filled in when the blob is written."""
        return cls(
            attributes=dict(
                zip(ALL_KEYWORDS, map(attributes.get, ALL_KEYWORDS, _BLANKS), strict=True)),
            transfer_syntax_uid=transfer_syntax_uid,
            location=location,
            size=0,
            digest="",
            source_aet=source_aet,
            received_at=received_at,
            specific_character_set=attributes.get("SpecificCharacterSet", ""),
        )

    @property
    def sop_instance_uid(self) -> str:
        return self.attributes["SOPInstanceUID"]
