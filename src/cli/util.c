/*
 * Small things the commands share: the clock, files, the --state option.
 * The parsers of numbers, durations and state names are in parse.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/alloc.h"
#include "core/utf8.h"

size_t
cli_put_shown(FILE *out, const char *text, size_t len)
{
    size_t columns = 0;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)text[i];
        size_t n = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;
        int shown = n > 0 && i + n <= len && (n == 1 || utf8_valid(text + i, n)) &&
                    c >= 0x20 && c != 0x7f &&
                    !(c == 0xc2 && (unsigned char)text[i + 1] < 0xa0);   /* C1 */
        if (!shown) {
            fprintf(out, "\\x%02x", c);
            columns += 4;
            i++;
            continue;
        }
        fwrite(text + i, 1, n, out);
        columns++;
        i += n;
    }
    return columns;
}

int64_t
clock_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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
