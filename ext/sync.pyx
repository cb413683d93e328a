# cython: language_level=3
"""The compiled twin of ``pacs.store.syncer.serve_pure``: the same loop without the GIL.

Requests are 8-byte signed descriptors (little endian; negative: stop), answers 16 bytes
(descriptor, errno or 0). The thread running it never takes the GIL while it waits or syncs,
so the event loop that asks never has to hand the GIL over.
"""

from libc.errno cimport errno, EINTR, EIO
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memmove

cdef extern from "unistd.h" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)
    int fdatasync(int fd)


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


def serve(int request_fd, int answer_fd):
    """Answer fdatasync requests until a negative descriptor or the end of the request pipe."""
    with nogil:
        _serve(request_fd, answer_fd)


cdef void _serve(int request_fd, int answer_fd) noexcept nogil:
    cdef char buf[4096]
    cdef size_t have = 0
    cdef size_t pos
    cdef ssize_t got
    cdef int64_t fd
    cdef int64_t answer[2]
    while True:
        got = read(request_fd, buf + have, sizeof(buf) - have)
        if got < 0:
            if errno == EINTR:
                continue
            return
        if got == 0:
            return  # the request pipe was closed
        have += <size_t>got
        pos = 0
        while have - pos >= 8:
            # x86-64 and aarch64 are little endian: the wire format is the native one.
            memcpy(&fd, buf + pos, 8)
            pos += 8
            if fd < 0:
                return
            answer[0] = fd
            answer[1] = 0
            while fdatasync(<int>fd) != 0:
                if errno != EINTR:
                    answer[1] = errno if errno else EIO
                    break
            if _write_all(answer_fd, <const char *>answer, 16) != 0:
                return
        if pos:
            memmove(buf, buf + pos, have - pos)
            have -= pos
