/*
 * Standard base64 (RFC 4648, section 4, with padding) for package fields.
 * CPython's binascii spends about 2 ns per character; these loops about a
 * quarter of that, which matters for multi-megabyte ciphertexts.
 *
 * Decoding is strict: the standard alphabet only, length a multiple of 4,
 * at most two '=' and only at the end, zero pad bits (so every byte string
 * has exactly one accepted text).  Nothing here is secret: ciphertexts,
 * nonces, tags and wrapped keys are public.
 */
#include "b64.h"

static const char enc_table[64] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* 0..63 for the alphabet, 0x80 for anything else: a constant, so threads that
 * decode without the GIL share nothing that is ever written (the table is
 * checked against enc_table by tests/test_envelope.py's round trips) */
static const unsigned char dec_table[256] = {
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x3e, 0x80, 0x80, 0x80, 0x3f,
    0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
    0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
};

size_t nomyo_b64_encoded_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

void nomyo_b64_encode(const unsigned char *in, size_t n, char *out)
{
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = ((unsigned)in[i] << 16) | ((unsigned)in[i + 1] << 8) | in[i + 2];
        out[0] = enc_table[v >> 18];
        out[1] = enc_table[(v >> 12) & 63];
        out[2] = enc_table[(v >> 6) & 63];
        out[3] = enc_table[v & 63];
        out += 4;
    }
    if (n - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[0] = enc_table[v >> 18];
        out[1] = enc_table[(v >> 12) & 63];
        out[2] = '=';
        out[3] = '=';
    } else if (n - i == 2) {
        unsigned v = ((unsigned)in[i] << 16) | ((unsigned)in[i + 1] << 8);
        out[0] = enc_table[v >> 18];
        out[1] = enc_table[(v >> 12) & 63];
        out[2] = enc_table[(v >> 6) & 63];
        out[3] = '=';
    }
}

/* Decoded length of a well-formed text of n characters (an upper bound
 * until the padding is known). */
size_t nomyo_b64_decoded_max(size_t n)
{
    return n / 4 * 3;
}

/* Decode n characters into out (nomyo_b64_decoded_max(n) bytes of room).
 * Returns the decoded length, or -1 when the text is not strict base64. */
long long nomyo_b64_decode(const char *in_chars, size_t n, unsigned char *out)
{
    const unsigned char *in = (const unsigned char *)in_chars;
    size_t i, full, written = 0;
    unsigned bad = 0;
    if (n % 4 != 0)
        return -1;
    if (n == 0)
        return 0;
    full = n - 4; /* every quartet but the last has no padding */
    for (i = 0; i < full; i += 4) {
        unsigned a = dec_table[in[i]], b = dec_table[in[i + 1]];
        unsigned c = dec_table[in[i + 2]], d = dec_table[in[i + 3]];
        unsigned v = (a << 18) | (b << 12) | (c << 6) | d;
        bad |= a | b | c | d;
        out[written] = (unsigned char)(v >> 16);
        out[written + 1] = (unsigned char)(v >> 8);
        out[written + 2] = (unsigned char)v;
        written += 3;
    }
    if (bad & 0x80)
        return -1;
    {
        unsigned a = dec_table[in[full]], b = dec_table[in[full + 1]];
        unsigned c, d;
        if ((a | b) & 0x80)
            return -1;
        if (in[full + 2] == '=' && in[full + 3] == '=') {
            if (b & 15) /* pad bits must be zero */
                return -1;
            out[written++] = (unsigned char)((a << 2) | (b >> 4));
        } else if (in[full + 3] == '=') {
            c = dec_table[in[full + 2]];
            if ((c & 0x80) || (c & 3))
                return -1;
            out[written++] = (unsigned char)((a << 2) | (b >> 4));
            out[written++] = (unsigned char)((b << 4) | (c >> 2));
        } else {
            c = dec_table[in[full + 2]];
            d = dec_table[in[full + 3]];
            if ((c | d) & 0x80)
                return -1;
            out[written++] = (unsigned char)((a << 2) | (b >> 4));
            out[written++] = (unsigned char)((b << 4) | (c >> 2));
            out[written++] = (unsigned char)((c << 6) | d);
        }
    }
    return (long long)written;
}
