"""A high-throughput DICOM archive."""

__version__ = "0.1.0"
