/*
 * Small things the commands share: the clock, numbers, durations, files,
 * the names of states.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/alloc.h"

int64_t
clock_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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

    if (strcmp(text, "0") == 0) {
        *ms = 0;
        return 0;
    }
    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (n > (INT64_MAX - 9) / 10)
            return -1;
        n = n * 10 + (*p - '0');
    }
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(p, units[i].unit) == 0) {
            if (n > INT64_MAX / units[i].scale / 2)
                return -1;
            *ms = n * units[i].scale;
            return 0;
        }
    }
    return -1;
}

char *
read_text_file(const char *path, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        cli_error("cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t size = 4096, len = 0;
    char *text = ds_malloc(size);
    for (;;) {
        if (len + 1 == size) {
            if (size > max) {
                cli_error("%s: larger than %zu bytes", path, max);
                free(text);
                close(fd);
                return NULL;
            }
            size *= 2;
            text = ds_realloc(text, size);
        }
        ssize_t n = read(fd, text + len, size - 1 - len);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1) {
            cli_error("cannot read %s: %s", path, strerror(errno));
            free(text);
            close(fd);
            return NULL;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    text[len] = '\0';
    return text;
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
cli_state_option(const char *command, const char *name, wire_state_value *states, size_t *n)
{
    wire_state_value state;
    if (cli_parse_state(name, &state) == -1)
        return cli_usage_error(command, "--state takes QUEUED, STARTED, PROGRESS, SUCCEEDED, "
                               "FAILED, RETRYING or CANCELLED, not \"%s\"", name);
    size_t i = 0;
    while (i < *n && states[i] != state)
        i++;
    if (i == *n)
        states[(*n)++] = state;
    return 0;
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
