/*
 * Work items as the user writes them (a plain line, or a JSON line);
 * item_wire.h puts them on the wire.
 */
#ifndef DS_CLI_ITEM_H
#define DS_CLI_ITEM_H

#include <stddef.h>
#include <stdint.h>

struct item_param {
    char *key;
    char *value;
};

/* One item; every pointer is owned (malloc'ed). NULL: not given. */
struct item {
    char *id;
    char *kind;
    uint8_t *payload;
    size_t payload_len;
    struct item_param *params;
    size_t param_count;
    char *batch;
    uint32_t timeout_ms;
    uint32_t max_attempts;
    int32_t priority;
    uint32_t delay_ms;
    uint8_t has_priority, has_delay;    /* given: they win over the defaults */
};

/* What applies to an item that does not say (--kind, --param, --batch). */
struct item_defaults {
    const char *kind;
    const struct item_param *params;
    size_t param_count;
    const char *batch;
    int32_t priority;               /* --priority */
    uint32_t delay_ms;              /* --delay */
};

/* A plain line: the payload, byte for byte. */
void item_from_line(struct item *it, const char *line, size_t len);
/* A JSON line {"id", "kind", "payload" | "payload_b64", "params", "batch",
 * "timeout_ms", "max_attempts", "priority", "delay_ms"}. Returns 0, or -1 with the reason in err. */
int item_from_json(struct item *it, const char *line, size_t len, char *err, size_t err_size);
/* The batch the item is sent with. */
const char *item_batch(const struct item *it, const struct item_defaults *defaults);
void item_free(struct item *it);

#endif
