/*
 * Fuzz target: the IPC frame decoder and a channel round trip.
 *
 * Input: 3 control bytes, then the byte stream a peer sends.
 *   byte 0   max_body of the reading channel: byte * 4 (0..1020)
 *   byte 1   bit 0: close the writing end after the stream (EOF path)
 *   byte 2   write the stream in chunks of this many bytes (0: all at once),
 *            reading with channel_read_now() after each chunk
 *
 * 1. ipc_frame_check() at every offset of the whole input, with the small
 *    max_body and with IPC_CONTROL_MAX: the result is -1, 0 or 1 and agrees
 *    with the header's fields; a -1 leaves a reason.
 * 2. The stream goes into one end of a socketpair; channel_new() on the
 *    other end reads it, in this one process. Every frame handed to on_frame
 *    must be exactly the next frame of the stream (header and body, in
 *    order, body within max_body), and how the channel ends must agree with
 *    what follows the last delivered frame. on_frame fails IPC_FATAL frames
 *    (the channel must close with a protocol error) and channel_free()s its
 *    channel on IPC_DRAIN frames (allowed by channel.h: the channel must
 *    then deliver nothing more).
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "core/log.h"
#include "ipc/channel.h"
#include "ipc/frame.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CONTROL_BYTES 3
#define STREAM_MAX    (1024 * 1024)

struct run {
    const uint8_t *stream;
    size_t len;
    size_t off;                         /* where the next frame must start */
    uint32_t max_body;
    struct ipc_channel *channel;        /* NULL once freed */
    int frames;
    int failed_frame;                   /* on_frame returned -1 */
    int freed_in_frame;                 /* on_frame called channel_free() */
    int closed;
    char reason[256];
    int reason_null;
};

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* Protocol errors are expected here by the thousand. */
    log_open("/dev/null", DS_LOG_ERROR);
    return 0;
}

static void
check_frame_at(const uint8_t *buf, size_t avail, uint32_t max_body)
{
    struct ipc_header h;
    char err[160];
    err[0] = '\0';
    int r = ipc_frame_check(buf, avail, max_body, &h, err, sizeof err);
    if (r < -1 || r > 1)
        abort();
    if (avail < IPC_HEADER_SIZE) {
        if (r != 0)
            abort();
        return;
    }
    struct ipc_header raw;
    memcpy(&raw, buf, sizeof raw);
    int known = raw.type < IPC_TYPE_MAX && strcmp(ipc_type_name(raw.type), "unknown") != 0;
    int valid = known && (raw.flags & ~IPC_FLAG_FD) == 0 && raw.length <= max_body;
    if (!valid) {
        if (r != -1 || err[0] == '\0' || strnlen(err, sizeof err) == sizeof err)
            abort();
        return;
    }
    if (memcmp(&h, &raw, sizeof h) != 0)
        abort();
    if (r != (avail - IPC_HEADER_SIZE >= raw.length ? 1 : 0))
        abort();
}

static int
on_frame(void *arg, struct ipc_channel *ch, const struct ipc_header *h, const uint8_t *body,
         int fd)
{
    struct run *run = arg;
    if (run->failed_frame || run->freed_in_frame || run->closed || ch != run->channel) {
        fprintf(stderr, "frame delivered after the channel ended\n");
        abort();
    }
    if (fd != -1) {
        fprintf(stderr, "a descriptor nobody sent\n");
        abort();
    }
    if (h->length > run->max_body || (h->flags & IPC_FLAG_FD)) {
        fprintf(stderr, "frame of %u bytes (flags 0x%x) passed max_body %u\n", h->length,
                h->flags, run->max_body);
        abort();
    }
    if (run->off + IPC_HEADER_SIZE + h->length > run->len ||
        memcmp(run->stream + run->off, h, IPC_HEADER_SIZE) != 0 ||
        memcmp(run->stream + run->off + IPC_HEADER_SIZE, body, h->length) != 0) {
        fprintf(stderr, "frame %d is not the next frame of the stream (offset %zu)\n",
                run->frames, run->off);
        abort();
    }
    run->off += IPC_HEADER_SIZE + h->length;
    run->frames++;
    if (h->type == IPC_FATAL) {
        run->failed_frame = 1;
        return -1;
    }
    if (h->type == IPC_DRAIN) {
        run->freed_in_frame = 1;
        run->channel = NULL;
        channel_free(ch);
    }
    return 0;
}

