/*
 * The Lua scripts of cluster mode. What they write is the cluster's Redis
 * layout (docs/scaling.md, "The Redis keys"); cluster.c runs them (by
 * SHA, loaded once per session) and reads their replies. Each script's
 * KEYS and ARGV are in the comment above it (cluster_scripts.c): the
 * caller passes them in that order.
 */
#ifndef DS_GRPC_CLUSTER_SCRIPTS_H
#define DS_GRPC_CLUSTER_SCRIPTS_H

#include <stdint.h>

/* The layout this version writes ({NAME}:layout): script_layout. */
#define CLUSTER_LAYOUT "4"

/* Arguments per item of script_accepts, per update of script_update. */
#define ACCEPT_FIELDS 14
#define UPDATE_FIELDS 9

/* The scripts loaded at the start of a session, by their index. */
enum script {
    SCRIPT_ACCEPTS, SCRIPT_UPDATE, SCRIPT_RENEW, SCRIPT_CLAIM, SCRIPT_TRIM, SCRIPT_CANCEL,
    SCRIPT_RETRY, SCRIPT_PULL, SCRIPT_DUE, SCRIPT_SIZE, SCRIPT_LOOKUP, SCRIPT_HAND_BACK,
    SCRIPT_COUNT
};

/* Their texts (static storage). */
extern const char *const script_text[SCRIPT_COUNT];
/* Run once per session with EVAL before the others: the layout check, and
 * the fence of the seq counter after Redis lost writes. */
extern const char script_layout[];
extern const char script_fence[];

/* How far script_fence moves the seq counter and the work streams' IDs
 * ahead after Redis lost writes (its ARGV[2]). */
#define FENCE_JUMP (UINT64_C(1) << 32)

#endif
