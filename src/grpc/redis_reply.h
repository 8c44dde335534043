/*
 * hiredis's reply objects, allocated from a pool instead of one malloc
 * each.
 *
 * hiredis builds every reply as a tree of redisReply structs, each string
 * copied into its own allocation: a work entry read back in cluster mode
 * is about twenty allocations, and building and freeing them was a tenth
 * of the grpc process's time. With redis_reply_install() a reader builds
 * each reply (the same redisReply structs, read the same way) in blocks
 * of its pool, and hiredis's free of the reply, after its callback,
 * hands the blocks back to the pool for the next reply. So a reply is
 * valid exactly as long as with hiredis's own functions: until its
 * callback returns.
 */
#ifndef DS_GRPC_REDIS_REPLY_H
#define DS_GRPC_REDIS_REPLY_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

struct reply_block;

/*
 * The blocks kept for the next replies of one reader. Owned by the
 * caller (a struct in static storage, zeroed), and outliving the reader
 * it is installed on; redis_reply_pool_free() when neither is used again.
 * Replies never share a block, and a pool keeps at most about
 * REDIS_REPLY_KEEP bytes of blocks between replies.
 */
struct reply_pool {
    struct reply_block *free;   /* kept blocks, each REPLY_BLOCK bytes */
    size_t free_n;
    struct reply_block *building;   /* the blocks of the reply being read */
};

#define REDIS_REPLY_KEEP (1u << 20)

/* Make READER build its replies in POOL. */
void redis_reply_install(redisReader *reader, struct reply_pool *pool);
/* Free the blocks POOL keeps (no reply of it may be alive). */
void redis_reply_pool_free(struct reply_pool *pool);

/*
 * A string reply R that is a decimal number of 1 to MAX_DIGITS digits
 * (at most 19: it fits) and nothing else: into *OUT, 0. Anything else (an
 * empty string, a sign, a space, more digits, another type): -1, *OUT
 * untouched. What Redis gives back was written by someone; read strictly.
 */
int redis_reply_u64(const redisReply *r, size_t max_digits, uint64_t *out);

#endif
