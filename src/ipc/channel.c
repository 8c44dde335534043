#include "ipc/channel.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "core/alloc.h"
#include "core/log.h"

#define READ_CHUNK      65536
#define FDS_PER_MESSAGE 4
#define FD_QUEUE_SIZE   16

struct ipc_channel {
    int fd;
    char name[64];
    uint32_t max_body;
    struct event *read_event;
    struct event *write_event;
    struct evbuffer *in;
    struct evbuffer *out;
    ipc_frame_fn on_frame;
    ipc_close_fn on_close;
    void *arg;
    int fds[FD_QUEUE_SIZE];     /* received with SCM_RIGHTS, not yet claimed */
    int fd_count;
    int fds_lost;               /* dropped by the kernel (MSG_CTRUNC), not yet claimed */
    int busy;                   /* inside a callback: defer the free */
    int freed;
    int closed;
};

static void channel_on_read(evutil_socket_t fd, short what, void *arg);
static void channel_on_write(evutil_socket_t fd, short what, void *arg);

struct ipc_channel *
channel_new(struct event_base *base, int fd, const char *name, uint32_t max_body,
            ipc_frame_fn on_frame, ipc_close_fn on_close, void *arg)
{
    struct ipc_channel *ch = ds_calloc(1, sizeof *ch);
    ch->fd = fd;
    snprintf(ch->name, sizeof ch->name, "%s", name);
    ch->max_body = max_body;
    ch->on_frame = on_frame;
    ch->on_close = on_close;
    ch->arg = arg;
    ch->in = evbuffer_new();
    ch->out = evbuffer_new();
    evutil_make_socket_nonblocking(fd);
    ch->read_event = event_new(base, fd, EV_READ | EV_PERSIST, channel_on_read, ch);
    ch->write_event = event_new(base, fd, EV_WRITE | EV_PERSIST, channel_on_write, ch);
    if (ch->in == NULL || ch->out == NULL || ch->read_event == NULL || ch->write_event == NULL)
        fatal(1, "%s: cannot allocate a channel", name);
    event_add(ch->read_event, NULL);
    return ch;
}

static void
channel_destroy(struct ipc_channel *ch)
{
    event_free(ch->read_event);
    event_free(ch->write_event);
    evbuffer_free(ch->in);
    evbuffer_free(ch->out);
    for (int i = 0; i < ch->fd_count; i++)
        close(ch->fds[i]);
    if (ch->fd != -1)
        close(ch->fd);
    free(ch);
}

void
channel_free(struct ipc_channel *ch)
{
    if (ch == NULL)
        return;
    if (ch->busy) {
        ch->freed = 1;
        event_del(ch->read_event);
        event_del(ch->write_event);
        return;
    }
    channel_destroy(ch);
}

const char *
channel_name(const struct ipc_channel *ch)
{
    return ch->name;
}

void
channel_set_name(struct ipc_channel *ch, const char *name)
{
    snprintf(ch->name, sizeof ch->name, "%s", name);
}

int
channel_fd(const struct ipc_channel *ch)
{
    return ch->fd;
}

size_t
channel_output_pending(const struct ipc_channel *ch)
{
    return evbuffer_get_length(ch->out);
}

/* Report the close once; the callee usually frees the channel. */
static void
channel_close(struct ipc_channel *ch, const char *reason)
{
    if (ch->closed)
        return;
    ch->closed = 1;
    event_del(ch->read_event);
    event_del(ch->write_event);
    ch->busy++;
    ch->on_close(ch->arg, ch, reason);
    ch->busy--;
}

static void
take_fds(struct ipc_channel *ch, struct msghdr *msg)
{
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *fds = (int *)CMSG_DATA(c);
        for (int i = 0; i < n; i++) {
            if (ch->fd_count < FD_QUEUE_SIZE) {
                ch->fds[ch->fd_count++] = fds[i];
            } else {
                log_error("%s: too many descriptors received; closing one", ch->name);
                close(fds[i]);
            }
        }
    }
}

/* Read what the socket has. Returns 1 if data came, 0 on EAGAIN, -1 on
 * EOF or error (the channel is then closed). */