static void
on_close(void *arg, struct ipc_channel *ch, const char *reason)
{
    struct run *run = arg;
    if (run->closed || ch != run->channel) {
        fprintf(stderr, "closed twice, or after it was freed\n");
        abort();
    }
    run->closed = 1;
    run->reason_null = reason == NULL;
    snprintf(run->reason, sizeof run->reason, "%s", reason ? reason : "");
    run->channel = NULL;
    channel_free(ch);
}

static void
expect(int ok, const struct run *run, const char *what)
{
    if (ok)
        return;
    fprintf(stderr, "channel ended wrongly: %s (frames %d, offset %zu of %zu, closed %d, "
            "reason \"%s\"%s)\n", what, run->frames, run->off, run->len, run->closed,
            run->reason, run->reason_null ? " (NULL)" : "");
    abort();
}

/* What follows the last delivered frame decides how the channel ended. */
static void
check_end(const struct run *run, int eof)
{
    if (run->freed_in_frame) {
        expect(!run->closed, run, "on_close after channel_free()");
        return;
    }
    if (run->failed_frame) {
        expect(run->closed && strstr(run->reason, "protocol error in a FATAL frame") != NULL,
               run, "a failed frame closes the channel");
        return;
    }
    struct ipc_header h;
    char err[160];
    int r = ipc_frame_check(run->stream + run->off, run->len - run->off, run->max_body, &h,
                            err, sizeof err);
    if (r == -1) {
        expect(run->closed && strncmp(run->reason, "protocol error: ", 16) == 0, run,
               "a bad header closes the channel");
    } else if (r == 1) {
        /* A whole valid frame not delivered: only one that announces a descriptor. */
        expect((h.flags & IPC_FLAG_FD) && run->closed &&
               strstr(run->reason, "descriptor that did not come") != NULL, run,
               "a whole frame was not delivered");
    } else if (!eof) {
        expect(!run->closed, run, "closed while the peer is still there");
    } else if (run->off == run->len) {
        expect(run->closed && run->reason_null, run, "EOF between frames is a clean close");
    } else {
        expect(run->closed && strcmp(run->reason, "EOF inside a frame") == 0, run,
               "EOF inside a frame");
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < size; i++) {
        check_frame_at(data + i, size - i, 0);
        check_frame_at(data + i, size - i, IPC_CONTROL_MAX);
    }
    if (size < CONTROL_BYTES)
        return 0;

    struct run run;
    memset(&run, 0, sizeof run);
    run.max_body = (uint32_t)data[0] * 4;
    int close_writer = data[1] & 1;
    size_t chunk = data[2];
    run.stream = data + CONTROL_BYTES;
    run.len = size - CONTROL_BYTES;
    if (run.len > STREAM_MAX)
        run.len = STREAM_MAX;
    for (size_t i = 0; i < run.len; i++)
        check_frame_at(run.stream + i, run.len - i, run.max_body);

    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == -1)
        abort();
    struct event_base *base = event_base_new();
    if (base == NULL)
        abort();
    run.channel = channel_new(base, fds[0], "fuzz", run.max_body, on_frame, on_close, &run);

    size_t written = 0;
    int peer_gone = 0;
    while (written < run.len && run.channel != NULL) {
        size_t n = chunk == 0 ? run.len - written : chunk;
        if (n > run.len - written)
            n = run.len - written;
        ssize_t w = send(fds[1], run.stream + written, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w == -1) {
            if (errno == EAGAIN || errno == EINTR) {
                channel_read_now(run.channel);      /* make room */
                continue;
            }
            peer_gone = 1;
            break;
        }
        written += (size_t)w;
        if (chunk != 0)
            channel_read_now(run.channel);
    }
    /* Whatever is not written was never sent: the channel saw a shorter stream. */
    run.len = written;
    if (close_writer) {
        close(fds[1]);
        fds[1] = -1;
    }
    if (run.channel != NULL)
        channel_read_now(run.channel);
    /* A second read must change nothing. */
    int frames = run.frames;
    if (run.channel != NULL)
        channel_read_now(run.channel);
    if (run.frames != frames)
        abort();
    if (!peer_gone)
        check_end(&run, close_writer);

    if (run.channel != NULL)
        channel_free(run.channel);
    if (fds[1] != -1)
        close(fds[1]);
    event_base_free(base);
    return 0;
}
