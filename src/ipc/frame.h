/*
 * Frames: what every channel carries.
 *
 * A frame is an 8-byte header (body length, type, flags) in host byte order
 * (both ends are on one machine, built from one source) and a body of
 * exactly `length` bytes. A frame is size-checked before its body is read,
 * bodies are values, never pointers, and a frame of a type the receiver does
 * not expect, or of a wrong size for its type, is a protocol error that
 * closes the channel.
 */
#ifndef DS_IPC_FRAME_H
#define DS_IPC_FRAME_H

#include <stddef.h>
#include <stdint.h>

struct ipc_header {
    uint32_t length;            /* body bytes after the header */
    uint16_t type;              /* enum ipc_type */
    uint16_t flags;             /* IPC_FLAG_* */
};

#define IPC_HEADER_SIZE   sizeof(struct ipc_header)
#define IPC_FLAG_FD       0x0001    /* a descriptor travels with this frame */
#define IPC_CONTROL_MAX   (1u << 20)
/* Data channel bounds, fixed rather than taken from the config: an item
 * keeps the limits it was accepted under, so a reload to a smaller
 * grpc.max_message_size must not make a worker refuse an item queued
 * before it. ITEM: the largest WorkItem any config accepts (64 MiB) with
 * its head, kind and id. UPDATE: a result bounded by handlers.max_result_size
 * (under 4 MiB in every config) with its head; errors are shorter. */
#define IPC_ITEM_MAX      ((64u << 20) + (64u << 10))
#define IPC_UPDATE_MAX    (4u << 20)

enum ipc_type {
    /* control channel, master -> grpc process */
    IPC_WORKER_ATTACH = 1,      /* ipc_worker + the grpc end of its data channel */
    IPC_WORKER_EXITED,          /* ipc_worker_exit + why, as text */
    IPC_WORKER_RETIRE,          /* ipc_worker: dispatch no more; close when it holds nothing */
    IPC_CONFIG,                 /* ipc_config + handler_count u32 + the YAML text the
                                   master validated */
    /* control channel, master -> any child */
    IPC_DRAIN,                  /* graceful stop: finish the work held, then exit; to the
                                   grpc process: a u8, 1 for the drain of a USR2 upgrade */
    IPC_REOPEN_LOGS,
    /* control channel, grpc process -> master */
    IPC_READY,                  /* listening on every address: a u8, 1 if the store
                                   serves (takes items), else 0 + why not; sent again
                                   at every change of that (a state report) */
    IPC_KILL_WORKER,            /* ipc_worker + why: an item timed out there */
    IPC_SEQ_RESERVE,            /* ipc_seq: update seqs up to this may be used */
    IPC_FATAL,                  /* text: a boot error; the grpc process exits next */
    IPC_WORKER_ATTACHED,        /* ipc_worker: its data channel is wired in */
    IPC_WORKER_LOST,            /* ipc_worker + why: its data channel never arrived */
    /* control channel, master -> grpc process */
    IPC_RELOAD_FAILED,          /* text: why (FILE:LINE:COL: reason), for /status */
    /* control channel, grpc process -> master */
    IPC_DEADLINE,               /* no body: a graceful stop reached shutdown_timeout here;
                                   a worker lost from now on is not replaced */
    /* control channel, master -> grpc process */
    IPC_BIND_NOW,               /* no body: the old master of an upgrade is gone; bind
                                   at once (bind_when_serving ends) */
    /* data channel */
    IPC_ITEM = 64,              /* grpc -> worker: ipc_item + the WorkItem message */
    IPC_UPDATE,                 /* worker -> grpc: ipc_update + result or error */
    IPC_CANCEL,                 /* grpc -> worker: ipc_cancel; the worker answers with
                                   the attempt's end (CANCELLED if it stopped it) */
    IPC_REATTEMPT,              /* grpc -> worker: ipc_reattempt; no answer */
    IPC_TYPE_MAX
};

struct ipc_worker {
    int32_t pid;
    uint32_t slot;
    uint64_t generation;
};

struct ipc_worker_exit {
    struct ipc_worker worker;
    uint64_t running_key;       /* the item it died running (its attempt is spent); 0: none */
    uint32_t running_attempt;
    uint32_t flags;             /* IPC_EXIT_* */
    /* IPC_EXIT_LIMIT: what the running item's attempt cost */
    uint64_t cpu_usec;
    uint64_t max_rss_kib;
};
/* The running item went over its kind's memory_limit or cpu_limit (the text
 * says which): its attempt ends FAILED with it, not retried. */
#define IPC_EXIT_LIMIT 0x01

/* Then handler_count uint32_t, each handler's module_flags in the order of
 * the config's handlers: what the master learnt loading the modules, which
 * the grpc process, parsing the text, must not dlopen to learn. */
struct ipc_config {
    uint64_t generation;
    uint32_t handler_count;
    uint32_t pad;
};

struct ipc_seq {
    uint64_t seq;
};

/* The grpc process's handle for an item and which attempt this is, then
 * kind_len bytes of kind (resolved: never empty), id_len bytes of id (as
 * assigned when the client left it empty), then the WorkItem as the client
 * encoded it. */
struct ipc_item {
    uint64_t key;
    uint32_t attempt;
    uint16_t kind_len;
    uint16_t id_len;
};

/* Stop ITEM KEY's attempt ATTEMPT: drop it if not started, stop its handler
 * if running; a key the worker does not hold (its end is on the way) is
 * ignored. Exactly this size. */
struct ipc_cancel {
    uint64_t key;
    uint32_t attempt;
    uint32_t pad;
};

/* Run ITEM KEY, given as attempt ATTEMPT (its ITEM frame's), as attempt
 * NEW_ATTEMPT if it has not started: in cluster mode the attempt of a
 * copy waiting at its worker can move on (grpc/cluster_take.c
 * adopt_claimed()).
 * One that started runs on as it started; a key the worker does not hold
 * is ignored. The worker's updates say which attempt it ran; a CANCEL may
 * name either until its first one. Exactly this size. */
struct ipc_reattempt {
    uint64_t key;
    uint32_t attempt;
    uint32_t new_attempt;
};

/* Then, with IPC_UPDATE_COST in flags, a struct ipc_cost; then the result
 * (SUCCEEDED) or the error text (FAILED, CANCELLED, RETRYING). RETRYING:
 * the handler failed and asks for another attempt (the grpc process
 * decides whether one is left); any other state is a protocol error, and
 * so are unknown flags and a frame too short for the cost it announces. */
struct ipc_update {
    uint64_t key;
    uint32_t attempt;
    uint8_t state;              /* STARTED, PROGRESS, SUCCEEDED, FAILED, CANCELLED, RETRYING */
    uint8_t flags;              /* IPC_UPDATE_* */
    uint8_t pad[2];
    float progress;
    uint32_t pad2;
};

#define IPC_UPDATE_COST 0x01    /* a struct ipc_cost follows the head */

/* What the attempt cost, measured by the worker (workers/cost.c): on the
 * final update of an attempt that ran. */
struct ipc_cost {
    uint64_t cpu_usec;          /* user + system, its processes included */
    uint64_t max_rss_kib;       /* its peak resident memory */
};

const char *ipc_type_name(unsigned type);

/*
 * Look at the AVAIL bytes at BUF: 0 if they do not yet hold a whole frame,
 * 1 if they do (*header filled in), -1 if the header is invalid (unknown
 * type, unknown flags, or length over max_body), with the reason in err.
 */
int ipc_frame_check(const void *buf, size_t avail, uint32_t max_body,
                    struct ipc_header *header, char *err, size_t err_size);

#endif
