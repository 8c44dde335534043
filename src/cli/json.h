/*
 * JSON for JSON lines: a parser into a small tree (one line is one value),
 * a string writer, and base64 for bytes.
 */
#ifndef DS_CLI_JSON_H
#define DS_CLI_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum json_type {
    JSON_NULL,
    JSON_FALSE,
    JSON_TRUE,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT,
};

struct json {
    enum json_type type;
    /* STRING: the decoded bytes (valid UTF-8, may hold NULs), NUL-terminated;
     * NUMBER: the literal as written. */
    char *text;
    size_t length;
    /* ARRAY: the elements; OBJECT: key, value, key, value... (keys are STRINGs) */
    struct json *items;
    size_t count;
};

/* Parse the whole of text (len bytes) as one value. Returns 0, or -1 with
 * "at column N: reason" in err. */
int json_parse(const char *text, size_t len, struct json *out, char *err, size_t err_size);
void json_free(struct json *value);
const char *json_type_name(enum json_type type);

/* A JSON string of len bytes; bytes that are not UTF-8 become U+FFFD; control
 * characters (C0, DEL, C1: U+0080..U+009F) are escaped (\n, \u001b, \u009b). */
void json_write_string(FILE *out, const char *s, size_t len);

/* base64 (RFC 4648, with padding). */
char *base64_encode(const uint8_t *data, size_t len);
/* Decodes padded or unpadded base64; whitespace is not allowed. Returns a
 * malloc'ed buffer (*out_len bytes), or NULL if text is not base64. */
uint8_t *base64_decode(const char *text, size_t len, size_t *out_len);

#endif