static int
channel_fill(struct ipc_channel *ch)
{
    struct evbuffer_iovec vec[2];
    int nvec = evbuffer_reserve_space(ch->in, READ_CHUNK, vec, 2);
    if (nvec < 0) {
        channel_close(ch, "cannot allocate a read buffer");
        return -1;
    }
    struct iovec iov[2];
    for (int i = 0; i < nvec; i++) {
        iov[i].iov_base = vec[i].iov_base;
        iov[i].iov_len = vec[i].iov_len;
    }
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int) * FDS_PER_MESSAGE)];
    } control;
    struct msghdr msg = {
        .msg_iov = iov,
        .msg_iovlen = (size_t)nvec,
        .msg_control = control.buf,
        .msg_controllen = sizeof control.buf,
    };
    ssize_t n = recvmsg(ch->fd, &msg, MSG_CMSG_CLOEXEC);
    if (n == -1) {
        evbuffer_commit_space(ch->in, vec, 0);
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        if (errno == ECONNRESET) {
            channel_close(ch, NULL);
            return -1;
        }
        char reason[128];
        snprintf(reason, sizeof reason, "recvmsg() failed: %s", strerror(errno));
        channel_close(ch, reason);
        return -1;
    }
    if (msg.msg_controllen > 0)
        take_fds(ch, &msg);
    if (msg.msg_flags & MSG_CTRUNC) {
        /* The kernel drops what does not fit in the descriptor table
         * (EMFILE) and says so only with this flag. One descriptor travels
         * per sendmsg, and recvmsg does not read past it: the frame that
         * announced it gets -1 instead of a protocol error. */
        ch->fds_lost++;
        log_error("%s: recvmsg(SCM_RIGHTS): a descriptor was lost (MSG_CTRUNC: the "
                  "descriptor table is full?)", ch->name);
    }
    if (n == 0) {
        evbuffer_commit_space(ch->in, vec, 0);
        channel_close(ch, evbuffer_get_length(ch->in) > 0 ? "EOF inside a frame" : NULL);
        return -1;
    }
    size_t left = (size_t)n;
    for (int i = 0; i < nvec; i++) {
        size_t take = left < vec[i].iov_len ? left : vec[i].iov_len;
        vec[i].iov_len = take;
        left -= take;
    }
    evbuffer_commit_space(ch->in, vec, nvec);
    return 1;
}

/* Hand every whole frame in the input buffer to on_frame. Returns -1 if
 * the channel was closed or freed meanwhile. */
static int
channel_dispatch(struct ipc_channel *ch)
{
    for (;;) {
        if (ch->freed || ch->closed)
            return -1;
        size_t avail = evbuffer_get_length(ch->in);
        if (avail < IPC_HEADER_SIZE)
            return 0;
        struct ipc_header h;
        char err[160];
        evbuffer_copyout(ch->in, &h, IPC_HEADER_SIZE);
        int r = ipc_frame_check(&h, avail, ch->max_body, &h, err, sizeof err);
        if (r == 0)
            return 0;
        if (r == -1) {
            char reason[256];
            snprintf(reason, sizeof reason, "protocol error: %s", err);
            channel_close(ch, reason);
            return -1;
        }
        int fd = -1;
        if (h.flags & IPC_FLAG_FD) {
            if (ch->fd_count == 0 && ch->fds_lost > 0) {
                ch->fds_lost--;         /* on_frame sees IPC_FLAG_FD and fd -1 */
            } else if (ch->fd_count == 0) {
                channel_close(ch, "protocol error: a frame announced a descriptor that did not come");
                return -1;
            } else {
                fd = ch->fds[0];
                ch->fd_count--;
                memmove(ch->fds, ch->fds + 1, sizeof(int) * (size_t)ch->fd_count);
            }
        }
        const uint8_t *frame = evbuffer_pullup(ch->in, (ssize_t)(IPC_HEADER_SIZE + h.length));
        if (frame == NULL) {
            if (fd != -1)
                close(fd);
            channel_close(ch, "cannot allocate a frame buffer");
            return -1;
        }
        r = ch->on_frame(ch->arg, ch, &h, frame + IPC_HEADER_SIZE, fd);
        if (ch->freed)
            return -1;
        evbuffer_drain(ch->in, IPC_HEADER_SIZE + h.length);
        if (r == -1) {
            char reason[96];
            snprintf(reason, sizeof reason, "protocol error in a %s frame", ipc_type_name(h.type));
            channel_close(ch, reason);
            return -1;
        }
    }
}

void
channel_read_now(struct ipc_channel *ch)
{
    if (ch->closed || ch->freed)
        return;
    ch->busy++;
    int r;
    do {
        r = channel_fill(ch);
        if (channel_dispatch(ch) == -1)
            break;
    } while (r == 1);
    ch->busy--;
    if (ch->freed && ch->busy == 0)
        channel_destroy(ch);
}

static void
channel_on_read(evutil_socket_t fd, short what, void *arg)
{
    channel_read_now(arg);
}

