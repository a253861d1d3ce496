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

static inline size_t nomyo_plain_run(const unsigned char *p, size_t n)
{
    size_t i = 0;
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

#endif
