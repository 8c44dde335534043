/*
 * The arguments of one Redis command, built one by one and sent with
 * hiredis's redisAsyncCommandArgv(): each argument is a pointer and a
 * length, so binary values (an encoded update, an item's payload) go as
 * they are, and numbers are formatted into the struct itself.
 */
#ifndef DS_GRPC_REDIS_ARGS_H
#define DS_GRPC_REDIS_ARGS_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/async.h>

/* The most arguments of one command: the renew script takes 6 and up to
 * 500 ids. */
#define REDIS_ARGS_MAX  512
/* Room for formatted numbers: 24 bytes an argument (a u64 is 20 digits). */
#define REDIS_ARGS_TEXT (REDIS_ARGS_MAX * 24)

/*
 * Owned by the caller, usually on its stack; nothing to free. argv may
 * point into text, so a struct redis_args is never copied. Arguments added
 * by redis_args_str() and redis_args_mem() are not copied either: they
 * must stay valid until redis_args_send() (which copies everything into
 * hiredis's output buffer). An argument that does not fit sets overflow
 * and is dropped, and redis_args_send() then refuses the command.
 */
struct redis_args {
    int argc;
    int overflow;
    size_t text_used;
    const char *argv[REDIS_ARGS_MAX];
    size_t len[REDIS_ARGS_MAX];
    char text[REDIS_ARGS_TEXT];
};

/* Start A with the command's NAME ("XADD", "EVALSHA"). */
void redis_args_init(struct redis_args *a, const char *name);
/* A NUL-terminated string, without its NUL. */
void redis_args_str(struct redis_args *a, const char *s);
/* LEN bytes at P, any bytes at all (P may be NULL when LEN is 0). */
void redis_args_mem(struct redis_args *a, const void *p, size_t len);
/* N in decimal. */
void redis_args_u64(struct redis_args *a, uint64_t n);
/* The stream entry ID "MS-SEQ". */
void redis_args_stream_id(struct redis_args *a, uint64_t ms, uint64_t seq);
/*
 * Queue the command on AC with FN(ARG) for its reply. 0: sent, FN will
 * run (with a NULL reply if the connection goes first). -1: not sent, FN
 * will not run: either A overflowed (a->overflow is set and it is logged:
 * a bug in the caller), or hiredis refused it (the connection is going
 * away, or out of memory: for the caller to handle and log).
 */
int redis_args_send(struct redis_args *a, redisAsyncContext *ac, redisCallbackFn *fn,
                    void *arg);

/*
 * A command with any number of arguments of any size (the batch scripts:
 * many items in one call), formatted as RESP into one growing buffer as
 * the arguments are added, and handed to hiredis as it is. Owned by the
 * caller; redis_cmd_init() may start it over (the buffer is kept),
 * redis_cmd_free() frees the buffer.
 */
struct redis_cmd {
    char *buf;                  /* HEAD_ROOM bytes for "*ARGC\r\n", then the arguments */
    size_t len, cap;
    uint32_t argc;
};

void redis_cmd_init(struct redis_cmd *c, const char *name);
void redis_cmd_mem(struct redis_cmd *c, const void *p, size_t len);
void redis_cmd_str(struct redis_cmd *c, const char *s);
void redis_cmd_u64(struct redis_cmd *c, uint64_t n);
/* The command as sent: its bytes (*LEN of them), valid until C changes. */
const char *redis_cmd_bytes(struct redis_cmd *c, size_t *len);
/* As redis_args_send(): 0 sent (hiredis copied it), -1 not (FN will not run). */
int redis_cmd_send(struct redis_cmd *c, redisAsyncContext *ac, redisCallbackFn *fn, void *arg);
void redis_cmd_free(struct redis_cmd *c);

#endif