/* Returns 0 when everything was written, 1 if the socket is full, -1 on
 * error (the channel is then closed). */
static int
channel_write_some(struct ipc_channel *ch)
{
    while (evbuffer_get_length(ch->out) > 0) {
        int n = evbuffer_write(ch->out, ch->fd);
        if (n == -1) {
            if (errno == EAGAIN || errno == EINTR)
                return 1;
            if (errno == EPIPE || errno == ECONNRESET) {
                /* The peer is gone, but what it wrote before it went
                 * still counts: read it all, then report the close. */
                int r;
                do {
                    r = channel_fill(ch);
                    if (channel_dispatch(ch) == -1)
                        break;
                } while (r == 1);
                channel_close(ch, NULL);
                return -1;
            }
            char reason[128];
            snprintf(reason, sizeof reason, "write() failed: %s", strerror(errno));
            channel_close(ch, reason);
            return -1;
        }
    }
    return 0;
}

static void
channel_on_write(evutil_socket_t fd, short what, void *arg)
{
    struct ipc_channel *ch = arg;
    ch->busy++;
    if (channel_write_some(ch) == 0)
        event_del(ch->write_event);
    ch->busy--;
    if (ch->freed && ch->busy == 0)
        channel_destroy(ch);
}

void
channel_sendv(struct ipc_channel *ch, unsigned type, const struct iovec *parts, int count)
{
    if (ch->closed || ch->freed)
        return;
    struct ipc_header h = { .length = 0, .type = (uint16_t)type, .flags = 0 };
    for (int i = 0; i < count; i++)
        h.length += (uint32_t)parts[i].iov_len;
    if (evbuffer_get_length(ch->out) == 0)
        event_add(ch->write_event, NULL);
    evbuffer_add(ch->out, &h, sizeof h);
    for (int i = 0; i < count; i++)
        if (parts[i].iov_len > 0)
            evbuffer_add(ch->out, parts[i].iov_base, parts[i].iov_len);
}

void
channel_send(struct ipc_channel *ch, unsigned type, const void *body, size_t len)
{
    struct iovec part = { .iov_base = (void *)body, .iov_len = len };
    channel_sendv(ch, type, &part, 1);
}

int
channel_flush(struct ipc_channel *ch)
{
    if (ch->closed || ch->freed)
        return -1;
    ch->busy++;
    int r;
    while ((r = channel_write_some(ch)) == 1) {
        struct pollfd p = { .fd = ch->fd, .events = POLLOUT };
        if (poll(&p, 1, -1) == -1 && errno != EINTR) {
            log_syserr("%s: poll() failed", ch->name);
            r = -1;
            break;
        }
    }
    if (r == 0)
        event_del(ch->write_event);
    ch->busy--;
    if (ch->freed && ch->busy == 0) {
        channel_destroy(ch);
        return -1;
    }
    return r == 0 ? 0 : -1;
}

int
channel_send_fd(struct ipc_channel *ch, unsigned type, const void *body, size_t len, int fd)
{
    if (channel_flush(ch) == -1)
        return -1;
    struct ipc_header h = { .length = (uint32_t)len, .type = (uint16_t)type, .flags = IPC_FLAG_FD };
    struct iovec iov[2] = {
        { .iov_base = &h, .iov_len = sizeof h },
        { .iov_base = (void *)body, .iov_len = len },
    };
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {
        .msg_iov = iov,
        .msg_iovlen = len > 0 ? 2 : 1,
        .msg_control = control.buf,
        .msg_controllen = sizeof control.buf,
    };
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));

    /* The descriptor goes with the first byte; queue the rest of a short write. */
    ssize_t n;
    for (;;) {
        n = sendmsg(ch->fd, &msg, MSG_NOSIGNAL);
        if (n != -1)
            break;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            struct pollfd p = { .fd = ch->fd, .events = POLLOUT };
            poll(&p, 1, -1);
            continue;
        }
        log_syserr("%s: sendmsg(SCM_RIGHTS) failed", ch->name);
        return -1;
    }
    size_t total = sizeof h + len;
    if ((size_t)n < total) {
        const uint8_t *rest_h = (const uint8_t *)&h;
        size_t done = (size_t)n;
        if (done < sizeof h) {
            evbuffer_add(ch->out, rest_h + done, sizeof h - done);
            done = sizeof h;
        }
        evbuffer_add(ch->out, (const uint8_t *)body + (done - sizeof h), len - (done - sizeof h));
        return channel_flush(ch);
    }
    return 0;
}
