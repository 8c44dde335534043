/*
 * Channels: framed messages over a socketpair, driven by libevent.
 *
 * Reads take everything the socket has (many frames per syscall) and hand
 * each whole frame to on_frame; sends append to an output buffer flushed
 * when the socket is writable, so the frames of one loop iteration leave
 * in one write. Descriptors travel with SCM_RIGHTS.
 *
 * Ownership: the channel owns its fd and closes it in channel_free(). A
 * descriptor passed to on_frame belongs to the callee. on_frame and
 * on_close may call channel_free() on their own channel.
 */
#ifndef DS_IPC_CHANNEL_H
#define DS_IPC_CHANNEL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "ipc/frame.h"

struct event_base;
struct ipc_channel;

/* Return 0, or -1 for a protocol error (logged by the callee): the channel
 * is then closed. fd is -1 unless the frame carried one; a frame whose
 * header has IPC_FLAG_FD and fd -1 lost its descriptor on the way (the
 * receiver's descriptor table was full). */
typedef int (*ipc_frame_fn)(void *arg, struct ipc_channel *channel,
                            const struct ipc_header *header, const uint8_t *body, int fd);
/* The channel is closed: reason is NULL if the peer closed it (EOF, or
 * the connection reset by a peer that died), else what went wrong (a
 * protocol error, a truncated frame). The callee should channel_free() it. */
typedef void (*ipc_close_fn)(void *arg, struct ipc_channel *channel, const char *reason);

struct ipc_channel *channel_new(struct event_base *base, int fd, const char *name,
                                uint32_t max_body, ipc_frame_fn on_frame,
                                ipc_close_fn on_close, void *arg);
void channel_free(struct ipc_channel *channel);

/* Queue one frame whose body is the concatenation of the given parts. */
void channel_sendv(struct ipc_channel *channel, unsigned type, const struct iovec *parts,
                   int count);
void channel_send(struct ipc_channel *channel, unsigned type, const void *body, size_t len);
/* Write everything queued, then this frame with FD attached, now (blocking
 * until written). The caller keeps its own copy of fd. Returns 0 or -1. */
int channel_send_fd(struct ipc_channel *channel, unsigned type, const void *body,
                    size_t len, int fd);
/* Write everything queued now, waiting for the socket if it must. */
int channel_flush(struct ipc_channel *channel);
/* Read and dispatch what the socket holds now, without waiting. */
void channel_read_now(struct ipc_channel *channel);

size_t channel_output_pending(const struct ipc_channel *channel);
const char *channel_name(const struct ipc_channel *channel);
void channel_set_name(struct ipc_channel *channel, const char *name);
int channel_fd(const struct ipc_channel *channel);

#endif
