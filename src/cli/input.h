/*
 * Lines from stdin or files, one after the other, read with a bounded wait:
 * the caller keeps serving its calls while a slow producer writes.
 */
#ifndef DS_CLI_INPUT_H
#define DS_CLI_INPUT_H

#include <stddef.h>
#include <stdint.h>

struct input {
    int *fds;                 /* one per path, opened up front; -1 once done */
    char **paths;             /* "-" is stdin */
    size_t count;
    size_t index;             /* the file being read */
    const char *name;         /* of that file, for messages: a path or "stdin" */
    uint64_t line;            /* the number of the line last returned */
    char *buf;                /* unread bytes are buf[start, end) */
    size_t start, end, scan, size;
    int at_eof;               /* the current file has no more bytes */
};

/* Open every path (none: stdin). Returns 0, or -1 after a message. */
int input_open(struct input *in, char **paths, size_t count);

/*
 * The next line, without its '\n' (the last line of a file may lack one):
 * returns 1 with *line (valid until the next call) and *len; 0 at the end
 * of every file; -2 when no whole line came within timeout_ms; -1 after a
 * read error (with a message).
 */
int input_next(struct input *in, int timeout_ms, char **line, size_t *len);

void input_close(struct input *in);

#endif
