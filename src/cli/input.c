/*
 * Lines from stdin or files. poll() before every read() so that a wait is
 * never longer than asked; descriptors stay blocking (stdin may be shared
 * with the shell, and O_NONBLOCK would leak to it).
 */
#include "cli/input.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/alloc.h"
#include "core/config.h"

#define READ_CHUNK   (64 * 1024)
/* Nothing longer fits in a message the server would take. */
#define LINE_MAX_LEN DS_MESSAGE_SIZE_MAX

static char stdin_path[] = "-";

int
input_open(struct input *in, char **paths, size_t count)
{
    static char *stdin_only[] = { stdin_path };

    memset(in, 0, sizeof *in);
    if (count == 0) {
        paths = stdin_only;
        count = 1;
    }
    in->paths = paths;
    in->count = count;
    in->fds = ds_malloc(count * sizeof *in->fds);
    for (size_t i = 0; i < count; i++) {
        if (strcmp(paths[i], "-") == 0) {
            in->fds[i] = 0;
            continue;
        }
        in->fds[i] = open(paths[i], O_RDONLY | O_CLOEXEC);
        if (in->fds[i] == -1) {
            cli_error("cannot open %s: %s", paths[i], strerror(errno));
            for (size_t j = 0; j < i; j++)
                if (in->fds[j] > 0)
                    close(in->fds[j]);
            free(in->fds);
            in->fds = NULL;
            return -1;
        }
    }
    in->size = READ_CHUNK;
    in->buf = ds_malloc(in->size);
    in->name = strcmp(paths[0], "-") == 0 ? "stdin" : paths[0];
    return 0;
}

static void
next_file(struct input *in)
{
    if (in->fds[in->index] > 0)
        close(in->fds[in->index]);
    in->fds[in->index] = -1;
    in->index++;
    in->line = 0;
    in->at_eof = 0;
    in->start = in->end = in->scan = 0;
    if (in->index < in->count)
        in->name = strcmp(in->paths[in->index], "-") == 0 ? "stdin" : in->paths[in->index];
}

/* Room for at least READ_CHUNK more bytes after end. */
static void
make_room(struct input *in)
{
    if (in->start > 0) {
        memmove(in->buf, in->buf + in->start, in->end - in->start);
        in->end -= in->start;
        in->scan -= in->start;
        in->start = 0;
    }
    if (in->size - in->end < READ_CHUNK) {
        in->size = in->size * 2 > in->end + READ_CHUNK ? in->size * 2 : in->end + READ_CHUNK;
        in->buf = ds_realloc(in->buf, in->size);
    }
}

static int
line_too_long(struct input *in)
{
    cli_error("%s:%llu: line longer than %u bytes", in->name, (unsigned long long)in->line + 1,
              (unsigned)LINE_MAX_LEN);
    return -1;
}

int
input_next(struct input *in, int timeout_ms, char **line, size_t *len)
{
    for (;;) {
        if (in->index >= in->count)
            return 0;
        char *nl = memchr(in->buf + in->scan, '\n', in->end - in->scan);
        if (nl != NULL || (in->at_eof && in->end > in->start)) {
            size_t stop = nl != NULL ? (size_t)(nl - in->buf) : in->end;
            /* The check below sees only a line still without its end; one
             * whose end came in the same read() as its last bytes is here. */
            if (stop - in->start > LINE_MAX_LEN)
                return line_too_long(in);
            *line = in->buf + in->start;
            *len = stop - in->start;
            in->start = in->scan = nl != NULL ? stop + 1 : stop;
            in->line++;
            return 1;
        }
        in->scan = in->end;
        if (in->at_eof) {
            next_file(in);
            continue;
        }
        if (in->end - in->start > LINE_MAX_LEN)
            return line_too_long(in);
        if (in->start > in->size / 2 || in->size - in->end < READ_CHUNK)
            make_room(in);

        struct pollfd pfd = { .fd = in->fds[in->index], .events = POLLIN };
        int r = poll(&pfd, 1, timeout_ms);
        if (r == 0 || (r == -1 && errno == EINTR))
            return -2;
        if (r == -1) {
            cli_error("poll() on %s failed: %s", in->name, strerror(errno));
            return -1;
        }
        ssize_t n = read(pfd.fd, in->buf + in->end, in->size - in->end);
        if (n == -1 && (errno == EINTR || errno == EAGAIN))
            return -2;
        if (n == -1) {
            cli_error("cannot read %s: %s", in->name, strerror(errno));
            return -1;
        }
        if (n == 0)
            in->at_eof = 1;
        in->end += (size_t)n;
        /* Waited once already: look at what came, then do not wait again. */
        timeout_ms = 0;
    }
}

void
input_close(struct input *in)
{
    if (in->fds != NULL)
        for (size_t i = in->index; i < in->count; i++)
            if (in->fds[i] > 0)
                close(in->fds[i]);
    free(in->fds);
    free(in->buf);
    memset(in, 0, sizeof *in);
}
