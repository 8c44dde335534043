/*
 * The progress line of a long submit, on stderr when it is a terminal.
 */
#ifndef DS_CLI_PROGRESS_H
#define DS_CLI_PROGRESS_H

#include <stdint.h>

struct progress {
    int enabled;              /* stderr is a terminal */
    int visible;              /* a line is on the screen */
    int64_t start_ms;
    int64_t drawn_ms;
};

struct progress_counts {
    uint64_t sent;
    uint64_t accepted;
    int accepted_known;       /* the reply came */
    uint64_t finished;
    int waiting;              /* --wait: show finished */
};

void progress_init(struct progress *p);
/* Redraw, at most every 100 ms, once more than PROGRESS_AFTER items were sent. */
void progress_update(struct progress *p, const struct progress_counts *c);
/* Erase the line before anything else is printed. */
void progress_clear(struct progress *p);

#endif
