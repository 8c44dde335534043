/*
 * A fake worker for the unit tests of the queue and the store: the test
 * holds one end of a socketpair, the queue the other (workers_attach), and
 * plays the worker by reading IPC_ITEM frames and writing IPC_UPDATE
 * frames, while the test drives the event loop. Included by the test files
 * that need it (each unit test is one .c file); functions are static
 * inline so a file that uses only some of them builds without warnings.
 */
#ifndef DS_TESTS_FAKE_WORKER_H
#define DS_TESTS_FAKE_WORKER_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "core/wire.h"
#include "grpc/queue.h"
#include "ipc/frame.h"

/* Bound on loop iterations while waiting for something: a test that
 * waits longer has failed (no test asserts on how long anything takes). */
#define FAKE_LOOP_MAX 2000

/* One item as the worker received it. */
struct fake_item {
    uint64_t key;
    uint32_t attempt;
    char kind[64];
    char id[300];
    uint32_t raw_len;
};

/* The test's end of one worker's data channel. */
struct fake_worker {
    pid_t pid;
    uint32_t slot;
    int fd;                     /* ours; -1 once closed */
    uint8_t in[1 << 16];        /* bytes read, not yet a whole frame */
    size_t in_len;
    int eof;                    /* the queue closed its end */
    struct fake_item items[128];
    size_t count;               /* items received so far */
    struct {
        uint64_t key;
        uint32_t attempt;
    } cancels[32];              /* IPC_CANCEL frames received */
    size_t cancel_count;
    struct ipc_reattempt reattempts[32];    /* IPC_REATTEMPT frames received */
    size_t reattempt_count;
};

/* Attach W as worker PID in SLOT: the queue gets the other end. */
static inline void
fake_attach(struct fake_worker *w, pid_t pid, uint32_t slot)
{
    int sv[2];
    memset(w, 0, sizeof *w);
    /* As the master makes a worker's data channel (master.c). */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1)
        fail_msg("socketpair() failed: %s", strerror(errno));
    w->pid = pid;
    w->slot = slot;
    w->fd = sv[1];
    fcntl(w->fd, F_SETFL, fcntl(w->fd, F_GETFL) | O_NONBLOCK);
    workers_attach(pid, slot, sv[0]);
}

static inline void
fake_close(struct fake_worker *w)
{
    if (w->fd != -1)
        close(w->fd);
    w->fd = -1;
}

/* Take the whole frames in w->in: IPC_ITEM, IPC_CANCEL and IPC_REATTEMPT. */
static inline void
fake_parse(struct fake_worker *w)
{
    size_t off = 0;
    while (w->in_len - off >= IPC_HEADER_SIZE) {
        struct ipc_header h;
        memcpy(&h, w->in + off, sizeof h);
        if (w->in_len - off < IPC_HEADER_SIZE + h.length)
            break;
        if (h.type == IPC_CANCEL) {
            struct ipc_cancel c;
            assert_int_equal(h.length, sizeof c);
            assert_true(w->cancel_count < sizeof w->cancels / sizeof w->cancels[0]);
            memcpy(&c, w->in + off + IPC_HEADER_SIZE, sizeof c);
            w->cancels[w->cancel_count].key = c.key;
            w->cancels[w->cancel_count++].attempt = c.attempt;
            off += IPC_HEADER_SIZE + h.length;
            continue;
        }
        if (h.type == IPC_REATTEMPT) {
            assert_int_equal(h.length, sizeof(struct ipc_reattempt));
            assert_true(w->reattempt_count < sizeof w->reattempts / sizeof w->reattempts[0]);
            memcpy(&w->reattempts[w->reattempt_count++], w->in + off + IPC_HEADER_SIZE,
                   sizeof(struct ipc_reattempt));
            off += IPC_HEADER_SIZE + h.length;
            continue;
        }
        assert_int_equal(h.type, IPC_ITEM);
        assert_true(h.length >= sizeof(struct ipc_item));
        struct ipc_item head;
        const uint8_t *body = w->in + off + IPC_HEADER_SIZE;
        memcpy(&head, body, sizeof head);
        assert_true(sizeof head + head.kind_len + head.id_len <= h.length);
        assert_true(w->count < sizeof w->items / sizeof w->items[0]);
        struct fake_item *it = &w->items[w->count++];
        it->key = head.key;
        it->attempt = head.attempt;
        assert_true(head.kind_len < sizeof it->kind && head.id_len < sizeof it->id);
        memcpy(it->kind, body + sizeof head, head.kind_len);
        it->kind[head.kind_len] = '\0';
        memcpy(it->id, body + sizeof head + head.kind_len, head.id_len);
        it->id[head.id_len] = '\0';
        it->raw_len = h.length - (uint32_t)(sizeof head + head.kind_len + head.id_len);
        off += IPC_HEADER_SIZE + h.length;
    }
    memmove(w->in, w->in + off, w->in_len - off);
    w->in_len -= off;
}

