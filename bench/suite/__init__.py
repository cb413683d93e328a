"""The bench suite as a product: ``python -m bench`` against any DICOM / DICOMweb target.

Modules: ``targets`` (what to measure and how to reach it, plus private servers it can start),
``dataset`` (deterministic CT/MR/CR/US studies), ``scenarios`` (one function per measurement,
each checking its own answers), ``report`` (console table, JSON, PNG plots, ratios), ``cli``.
"""
