# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Compiled loop of the tag scanner: the twin of ``pacs/dicom/_pyscan.py``.

One narrow integer loop (``walk``), run without Python objects, with two sinks:

* ``scan_core`` records every top-level element, like ``pacs.dicom._pyscan.scan_core``, and
  returns ``(flat, status, pos, tag)`` with the same meaning;
* ``index_core`` records only the tags of an :class:`IndexSpec` (the last occurrence wins) and
  decodes them into the index record; it returns ``(record, status, pos, tag)`` where
  ``record`` equals ``pacs.dicom.scan.index_attributes`` of the pure twin's table (None on
  error). Plain ASCII/Latin-1 values are decoded here; the rest (ISO 2022 escapes, multi-valued
  text, non-ASCII bytes in another character set, ...) goes through the spec's Python
  ``decode_value`` so that both paths give the same strings.

Keep the walk in lockstep with the pure twin (the leniency policy is documented in
``pacs/dicom/scan.py``); the twin tests compare them on generated, mutated and real datasets.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython cimport array
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memchr

from byteread cimport is_long_vr, is_upper, rd16, rd32, rdtag

import array

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
    E_NOMEM = 99  # internal: the table could not grow
    MAX_DEPTH = 128
    MAX_WANTED = 64

cdef uint32_t UNDEFINED = 0xFFFFFFFF
cdef uint32_t ITEM = 0xFFFEE000
cdef uint32_t ITEM_END = 0xFFFEE00D
cdef uint32_t SEQ_END = 0xFFFEE0DD
cdef uint32_t SQ_CODE = 0x5351
# Buffers at least this long are walked without the GIL (whole-dataset validation).
cdef Py_ssize_t NOGIL_BYTES = 1 << 20


cdef struct Quad:
    uint32_t tag
    uint32_t vr
    Py_ssize_t offset  # -1: slot empty (index sink)
    uint32_t length


cdef struct Sink:
    bint index  # False: append every element to quads; True: fill the slot of wanted tags
    Quad* quads
    Py_ssize_t n
    Py_ssize_t cap
    const uint32_t* wanted  # sorted
    int n_wanted


cdef inline bint record(Sink* s, uint32_t tag, uint32_t vr, Py_ssize_t vpos,
                        uint32_t length) noexcept nogil:
    """Record one top-level element; False when out of memory."""
    cdef int lo, hi, mid
    cdef Quad* grown
    cdef Py_ssize_t cap
    if s.index:
        if tag < s.wanted[0] or tag > s.wanted[s.n_wanted - 1]:
            return True
        lo = 0
        hi = s.n_wanted - 1
        while lo <= hi:
            mid = (lo + hi) >> 1
            if s.wanted[mid] < tag:
                lo = mid + 1
            elif s.wanted[mid] > tag:
                hi = mid - 1
            else:
                s.quads[mid].tag = tag
                s.quads[mid].vr = vr
                s.quads[mid].offset = vpos
                s.quads[mid].length = length
                return True
        return True
    if s.n == s.cap:
        cap = s.cap * 2 if s.cap else 256
        grown = <Quad*>realloc(s.quads, cap * sizeof(Quad))
        if grown == NULL:
            return False
        s.quads = grown
        s.cap = cap
    s.quads[s.n].tag = tag
    s.quads[s.n].vr = vr
    s.quads[s.n].offset = vpos
    s.quads[s.n].length = length
    s.n += 1
    return True


