/* Word-at-a-time scanning for the JSON codec (csrc/jsonenc.c, csrc/jsondec.c):
 * how many bytes from the start of a buffer are "plain" in a JSON string,
 * i.e. printable ASCII other than '"' and '\\' (nothing to escape or decode). */
#ifndef NOMYO_JSONSCAN_H
#define NOMYO_JSONSCAN_H

#include <stdint.h>
#include <string.h>

#define NOMYO_ONES 0x0101010101010101ULL
#define NOMYO_HIGHS 0x8080808080808080ULL

/* nonzero when some byte of w is below 0x20, at or above 0x80, '"' or '\\';
 * each test is the classic "has a zero byte" one, exact for "any byte" */
static inline uint64_t nomyo_special8(uint64_t w)
{
    uint64_t quote = w ^ (NOMYO_ONES * '"');
    uint64_t slash = w ^ (NOMYO_ONES * '\\');
    uint64_t low = (w - NOMYO_ONES * 0x20) & ~w;
    return (w | low | ((quote - NOMYO_ONES) & ~quote) | ((slash - NOMYO_ONES) & ~slash)) &
           NOMYO_HIGHS;
}

#define NOMYO_PLAIN(c) ((c) >= 0x20 && (c) < 0x80 && (c) != '"' && (c) != '\\')

/* the plain run of p[i..n), 8 bytes at a time, then byte by byte */
static inline size_t nomyo_plain_tail(const unsigned char *p, size_t n, size_t i)
{
    uint64_t w;
    while (i + 8 <= n) {
        memcpy(&w, p + i, 8);
        if (nomyo_special8(w))
            break;
        i += 8;
    }
    while (i < n && NOMYO_PLAIN(p[i]))
        i++;
    return i;
}

#if defined(__SSE2__)
#include <emmintrin.h>

/* 16 bytes at a time: as signed bytes, everything at or above 0x80 is below
 * 0x20 too, so one compare finds control and non-ASCII bytes */
static inline size_t nomyo_plain_run(const unsigned char *p, size_t n)
{
    size_t i = 0;
    const __m128i space = _mm_set1_epi8(0x20);
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i slash = _mm_set1_epi8('\\');
    while (i + 16 <= n) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        __m128i bad = _mm_or_si128(_mm_cmplt_epi8(v, space),
                                   _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, slash)));
        int mask = _mm_movemask_epi8(bad);
        if (mask != 0)
            return i + (size_t)__builtin_ctz((unsigned)mask);
        i += 16;
    }
    return nomyo_plain_tail(p, n, i);
}
#else
static inline size_t nomyo_plain_run(const unsigned char *p, size_t n)
{
    return nomyo_plain_tail(p, n, 0);
}
#endif

#endif
