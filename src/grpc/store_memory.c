/*
 * The memory backend (no queue.journal, no cluster): nothing to write, so
 * every step completes at once and the store does it all. Accepted items
 * live only in this process: if it dies they are lost, and every open call
 * ends UNAVAILABLE so clients know to send them again.
 */
#include "grpc/store_memory.h"

const struct store_backend store_memory = {
    .name = "memory",
};
