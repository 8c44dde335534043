/*
 * The fields the CLI's JSON lines share (jsonl.h).
 */
#include "cli/jsonl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/json.h"

void
jsonl_string(const char *name, const char *value)
{
    printf(",\"%s\":", name);
    json_write_string(stdout, value, strlen(value));
}

void
jsonl_progress(float progress)
{
    if (progress == progress)
        printf(",\"progress\":%.9g", (double)progress);
    else
        printf(",\"progress\":null");
}

void
jsonl_error_result(const char *error, const uint8_t *result, size_t len)
{
    jsonl_string("error", error);
    char *b64 = base64_encode(result, len);
    jsonl_string("result_b64", b64);
    free(b64);
}
