/* Strict standard base64 (b64.c): no allocation, no Python, nothing secret. */
#ifndef NOMYO_B64_H
#define NOMYO_B64_H

#include <stddef.h>

/* the encoded length of n bytes (with padding) */
size_t nomyo_b64_encoded_len(size_t n);
/* writes exactly nomyo_b64_encoded_len(n) characters to out */
void nomyo_b64_encode(const unsigned char *in, size_t n, char *out);
/* room the decoding of n characters may need */
size_t nomyo_b64_decoded_max(size_t n);
/* bytes written to out, or -1 when the text is not strict, canonical base64 */
long long nomyo_b64_decode(const char *in, size_t n, unsigned char *out);

#endif
