/* protobuf's wire format by hand (pbwire.h). */
#include "core/pbwire.h"

int
pbwire_varint(const uint8_t *buf, size_t len, size_t *i, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 70 && *i < len; shift += 7) {   /* 10 bytes at most */
        uint8_t c = buf[(*i)++];
        if (shift < 64)
            v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

int
pbwire_next(const uint8_t *buf, size_t len, size_t *i, struct pbwire_field *f)
{
    uint64_t tag;
    if (*i >= len)
        return 0;
    if (pbwire_varint(buf, len, i, &tag) == -1 || tag >> 3 == 0 || tag >> 3 > 0x1fffffff)
        return -1;
    f->number = (uint32_t)(tag >> 3);
    f->type = (int)(tag & 7);
    f->value = 0;
    f->bytes = NULL;
    f->len = 0;
    switch (f->type) {
    case PBWIRE_VARINT:
        return pbwire_varint(buf, len, i, &f->value) == 0 ? 1 : -1;
    case PBWIRE_I64:
        if (len - *i < 8)
            return -1;
        *i += 8;
        return 1;
    case PBWIRE_LEN:
        if (pbwire_varint(buf, len, i, &f->value) == -1 || f->value > len - *i)
            return -1;
        f->bytes = buf + *i;
        f->len = (size_t)f->value;
        *i += f->len;
        return 1;
    case PBWIRE_I32:
        if (len - *i < 4)
            return -1;
        *i += 4;
        return 1;
    default:
        return -1;
    }
}

uint8_t *
pbwire_put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

size_t
pbwire_varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}
