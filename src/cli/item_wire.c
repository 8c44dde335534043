/*
 * An item as a WorkItem on the wire: apart from item.c so that what reads
 * the user's lines links without gRPC (tests/fuzz/fuzz_cli.c).
 */
#include "cli/item_wire.h"

#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/rpc.h"
#include "core/alloc.h"

grpc_byte_buffer *
item_encode(const struct item *it, const struct item_defaults *d)
{
    size_t max = it->param_count + d->param_count;
    wire_param *entries = ds_calloc(max + 1, sizeof *entries);
    wire_param **pointers = ds_calloc(max + 1, sizeof *pointers);
    size_t n = 0;

    /* The item's own params, then the defaults it does not override. */
    for (size_t i = 0; i < it->param_count; i++) {
        wire_param_init(&entries[n]);
        entries[n].key = it->params[i].key;
        entries[n].value = it->params[i].value;
        pointers[n] = &entries[n];
        n++;
    }
    for (size_t i = 0; i < d->param_count; i++) {
        size_t j = 0;
        while (j < it->param_count && strcmp(it->params[j].key, d->params[i].key) != 0)
            j++;
        if (j < it->param_count)
            continue;
        wire_param_init(&entries[n]);
        entries[n].key = d->params[i].key;
        entries[n].value = d->params[i].value;
        pointers[n] = &entries[n];
        n++;
    }

    wire_work_item msg;
    wire_work_item_init(&msg);
    msg.id = it->id != NULL ? it->id : (char *)"";
    msg.kind = (char *)(it->kind != NULL ? it->kind : d->kind != NULL ? d->kind : "");
    msg.payload.data = it->payload;
    msg.payload.len = it->payload_len;
    msg.n_params = n;
    msg.params = pointers;
    msg.timeout_ms = it->timeout_ms;
    msg.max_attempts = it->max_attempts;
    msg.priority = it->has_priority ? it->priority : d->priority;
    msg.delay_ms = it->has_delay ? it->delay_ms : d->delay_ms;
    msg.batch = (char *)item_batch(it, d);

    grpc_slice slice = grpc_slice_malloc(wire_work_item_size(&msg));
    wire_work_item_pack(&msg, GRPC_SLICE_START_PTR(slice));
    grpc_byte_buffer *bb = rpc_buffer_take(slice);
    free(entries);
    free(pointers);
    return bb;
}
