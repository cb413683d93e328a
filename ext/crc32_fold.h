/* CRC-32 (the polynomial and conventions of zlib's crc32) by carry-less multiplication.
 *
 * Method: Gopal et al., "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ
 * Instruction" (Intel, 2009), bit-reflected form. Four 128-bit lanes are folded 64 bytes at a
 * time, then into one lane; the lane (16 bytes, congruent to everything folded so far) and the
 * bytes left over go through the byte-wise table. The fold constants are derived from the
 * polynomial at first use (x^n mod P), not typed in, and every result is checked against zlib
 * by the tests.
 */
#ifndef PACS_CRC32_FOLD_H
#define PACS_CRC32_FOLD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PACS_CRC32_POLY 0xEDB88320u /* reflected 0x04C11DB7 */

static uint32_t pacs_crc32_table[256];
/* Fold multipliers (pacs_fold_k) for 512 and 128 bits. */
static uint64_t pacs_k512_lo, pacs_k512_hi, pacs_k128_lo, pacs_k128_hi;
static int pacs_crc32_ready = 0;
static int pacs_crc32_has_clmul = 0;

static uint32_t pacs_crc32_bytes(uint32_t crc, const unsigned char *p, size_t n) {
    while (n--) crc = pacs_crc32_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

/* x^n mod P in the reflected domain, as the 32-bit remainder (bit 31 = x^0). */
static uint32_t pacs_xpow_mod(unsigned n) {
    /* Start with x^0 = 1 (reflected: 0x80000000) and multiply by x n times. */
    uint32_t r = 0x80000000u;
    while (n--) r = (r & 1) ? (r >> 1) ^ PACS_CRC32_POLY : r >> 1;
    return r;
}

/* A fold multiplier: x^n mod P (reflected) shifted left by one, the form a reflected 64x64
 * carry-less product needs. A lane moved d bits on multiplies its low half by n = d + 32 and
 * its high half by n = d - 32. */
static uint64_t pacs_fold_k(unsigned n) { return ((uint64_t)pacs_xpow_mod(n)) << 1; }

static void pacs_crc32_init(void) {
    if (pacs_crc32_ready) return;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ PACS_CRC32_POLY : c >> 1;
        pacs_crc32_table[i] = c;
    }
    pacs_k512_lo = pacs_fold_k(4 * 128 + 32);
    pacs_k512_hi = pacs_fold_k(4 * 128 - 32);
    pacs_k128_lo = pacs_fold_k(128 + 32);
    pacs_k128_hi = pacs_fold_k(128 - 32);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    pacs_crc32_has_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse2");
#endif
    pacs_crc32_ready = 1;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

__attribute__((target("pclmul,sse2")))
static inline __m128i pacs_fold(__m128i x, __m128i k, __m128i next) {
    __m128i lo = _mm_clmulepi64_si128(x, k, 0x00);
    __m128i hi = _mm_clmulepi64_si128(x, k, 0x11);
    return _mm_xor_si128(_mm_xor_si128(lo, hi), next);
}

/* The raw register (no final inversion) after ``n`` >= 64 bytes, from register ``crc``. */
__attribute__((target("pclmul,sse2")))
static uint32_t pacs_crc32_clmul(uint32_t crc, const unsigned char *p, size_t n) {
    const __m128i k512 = _mm_set_epi64x((long long)pacs_k512_hi, (long long)pacs_k512_lo);
    const __m128i k128 = _mm_set_epi64x((long long)pacs_k128_hi, (long long)pacs_k128_lo);
    __m128i x0 = _mm_loadu_si128((const __m128i *)(p + 0));
    __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 48));
    /* The register's start value acts on the first four bytes. */
    x0 = _mm_xor_si128(x0, _mm_cvtsi32_si128((int)crc));
    p += 64;
    n -= 64;
    while (n >= 64) {
        x0 = pacs_fold(x0, k512, _mm_loadu_si128((const __m128i *)(p + 0)));
        x1 = pacs_fold(x1, k512, _mm_loadu_si128((const __m128i *)(p + 16)));
        x2 = pacs_fold(x2, k512, _mm_loadu_si128((const __m128i *)(p + 32)));
        x3 = pacs_fold(x3, k512, _mm_loadu_si128((const __m128i *)(p + 48)));
        p += 64;
        n -= 64;
    }
    x0 = pacs_fold(x0, k128, x1);
    x0 = pacs_fold(x0, k128, x2);
    x0 = pacs_fold(x0, k128, x3);
    while (n >= 16) {
        x0 = pacs_fold(x0, k128, _mm_loadu_si128((const __m128i *)p));
        p += 16;
        n -= 16;
    }
    unsigned char lane[16];
    _mm_storeu_si128((__m128i *)lane, x0);
    return pacs_crc32_bytes(pacs_crc32_bytes(0, lane, 16), p, n);
}
#endif

/* zlib.crc32(data, value): the running CRC-32 ``value`` continued over ``n`` bytes. */
static uint32_t pacs_crc32(uint32_t value, const unsigned char *p, size_t n) {
    uint32_t crc = ~value;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (pacs_crc32_has_clmul && n >= 64) return ~pacs_crc32_clmul(crc, p, n);
#endif
    return ~pacs_crc32_bytes(crc, p, n);
}

#endif
