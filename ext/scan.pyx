# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled element-table loop of the tag scanner: the twin of ``pacs/dicom/_pyscan.py``.

One narrow integer loop; the API, VR names, error reasons and decoding live in
``pacs.dicom.scan``. Both twins return ``(flat, status, pos, tag)`` with the same meaning;
keep them in lockstep (the leniency policy is documented in ``pacs/dicom/scan.py``).
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from byteread cimport is_long_vr, is_upper, rd16, rd32, rdtag

# Status codes, shared with pacs/dicom/_pyscan.py.
cdef enum:
    END = 0
    STOP = 1
    E_HEADER = 2
    E_VALUE = 3
    E_ITEM = 4
    E_UNTERMINATED = 5
    E_DEPTH = 6
    E_EXPECTED_ITEM = 7
    E_DELIMITER = 8
    MAX_DEPTH = 128

cdef uint32_t UNDEFINED = 0xFFFFFFFF
cdef uint32_t ITEM = 0xFFFEE000
cdef uint32_t ITEM_END = 0xFFFEE00D
cdef uint32_t SEQ_END = 0xFFFEE0DD


def scan_core(const uint8_t[::1] buf, bint explicit, bint little, uint64_t stop_tag,
              Py_ssize_t offset):
    """Walk top-level elements from ``offset``; see ``pacs.dicom._pyscan.scan_core``."""
    cdef Py_ssize_t end = buf.shape[0]
    cdef Py_ssize_t pos = offset
    cdef Py_ssize_t rem, q, vpos, hdr
    cdef list flat = []
    cdef bint modes[MAX_DEPTH + 1]
    cdef int depth = 0
    cdef uint32_t tag, length, vr
    cdef bint e
    cdef const uint8_t* p
    if pos < 0:
        raise ValueError("negative offset")
    if pos >= end:
        return flat, END, pos, -1
    p = &buf[0]

    e = explicit
    if end - pos >= 6 and rd16(p + pos, little) != 0xFFFE:
        e = is_upper(p[pos + 4]) and is_upper(p[pos + 5])
    modes[0] = e

    while True:
        rem = end - pos
        if depth & 1:
            # Inside an undefined-length value: items and the sequence delimiter.
            if rem < 8:
                if rem == 0:
                    return flat, E_UNTERMINATED, pos, -1
                if rem < 4:
                    return flat, E_HEADER, pos, -1
                return flat, E_HEADER, pos, rdtag(p + pos, little)
            tag = rdtag(p + pos, little)
            if tag == SEQ_END:
                pos += 8
                depth -= 1
                continue
            if tag != ITEM:
                return flat, E_EXPECTED_ITEM, pos, tag
            length = rd32(p + pos + 4, little)
            if length == UNDEFINED:
                if depth >= MAX_DEPTH:
                    return flat, E_DEPTH, pos, tag
                q = pos + 8
                e = modes[depth - 1]
                if e and end - q >= 6 and rd16(p + q, little) != 0xFFFE:
                    if not (is_upper(p[q + 4]) and is_upper(p[q + 5])):
                        e = False
                depth += 1
                modes[depth] = e
                pos = q
                continue
            if length > <uint64_t>(rem - 8):
                return flat, E_ITEM, pos, tag
            pos += 8 + <Py_ssize_t>length
            continue

        # A dataset: the top level or an undefined-length item.
        if rem < 4:
            if rem == 0:
                if depth == 0:
                    return flat, END, pos, -1
                return flat, E_UNTERMINATED, pos, -1
            return flat, E_HEADER, pos, -1
        tag = rdtag(p + pos, little)
        if depth == 0 and tag >= stop_tag:
            return flat, STOP, pos, tag
        if (tag >> 16) == 0xFFFE:
            if depth == 0 or tag != ITEM_END:
                return flat, E_DELIMITER, pos, tag
            if rem < 8:
                return flat, E_HEADER, pos, tag
            pos += 8
            depth -= 1
            continue
        if rem < 8:
            return flat, E_HEADER, pos, tag
        if modes[depth] and is_upper(p[pos + 4]) and is_upper(p[pos + 5]):
            vr = (<uint32_t>p[pos + 4] << 8) | p[pos + 5]
            if is_long_vr(p[pos + 4], p[pos + 5]):
                if rem < 12:
                    return flat, E_HEADER, pos, tag
                length = rd32(p + pos + 8, little)
                hdr = 12
            else:
                length = rd16(p + pos + 6, little)
                hdr = 8
        else:
            vr = 0
            length = rd32(p + pos + 4, little)
            hdr = 8
        vpos = pos + hdr
        if depth == 0:
            flat.append(tag)
            flat.append(vr)
            flat.append(vpos)
            flat.append(length)
        if length == UNDEFINED:
            if depth >= MAX_DEPTH:
                return flat, E_DEPTH, pos, tag
            depth += 1
            pos = vpos
            continue
        if length > <uint64_t>(end - vpos):
            return flat, E_VALUE, pos, tag
        pos = vpos + <Py_ssize_t>length
