/*
 * One line redrawn in place: sent, accepted, finished (with --wait), rate.
 * Short submits never show it: it would only flicker.
 */
#include "cli/progress.h"

#include <stdio.h>
#include <unistd.h>

#include "cli/cli.h"

#define PROGRESS_AFTER     1000    /* items sent before the line appears */
#define PROGRESS_EVERY_MS  100
#define BAR_WIDTH          20

void
progress_init(struct progress *p)
{
    p->enabled = isatty(STDERR_FILENO);
    p->visible = 0;
    p->start_ms = clock_now_ms();
    p->drawn_ms = 0;
}

void
progress_update(struct progress *p, const struct progress_counts *c)
{
    if (!p->enabled || c->sent <= PROGRESS_AFTER)
        return;
    int64_t now = clock_now_ms();
    if (p->visible && now - p->drawn_ms < PROGRESS_EVERY_MS)
        return;
    p->drawn_ms = now;
    p->visible = 1;

    double seconds = (double)(now - p->start_ms) / 1000.0;
    uint64_t done = c->waiting ? c->finished : c->sent;
    char line[160];
    int n = snprintf(line, sizeof line, "sent %llu", (unsigned long long)c->sent);
    if (c->accepted_known)
        n += snprintf(line + n, sizeof line - (size_t)n, "  accepted %llu",
                      (unsigned long long)c->accepted);
    if (c->waiting) {
        n += snprintf(line + n, sizeof line - (size_t)n, "  finished %llu",
                      (unsigned long long)c->finished);
        if (c->accepted_known && c->accepted > 0) {
            int fill = (int)((double)c->finished / (double)c->accepted * BAR_WIDTH);
            if (fill > BAR_WIDTH)
                fill = BAR_WIDTH;
            n += snprintf(line + n, sizeof line - (size_t)n, " [%.*s%*s]", fill,
                          "####################", BAR_WIDTH - fill, "");
        }
    }
    if (seconds > 0.5)
        snprintf(line + n, sizeof line - (size_t)n, "  %.0f/s", (double)done / seconds);
    fprintf(stderr, "\r\033[K%s", line);
    fflush(stderr);
}

void
progress_clear(struct progress *p)
{
    if (!p->visible)
        return;
    fputs("\r\033[K", stderr);
    fflush(stderr);
    p->visible = 0;
}
