# cython: language_level=3
"""The compiled twin of ``zlib.crc32`` (``pacs.store.crc``): the same values, several times faster
on large buffers (carry-less multiplication, ``crc32_fold.h``).

The GIL is kept below 1 MiB (~70 us of work): a thread that gives it up then waits for the busy
event loop to hand it back, which cost the large C-STORE path more than the checksum itself;
the loop's own small checksums never give it away either."""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.number cimport PyNumber_Index
from libc.stdint cimport uint32_t

cdef extern from "crc32_fold.h" nogil:
    void pacs_crc32_init()
    uint32_t pacs_crc32(uint32_t value, const unsigned char *p, size_t n)
    int pacs_crc32_has_clmul

pacs_crc32_init()

ACCELERATED = bool(pacs_crc32_has_clmul)


def crc32(data, value=0, /):
    """``zlib.crc32(data, value)``."""
    cdef Py_buffer view
    # Like zlib's "I" argument: any integer (``__index__``), taken modulo 2**32.
    cdef uint32_t start = <uint32_t>(PyNumber_Index(value) & 0xFFFFFFFF)
    cdef uint32_t out
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len >= 1048576:
            with nogil:
                out = pacs_crc32(start, <const unsigned char *>view.buf, <size_t>view.len)
        else:
            out = pacs_crc32(start, <const unsigned char *>view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return out
