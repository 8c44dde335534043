#include "core/utf8.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

size_t
utf8_decode(const char *s, size_t avail, uint32_t *cp)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n;
    uint32_t c, min;

    if (avail == 0)
        return 0;
    if (p[0] < 0x80) {
        n = 1, c = p[0], min = 0;
    } else if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        n = 2, c = p[0] & 0x1f, min = 0x80;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        n = 3, c = p[0] & 0x0f, min = 0x800;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        n = 4, c = p[0] & 0x07, min = 0x10000;
    } else {
        return 0;       /* a continuation byte, 0xc0/0xc1 (always overlong), or 0xf5.. */
    }
    if (avail < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        c = c << 6 | (p[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;       /* overlong, out of range, or a surrogate */
    if (cp != NULL)
        *cp = c;
    return n;
}

int
utf8_valid(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if ((unsigned char)s[i] < 0x80) {       /* the common case, fast */
            i++;
            continue;
        }
        size_t n = utf8_decode(s + i, len - i, NULL);
        if (n == 0)
            return 0;
        i += n;
    }
    return 1;
}

size_t
utf8_prefix(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t i = 0;
    while (i < max) {
        size_t n = utf8_decode(s + i, len - i, NULL);
        if (n == 0)
            n = 1;      /* a stray byte is a unit of its own */
        if (i + n > max)
            break;
        i += n;
    }
    return i;
}

char *
utf8_sanitize(const char *s, size_t len)
{
    if (utf8_valid(s, len))
        return NULL;
    char *out = ds_malloc(3 * len + 1), *o = out;
    size_t i = 0;
    while (i < len) {
        size_t n = utf8_decode(s + i, len - i, NULL);
        if (n == 0) {
            memcpy(o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        } else {
            memcpy(o, s + i, n);
            o += n;
            i += n;
        }
    }
    *o = '\0';
    return out;
}

/* The escaped form of the character (or stray byte) at S into UNIT (8
 * bytes); its length there, and the bytes of S it takes in *TAKEN. */
static size_t
escape_unit(const char *s, size_t avail, char *unit, size_t *taken)
{
    uint32_t cp;
    size_t n = utf8_decode(s, avail, &cp);
    *taken = n == 0 ? 1 : n;
    if (n == 0)
        return (size_t)snprintf(unit, 8, "\\x%02x", (unsigned char)s[0]);
    if (cp == '\\' || cp == '"') {
        unit[0] = '\\', unit[1] = (char)cp;
        return 2;
    }
    if (cp == '\n' || cp == '\r' || cp == '\t') {
        unit[0] = '\\', unit[1] = cp == '\n' ? 'n' : cp == '\r' ? 'r' : 't';
        return 2;
    }
    if (cp < 0x20 || cp == 0x7f)
        return (size_t)snprintf(unit, 8, "\\x%02x", (unsigned)cp);
    if ((cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029)
        return (size_t)snprintf(unit, 8, "\\u%04x", (unsigned)cp);
    memcpy(unit, s, n);
    return n;
}

const char *
utf8_escape(char *buf, size_t size, const char *s)
{
    size_t len = strlen(s), i, o = 0, n, u;
    char unit[8];
    /* Does it all fit? Otherwise keep room for the "..." that says it did not. */
    size_t total = 0;
    for (i = 0; i < len; i += n)
        total += escape_unit(s + i, len - i, unit, &n);
    size_t reserve = total + 1 <= size ? 0 : 3;
    for (i = 0; i < len; i += n) {
        u = escape_unit(s + i, len - i, unit, &n);
        if (o + u + reserve + 1 > size)
            break;
        memcpy(buf + o, unit, u);
        o += u;
    }
    if (i < len) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}