cdef int walk(const uint8_t* p, Py_ssize_t end, Py_ssize_t* at, bint explicit, bint little,
              uint64_t stop_tag, Sink* sink, int64_t* failed_tag) noexcept nogil:
    """Walk top-level elements from ``at[0]``: the status; ``at[0]`` and ``failed_tag[0]``
    (-1 if unread) give where it stopped, as in ``pacs.dicom._pyscan.scan_core``."""
    cdef Py_ssize_t pos = at[0]
    cdef Py_ssize_t rem, q, vpos, hdr
    cdef bint modes[MAX_DEPTH + 1]
    cdef int depth = 0
    cdef int status
    cdef int64_t ftag = -1
    cdef uint32_t tag, length, vr
    cdef bint e
    if pos >= end:
        failed_tag[0] = -1
        return END

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
                    status = E_UNTERMINATED
                else:
                    status = E_HEADER
                    if rem >= 4:
                        ftag = rdtag(p + pos, little)
                break
            tag = rdtag(p + pos, little)
            if tag == SEQ_END:
                pos += 8
                depth -= 1
                continue
            if tag != ITEM:
                status = E_EXPECTED_ITEM
                ftag = tag
                break
            length = rd32(p + pos + 4, little)
            if length == UNDEFINED:
                if depth >= MAX_DEPTH:
                    status = E_DEPTH
                    ftag = tag
                    break
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
                status = E_ITEM
                ftag = tag
                break
            pos += 8 + <Py_ssize_t>length
            continue

        # A dataset: the top level or an undefined-length item.
        if rem < 4:
            if rem == 0:
                status = END if depth == 0 else E_UNTERMINATED
            else:
                status = E_HEADER
            break
        tag = rdtag(p + pos, little)
        if depth == 0 and tag >= stop_tag:
            status = STOP
            ftag = tag
            break
        if (tag >> 16) == 0xFFFE:
            if depth == 0 or tag != ITEM_END:
                status = E_DELIMITER
                ftag = tag
                break
            if rem < 8:
                status = E_HEADER
                ftag = tag
                break
            pos += 8
            depth -= 1
            continue
        if rem < 8:
            status = E_HEADER
            ftag = tag
            break
        if modes[depth] and is_upper(p[pos + 4]) and is_upper(p[pos + 5]):
            vr = (<uint32_t>p[pos + 4] << 8) | p[pos + 5]
            if is_long_vr(p[pos + 4], p[pos + 5]):
                if rem < 12:
                    status = E_HEADER
                    ftag = tag
                    break
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
        if depth == 0 and not record(sink, tag, vr, vpos, length):
            status = E_NOMEM
            break
        if length == UNDEFINED:
            if depth >= MAX_DEPTH:
                status = E_DEPTH
                ftag = tag
                break
            depth += 1
            pos = vpos
            continue
        if length > <uint64_t>(end - vpos):
            status = E_VALUE
            ftag = tag
            break
        pos = vpos + <Py_ssize_t>length
    at[0] = pos
    failed_tag[0] = ftag
    return status


cdef int run(Py_buffer* view, Py_ssize_t offset, bint explicit, bint little, uint64_t stop_tag,
             Sink* sink, Py_ssize_t* at, int64_t* failed_tag) except -1:
    cdef const uint8_t* p = <const uint8_t*>view.buf
    cdef Py_ssize_t end = view.len
    cdef int status
    if offset < 0:
        raise ValueError("negative offset")
    at[0] = offset
    if end - offset >= NOGIL_BYTES:
        with nogil:
            status = walk(p, end, at, explicit, little, stop_tag, sink, failed_tag)
    else:
        status = walk(p, end, at, explicit, little, stop_tag, sink, failed_tag)
    if status == E_NOMEM:
        raise MemoryError("element table")
    return status


cdef array.array FLAT = array.array("q")