/* Read what our end has now (items, or EOF). */
static inline void
fake_read(struct fake_worker *w)
{
    while (w->fd != -1 && !w->eof && w->in_len < sizeof w->in) {
        ssize_t n = read(w->fd, w->in + w->in_len, sizeof w->in - w->in_len);
        if (n == 0) {
            w->eof = 1;
        } else if (n > 0) {
            w->in_len += (size_t)n;
            fake_parse(w);
        } else if (errno == EAGAIN || errno == ECONNRESET) {
            if (errno == ECONNRESET)
                w->eof = 1;
            return;
        } else if (errno != EINTR) {
            fail_msg("read() failed: %s", strerror(errno));
        }
    }
}

/* Run BASE without blocking, reading W (if not NULL), until DONE(ARG)
 * holds; fail if it does not within FAKE_LOOP_MAX turns. */
static inline void
fake_loop_until(struct event_base *base, struct fake_worker *w, int (*done)(void *arg),
                void *arg)
{
    for (int i = 0; i < FAKE_LOOP_MAX; i++) {
        if (w != NULL)
            fake_read(w);
        if (done(arg))
            return;
        event_base_loop(base, EVLOOP_NONBLOCK);
        if (i > 100)
            usleep(1000);       /* something slower than one turn: let it come */
    }
    fail_msg("the condition never held");
}

struct fake_count_arg {
    struct fake_worker *w;
    size_t count;
};

static inline int
fake_has_count(void *arg)
{
    struct fake_count_arg *a = arg;
    return a->w->count >= a->count;
}

static inline int
fake_has_eof(void *arg)
{
    return ((struct fake_worker *)arg)->eof;
}

/* Wait until W has received COUNT items in all. */
static inline void
fake_wait_items(struct event_base *base, struct fake_worker *w, size_t count)
{
    struct fake_count_arg a = { .w = w, .count = count };
    fake_loop_until(base, w, fake_has_count, &a);
}

/* Wait until the queue closed W's channel. */
static inline void
fake_wait_eof(struct event_base *base, struct fake_worker *w)
{
    fake_loop_until(base, w, fake_has_eof, w);
}

/* Run every pending event of BASE (frames written, frames to read) a few
 * turns; W, if not NULL, reads what it got meanwhile. */
static inline void
fake_settle(struct event_base *base, struct fake_worker *w)
{
    for (int i = 0; i < 8; i++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        if (w != NULL)
            fake_read(w);
    }
}

/* Write one IPC_UPDATE frame: head U, then LEN bytes of BODY (a cost
 * block, a result or an error, as U's flags say), all of it: while the
 * socket is full, BASE runs so the queue reads. The frame is then in the
 * socket or read, not necessarily handled: run the loop. */
static inline void
fake_send_update_frame(struct event_base *base, struct fake_worker *w,
                       const struct ipc_update *u, const void *body, size_t len)
{
    struct ipc_header h = { .length = (uint32_t)(sizeof *u + len), .type = IPC_UPDATE };
    size_t total = sizeof h + sizeof *u + len;
    uint8_t *frame = malloc(total);
    assert_non_null(frame);
    memcpy(frame, &h, sizeof h);
    memcpy(frame + sizeof h, u, sizeof *u);
    if (len > 0)
        memcpy(frame + sizeof h + sizeof *u, body, len);
    size_t off = 0;
    while (off < total) {
        ssize_t n = write(w->fd, frame + off, total - off);
        if (n > 0)
            off += (size_t)n;
        else if (n == -1 && errno == EAGAIN)
            event_base_loop(base, EVLOOP_NONBLOCK);
        else if (n == -1 && errno != EINTR)
            fail_msg("write() failed: %s", strerror(errno));
    }
    free(frame);
}

/* One IPC_UPDATE for KEY at ATTEMPT in STATE, with PAYLOAD (a result or an
 * error) of LEN bytes and no cost block (see fake_send_update_frame). */
static inline void
fake_send_update(struct event_base *base, struct fake_worker *w, uint64_t key, uint32_t attempt, enum wire_state state,
                 float progress, const void *payload, size_t len)
{
    struct ipc_update u = { .key = key, .attempt = attempt, .state = (uint8_t)state,
                            .progress = progress };
    fake_send_update_frame(base, w, &u, payload, len);
}

#endif
