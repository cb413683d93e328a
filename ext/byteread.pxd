# Inline byte readers for the tag scanner (PS3.5 Section 7.3 byte ordering).
#
# Callers check bounds first: these read exactly 2 or 4 bytes at ``p``.

from libc.stdint cimport uint8_t, uint32_t


cdef inline uint32_t rd16(const uint8_t* p, bint little) noexcept nogil:
    if little:
        return <uint32_t>p[0] | (<uint32_t>p[1] << 8)
    return (<uint32_t>p[0] << 8) | <uint32_t>p[1]


cdef inline uint32_t rd32(const uint8_t* p, bint little) noexcept nogil:
    if little:
        return (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
                | (<uint32_t>p[3] << 24))
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8)
            | <uint32_t>p[3])


cdef inline uint32_t rdtag(const uint8_t* p, bint little) noexcept nogil:
    return (rd16(p, little) << 16) | rd16(p + 2, little)


cdef inline bint is_upper(uint8_t c) noexcept nogil:
    return 0x41 <= c <= 0x5A


cdef inline bint is_long_vr(uint8_t a, uint8_t b) noexcept nogil:
    # OB OD OF OL OV OW SQ SV UC UN UR UT UV: 2 reserved bytes, then a 32-bit length.
    if a == 0x4F:  # O
        return b == 0x42 or b == 0x44 or b == 0x46 or b == 0x4C or b == 0x56 or b == 0x57
    if a == 0x53:  # S
        return b == 0x51 or b == 0x56
    if a == 0x55:  # U
        return b == 0x43 or b == 0x4E or b == 0x52 or b == 0x54 or b == 0x56
    return False
