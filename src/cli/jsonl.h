/*
 * The fields the CLI's JSON lines share (jsonl.c), printed on stdout the
 * same way whoever prints them: get and list --json (items), watch
 * (updates), submit --wait --results (final updates). Each prints ","
 * and then the field: the caller opens and closes the object.
 */
#ifndef DS_CLI_JSONL_H
#define DS_CLI_JSONL_H

#include <stddef.h>
#include <stdint.h>

/* ,"NAME":"VALUE" (VALUE as JSON escapes it). */
void jsonl_string(const char *name, const char *value);

/* ,"progress":N (a float has 24 bits: 9 digits say it exactly), or null
 * for NaN, which is no JSON number. */
void jsonl_progress(float progress);

/* ,"error":"ERROR","result_b64":"..." (the LEN bytes of RESULT). */
void jsonl_error_result(const char *error, const uint8_t *result, size_t len);

#endif
