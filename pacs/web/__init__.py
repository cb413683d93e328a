"""HTTP front ends: DICOMweb (STOW-RS, QIDO-RS, WADO-RS), REST, the viewer (PS3.18).

Thin adapters over the archive's one write path, one query model and one blob store; nothing
here knows DIMSE. :class:`pacs.web.app.WebServer` runs on a worker's event loop.
"""
