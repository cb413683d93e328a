# cython: language_level=3
"""The compiled twin of ``pacs.store.syncer.serve_pure``: the same loop without the GIL.

Requests are 8-byte signed words (little endian): a descriptor to fdatasync; ``WRITE`` followed
by five words (buffered descriptor, direct descriptor, source address, length, file offset) to
write a large record's block-aligned middle; any other negative word stops. Answers are 16
bytes: (descriptor, errno or 0) for an fdatasync, (``WRITE`` or ``WRITE_BUFFERED``, errno or 0)
for a write. ``counter`` (int64s): after each write the thread adds one to the second when it
failed, then one to the first (writes answered), so a reader of the first sees the second.
The thread never takes the GIL while it waits, writes or syncs, so the event loop that asks
never has to hand the GIL over.
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.errno cimport EINTR, EINVAL, EIO, EOPNOTSUPP, errno
from libc.stdint cimport int64_t
from libc.stdlib cimport free
from libc.string cimport memcpy, memmove

cdef extern from "unistd.h" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)
    ssize_t pwrite(int fd, const void *buf, size_t count, long offset)
    int fdatasync(int fd)

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef extern from *:
    """
    #include <stdint.h>
    /* Release: the write is complete before another thread sees it counted. */
    static inline void pacs_count_one(int64_t *p) { __atomic_add_fetch(p, 1, __ATOMIC_RELEASE); }
    """
    void pacs_count_one(int64_t *p) nogil

WRITE = -(1 << 62)  # a write request follows (also the tag of its answer)
WRITE_BUFFERED = WRITE + 1  # answer tag: done, but the direct descriptor refused it
DIRECT_CHUNK = 2 << 20  # the aligned bounce buffer a direct write copies through
DIRECT_ALIGN = 4096

cdef int64_t _WRITE = WRITE
cdef int64_t _WRITE_BUFFERED = WRITE_BUFFERED
cdef size_t _CHUNK = DIRECT_CHUNK
cdef size_t _ALIGN = DIRECT_ALIGN


cdef int _write_all(int fd, const char *buf, size_t n) noexcept nogil:
    cdef ssize_t w
    cdef size_t done = 0
    while done < n:
        w = write(fd, buf + done, n - done)
        if w < 0:
            if errno == EINTR:
                continue
            return -1
        done += <size_t>w
    return 0


cdef int _pwrite_all(int fd, const char *buf, size_t n, int64_t offset) noexcept nogil:
    """0, or the errno of a failed buffered write."""
    cdef ssize_t w
    cdef size_t done = 0
    while done < n:
        w = pwrite(fd, buf + done, n - done, <long>(offset + <int64_t>done))
        if w < 0:
            if errno == EINTR:
                continue
            return errno if errno else EIO
        if w == 0:
            return EIO
        done += <size_t>w
    return 0


cdef int64_t _direct_write(int64_t fd, int64_t dfd, const char *src, int64_t length,
                           int64_t offset, char **bounce, int *refused) noexcept nogil:
    """Write ``length`` bytes of ``src`` at ``offset``: through the direct descriptor, a bounce
    buffer at a time, else (refused, or the rest of a short write) through ``fd``; the errno of
    a failure, else 0."""
    cdef int64_t pos = 0
    cdef int64_t chunk
    cdef ssize_t w
    cdef void *mem = NULL
    cdef int code
    while pos < length:
        chunk = length - pos
        if chunk > <int64_t>_CHUNK:
            chunk = <int64_t>_CHUNK
        w = 0
        if dfd >= 0 and not refused[0]:
            if bounce[0] == NULL:
                if posix_memalign(&mem, _ALIGN, _CHUNK) != 0:
                    return EIO  # no memory: the caller's store is refused, nothing is written
                bounce[0] = <char *>mem
            memcpy(bounce[0], src + pos, <size_t>chunk)
            while True:
                w = pwrite(<int>dfd, bounce[0], <size_t>chunk, <long>(offset + pos))
                if w >= 0 or errno != EINTR:
                    break
            if w < 0:
                if errno == EINVAL or errno == EOPNOTSUPP:
                    refused[0] = 1  # alignment or direct I/O this file system does not take
                    w = 0
                else:
                    return errno if errno else EIO
        if w < chunk:  # refused, or a short direct write (a nearly full disk): buffered
            code = _pwrite_all(<int>fd, src + pos + w, <size_t>(chunk - w), offset + pos + w)
            if code:
                return code
        pos += chunk
    return 0


def serve(int request_fd, int answer_fd, counter=None):
    """Answer requests until a stop word or the end of the request pipe; ``counter``: a
    writable buffer of two int64s: the writes answered, the writes that failed."""
    cdef Py_buffer view
    cdef int64_t *count = NULL
    if counter is not None:
        PyObject_GetBuffer(counter, &view, PyBUF_WRITABLE)
        if view.len < 16:
            PyBuffer_Release(&view)
            raise ValueError("counter must hold two int64s")
        count = <int64_t *>view.buf
    try:
        with nogil:
            _serve(request_fd, answer_fd, count)
    finally:
        if count != NULL:
            PyBuffer_Release(&view)


cdef void _serve(int request_fd, int answer_fd, int64_t *count) noexcept nogil:
    cdef char buf[4096]
    cdef size_t have = 0
    cdef size_t pos
    cdef ssize_t got
    cdef int64_t word
    cdef int64_t args[5]
    cdef int64_t answer[2]
    cdef char *bounce = NULL
    cdef int refused = 0
    while True:
        got = read(request_fd, buf + have, sizeof(buf) - have)
        if got < 0:
            if errno == EINTR:
                continue
            break
        if got == 0:
            break  # the request pipe was closed
        have += <size_t>got
        pos = 0
        while have - pos >= 8:
            # x86-64 and aarch64 are little endian: the wire format is the native one.
            memcpy(&word, buf + pos, 8)
            if word == _WRITE:
                if have - pos < 48:
                    break  # the rest of the request is still on its way
                memcpy(args, buf + pos + 8, 40)
                pos += 48
                refused = 0
                answer[1] = _direct_write(args[0], args[1], <const char *>args[2], args[3],
                                          args[4], &bounce, &refused)
                answer[0] = _WRITE_BUFFERED if refused else _WRITE
                if count != NULL:
                    if answer[1]:
                        pacs_count_one(count + 1)
                    pacs_count_one(count)
            else:
                pos += 8
                if word < 0:
                    free(bounce)
                    return
                answer[0] = word
                answer[1] = 0
                while fdatasync(<int>word) != 0:
                    if errno != EINTR:
                        answer[1] = errno if errno else EIO
                        break
            if _write_all(answer_fd, <const char *>answer, 16) != 0:
                free(bounce)
                return
        if pos:
            memmove(buf, buf + pos, have - pos)
            have -= pos
    free(bounce)