def scan_core(object buf, bint explicit, bint little, uint64_t stop_tag, Py_ssize_t offset):
    """Walk top-level elements from ``offset``; see ``pacs.dicom._pyscan.scan_core``.

    ``flat`` is an ``array.array("q")`` here (a list in the pure twin): no Python int per
    element until one is read.
    """
    cdef Py_buffer view
    cdef Sink sink
    cdef Py_ssize_t pos, i
    cdef int64_t tag
    cdef int status
    cdef array.array flat
    cdef long long* out
    sink.index = False
    sink.quads = NULL
    sink.n = 0
    sink.cap = 0
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        status = run(&view, offset, explicit, little, stop_tag, &sink, &pos, &tag)
        flat = array.clone(FLAT, 4 * sink.n, False)
        out = flat.data.as_longlongs
        for i in range(sink.n):
            out[4 * i] = sink.quads[i].tag
            out[4 * i + 1] = sink.quads[i].vr
            out[4 * i + 2] = sink.quads[i].offset
            out[4 * i + 3] = sink.quads[i].length
    finally:
        free(sink.quads)
        PyBuffer_Release(&view)
    return flat, status, pos, tag


# How an index value is decoded (pacs.dicom.charset.decode_value, per VR)
cdef enum:
    K_PLAIN = 0  # AS CS DA DT TM UI UR: Latin-1, trailing spaces/NULs stripped
    K_OTHER = 1  # any other non-text VR: the same decoding
    K_STRIP = 2  # AE IS DS: Latin-1, both ends stripped (per value)
    K_MULTI = 3  # SH LO UC: character set, trailing padding stripped (per value)
    K_LONG = 4   # ST LT UT: character set, trailing padding stripped
    K_PN = 5     # PN: character set, component groups

# Character-set modes given by IndexSpec.charset_info
cdef enum:
    CS_LATIN1 = 0  # the first codec is Latin-1: every byte decodes as itself
    CS_ASCII = 1   # ASCII bytes decode as themselves
    CS_OTHER = 2   # always through decode_value

_PLAIN = frozenset(("AS", "CS", "DA", "DT", "TM", "UI", "UR"))
_STRIP = frozenset(("AE", "IS", "DS"))
_MULTI = frozenset(("SH", "LO", "UC"))
_LONG = frozenset(("ST", "LT", "UT"))


cdef int vr_kind(str vr):
    if vr in _PLAIN:
        return K_PLAIN
    if vr in _STRIP:
        return K_STRIP
    if vr in _MULTI:
        return K_MULTI
    if vr in _LONG:
        return K_LONG
    if vr == "PN":
        return K_PN
    return K_OTHER


