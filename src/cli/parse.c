/*
 * What the user types that becomes a value: decimal numbers, durations,
 * state names. Pure functions, no messages: the callers say what was
 * wrong, and the fuzz target (tests/fuzz/fuzz_cli.c) links this file alone.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "cli/cli.h"

int
parse_u64(const char *text, uint64_t *value)
{
    uint64_t v = 0;

    if (*text == '\0')
        return -1;
    for (; *text != '\0'; text++) {
        if (*text < '0' || *text > '9')
            return -1;
        unsigned d = (unsigned)(*text - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *value = v;
    return 0;
}

/* The units of the config's durations, so that one spelling works everywhere. */
int
parse_duration_ms(const char *text, int64_t *ms)
{
    static const struct { const char *unit; int64_t scale; } units[] = {
        { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 },
    };
    const char *p = text;
    int64_t n = 0;
    int too_large = 0;          /* said only if the unit is right: -1 first */

    if (strcmp(text, "0") == 0) {
        *ms = 0;
        return 0;
    }
    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (n > (INT64_MAX - 9) / 10)
            too_large = 1;
        else
            n = n * 10 + (*p - '0');
    }
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(p, units[i].unit) == 0) {
            if (too_large || n > INT64_MAX / units[i].scale / 2)
                return -2;
            *ms = n * units[i].scale;
            return 0;
        }
    }
    return -1;
}

static const char *const state_names[] = {
    "STATE_UNSPECIFIED", "QUEUED", "STARTED", "PROGRESS", "SUCCEEDED", "FAILED", "RETRYING",
    "CANCELLED",
};

void
cli_state_name(int state, char *out, size_t size)
{
    if (state >= 0 && (size_t)state < sizeof state_names / sizeof state_names[0])
        snprintf(out, size, "%s", state_names[state]);
    else
        snprintf(out, size, "%d", state);
}

int
cli_parse_state(const char *name, wire_state_value *out)
{
    for (unsigned i = STATE_QUEUED; i < sizeof state_names / sizeof state_names[0]; i++) {
        if (strcasecmp(name, state_names[i]) == 0) {
            *out = (wire_state_value)i;
            return 0;
        }
    }
    return -1;
}
