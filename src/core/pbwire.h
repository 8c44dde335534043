/*
 * protobuf's wire format by hand, where protobuf-c's unpack would cost more
 * than it answers: a few top-level fields read in place (an Update's id,
 * kind, state and batch from cluster mode's update stream, a WorkItem's
 * trace fields, a health check's status), and a varint written.
 */
#ifndef DS_CORE_PBWIRE_H
#define DS_CORE_PBWIRE_H

#include <stddef.h>
#include <stdint.h>

enum { PBWIRE_VARINT = 0, PBWIRE_I64 = 1, PBWIRE_LEN = 2, PBWIRE_I32 = 5 };

/* One top-level field, as pbwire_next() read it; BYTES point into the
 * message. */
struct pbwire_field {
    uint32_t number;
    int type;                   /* PBWIRE_* */
    uint64_t value;             /* PBWIRE_VARINT's */
    const uint8_t *bytes;       /* PBWIRE_LEN's, LEN of them */
    size_t len;
};

/* The varint at BUF[*I] (LEN bytes in all) into *OUT, *I past it; -1 if it
 * runs past LEN or past 10 bytes. */
int pbwire_varint(const uint8_t *buf, size_t len, size_t *i, uint64_t *out);

/* The field at BUF[*I] into *F, *I past it: 1; 0 at the end; -1 if the
 * bytes are no field (cut short, a field number 0 or past 2^29 - 1, a
 * wire type of groups or none). Unknown fields are the caller's to skip. */
int pbwire_next(const uint8_t *buf, size_t len, size_t *i, struct pbwire_field *f);

/* V as a varint at P (at most 10 bytes); returns the byte after it. */
uint8_t *pbwire_put_varint(uint8_t *p, uint64_t v);
/* The bytes pbwire_put_varint() writes for V. */
size_t pbwire_varint_size(uint64_t v);

#endif