cdef inline Py_ssize_t rstrip(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    while n > 0 and (s[n - 1] == 0x20 or s[n - 1] == 0):
        n -= 1
    return n


cdef inline bint text_is_trivial(const uint8_t* s, Py_ssize_t n, int mode) noexcept nogil:
    """True when decoding with the character set is Latin-1 decoding (no ISO 2022 escape)."""
    cdef Py_ssize_t i
    if mode == CS_OTHER:
        return False
    for i in range(n):
        if s[i] == 0x1B or (s[i] >= 0x80 and mode != CS_LATIN1):
            return False
    return True


cdef class IndexSpec:
    """The tags ``index_core`` records and how it decodes them (built once by scan.py).

    ``tags`` ascending, with their ``keywords`` and dictionary ``vrs``; ``string_vrs`` the
    explicit VRs that replace the dictionary VR; ``decode_value(vr, bytes, encodings)`` the
    general decoder; ``charset_info(text)`` -> ``(encodings, mode)`` for a (0008,0005) value
    (mode 0: the first codec is Latin-1, 1: it decodes ASCII as ASCII, 2: other), ``default``
    that pair without (0008,0005); ``charset_tag`` is (0008,0005).
    """

    cdef uint32_t wanted[MAX_WANTED]
    cdef int kinds[MAX_WANTED]
    cdef int n
    cdef tuple keywords
    cdef tuple vrs
    cdef dict explicit_vrs  # VR code -> (name, kind) of the string VRs
    cdef object decode_value
    cdef object charset_info
    cdef object default_encodings
    cdef int default_mode
    cdef uint32_t charset_tag

    def __init__(self, tags, keywords, vrs, string_vrs, decode_value, charset_info,
                 default, charset_tag):
        cdef int i
        tags = tuple(tags)
        if not 0 < len(tags) <= MAX_WANTED or list(tags) != sorted(set(tags)):
            raise ValueError("tags must be 1 to 64 ascending distinct tags")
        if not len(tags) == len(keywords) == len(vrs):
            raise ValueError("tags, keywords and vrs differ in length")
        self.n = len(tags)
        for i in range(self.n):
            self.wanted[i] = tags[i]
            self.kinds[i] = vr_kind(vrs[i])
        self.keywords = tuple(keywords)
        self.vrs = tuple(vrs)
        self.explicit_vrs = {(ord(v[0]) << 8) | ord(v[1]): (v, vr_kind(v)) for v in string_vrs}
        self.decode_value = decode_value
        self.charset_info = charset_info
        self.default_encodings, self.default_mode = default
        self.charset_tag = charset_tag

    cdef dict decode(self, const uint8_t* p, Quad* slots):
        cdef dict result = {}
        cdef object encodings = self.default_encodings
        cdef int mode = self.default_mode
        cdef int i, kind
        cdef const uint8_t* s
        cdef Py_ssize_t n, a
        cdef Quad* q
        cdef object vr, text
        cdef tuple named
        for i in range(self.n):
            q = &slots[i]
            if q.offset < 0 or q.length == UNDEFINED:
                continue
            kind = self.kinds[i]
            vr = None
            if q.vr:
                named = self.explicit_vrs.get(q.vr)
                if named is not None:
                    vr, kind = named
                elif q.vr == SQ_CODE:
                    continue
            s = p + q.offset
            n = q.length
            text = None
            if kind == K_PLAIN or kind == K_OTHER:
                text = PyUnicode_DecodeLatin1(<const char*>s, rstrip(s, n), NULL)
                if kind == K_PLAIN and q.tag == self.charset_tag:
                    encodings, mode = self.charset_info(text)
            elif kind == K_STRIP:
                if memchr(s, 0x5C, n) == NULL:
                    n = rstrip(s, n)
                    a = 0
                    while a < n and (s[a] == 0x20 or s[a] == 0):
                        a += 1
                    text = PyUnicode_DecodeLatin1(<const char*>(s + a), n - a, NULL)
            elif text_is_trivial(s, n, mode):
                if kind == K_PN:
                    n = rstrip(s, n)
                    if memchr(s, 0x3D, n) == NULL:
                        text = PyUnicode_DecodeLatin1(<const char*>s, n, NULL)
                elif kind == K_LONG or memchr(s, 0x5C, n) == NULL:
                    text = PyUnicode_DecodeLatin1(<const char*>s, rstrip(s, n), NULL)
            if text is None:
                if vr is None:
                    vr = self.vrs[i]
                text = self.decode_value(
                    vr, PyBytes_FromStringAndSize(<const char*>s, q.length), encodings)
            result[self.keywords[i]] = text
        return result


def index_core(object buf, bint explicit, bint little, uint64_t stop_tag, Py_ssize_t offset,
               IndexSpec spec not None):
    """The index record of the top-level elements from ``offset``: ``(record, status, pos,
    tag)``, ``record`` None unless ``status`` is END or STOP (see the module docstring)."""
    cdef Py_buffer view
    cdef Sink sink
    cdef Quad slots[MAX_WANTED]
    cdef Py_ssize_t pos
    cdef int64_t tag
    cdef int status, i
    cdef object result = None
    for i in range(spec.n):
        slots[i].offset = -1
    sink.index = True
    sink.quads = slots
    sink.wanted = spec.wanted
    sink.n_wanted = spec.n
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        status = run(&view, offset, explicit, little, stop_tag, &sink, &pos, &tag)
        if status == END or status == STOP:
            result = spec.decode(<const uint8_t*>view.buf, slots)
    finally:
        PyBuffer_Release(&view)
    return result, status, pos, tag
