/*
 * store_memory.c: the store's memory backend (no queue.journal, no cluster).
 */
#ifndef DS_GRPC_STORE_MEMORY_H
#define DS_GRPC_STORE_MEMORY_H

#include "grpc/store.h"

extern const struct store_backend store_memory;

#endif
