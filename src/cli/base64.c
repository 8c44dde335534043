/*
 * base64 (RFC 4648, standard alphabet): payload_b64 in, result_b64 out.
 */
#include <stdlib.h>
#include <string.h>

#include "cli/json.h"
#include "core/alloc.h"

static const char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *
base64_encode(const uint8_t *data, size_t len)
{
    char *out = ds_malloc((len + 2) / 3 * 4 + 1), *o = out;
    size_t i = 0;

    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = alphabet[(v >> 6) & 63];
        *o++ = alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)data[i] << 16;
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8;
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = alphabet[(v >> 6) & 63];
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

static int
sextet(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

uint8_t *
base64_decode(const char *text, size_t len, size_t *out_len)
{
    /* Padding only at the end, and only to a multiple of four. */
    size_t pad = 0;
    while (pad < 2 && len > pad && text[len - 1 - pad] == '=')
        pad++;
    if (pad > 0 && len % 4 != 0)
        return NULL;
    size_t n = len - pad;
    if (n % 4 == 1)
        return NULL;

    uint8_t *out = ds_malloc(n / 4 * 3 + 3), *o = out;
    uint32_t v = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int s = sextet((unsigned char)text[i]);
        if (s < 0) {
            free(out);
            return NULL;
        }
        v = v << 6 | (uint32_t)s;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *o++ = (uint8_t)(v >> bits);
            v &= (1u << bits) - 1;
        }
    }
    /* The bits left over must be zero: one encoding per byte string. */
    if (v != 0) {
        free(out);
        return NULL;
    }
    *out_len = (size_t)(o - out);
    return out;
}
