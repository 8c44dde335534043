/*
 * submit --wait. Items are counted, not just looked up: ids given in JSON
 * lines may repeat, and a reply may list fewer rejections than it counts,
 * so the wait ends when as many final updates arrived as items were
 * accepted.
 */
#include "cli/wait.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/json.h"
#include "cli/jsonl.h"
#include "core/alloc.h"

/* Failures printed one by one; past this many only the count. */
#define FAILURES_KEPT 10000

/* --results: the final update of one item, as a JSON line. */
static void
print_result(const wire_update *u)
{
    char state[32];
    cli_state_name((int)u->state, state, sizeof state);
    fputs("{\"id\":", stdout);
    json_write_string(stdout, u->item_id, strlen(u->item_id));
    printf(",\"state\":\"%s\",\"attempt\":%u", state, (unsigned)u->attempt);
    jsonl_error_result(u->error, u->result.data, u->result.len);
    fputs("}\n", stdout);
}

static void
on_update(void *arg, const wire_update *u)
{
    struct waiter *w = arg;

    switch ((int)u->state) {
    case STATE_SUCCEEDED:
        if (!idset_take(&w->ids, u->item_id))
            break;
        w->succeeded++;
        if (w->results)
            print_result(u);
        break;
    case STATE_FAILED:
    case STATE_CANCELLED:
        if (!idset_take(&w->ids, u->item_id))
            break;
        w->failed++;
        if (w->results)
            print_result(u);
        if (w->failure_count < FAILURES_KEPT) {
            if (w->failures == NULL)
                w->failures = ds_calloc(FAILURES_KEPT, sizeof *w->failures);
            struct failure *f = &w->failures[w->failure_count++];
            f->id = ds_strdup(u->item_id);
            f->error = ds_strdup(u->error);
            f->attempt = u->attempt;
        }
        break;
    default:
        break;
    }
}

/*
 * Final updates only. (QUEUED ones would tell how many were accepted before
 * the reply does, but the daemon accepts a burst of queue.capacity items at
 * once, and their QUEUED updates would get this subscriber cut off.)
 */
int
waiter_start(struct waiter *w, struct rpc *r, const char *batch, char **ids, size_t id_count,
             int64_t deadline_ms)
{
    wire_updates_request request;
    wire_state_value states[] = {
        (wire_state_value)STATE_SUCCEEDED, (wire_state_value)STATE_FAILED,
        (wire_state_value)STATE_CANCELLED,
    };
    char *batches[1] = { (char *)batch };

    memset(w, 0, sizeof *w);
    wire_updates_request_init(&request);
    request.states = states;
    request.n_states = sizeof states / sizeof states[0];
    if (batch != NULL) {
        request.batches = batches;
        request.n_batches = 1;
    } else {
        request.item_ids = ids;
        request.n_item_ids = id_count;
    }
    return subscription_start(&w->sub, r, &request, deadline_ms, on_update, w);
}

void
waiter_expect(struct waiter *w, const char *id)
{
    idset_add(&w->ids, id);
}

void
waiter_reply(struct waiter *w, const wire_submit_reply *reply)
{
    w->accepted = reply->accepted;
    w->have_reply = 1;
    /* A rejected item never gets an update. (The rejections beyond the
     * listed ones are why waiter_done counts instead.) */
    for (size_t i = 0; i < reply->n_rejections; i++)
        idset_take(&w->ids, reply->rejections[i]->id);
}

int
waiter_done(const struct waiter *w)
{
    return w->have_reply && w->succeeded + w->failed >= w->accepted;
}

void
waiter_print(const struct waiter *w, FILE *out)
{
    fprintf(out, "succeeded %llu\n", (unsigned long long)w->succeeded);
    fprintf(out, "failed %llu\n", (unsigned long long)w->failed);
    for (size_t i = 0; i < w->failure_count; i++) {
        const char *error = w->failures[i].error[0] ? w->failures[i].error : "no reason given";
        fputs("  ", out);
        cli_put_shown(out, w->failures[i].id, strlen(w->failures[i].id));
        fputs(": ", out);
        cli_put_shown(out, error, strlen(error));
        fputc('\n', out);
    }
    if (w->failed > w->failure_count)
        fprintf(out, "  (%llu more failures not listed)\n",
                (unsigned long long)(w->failed - w->failure_count));
}

void
waiter_finish(struct waiter *w)
{
    subscription_finish(&w->sub);
    for (size_t i = 0; i < w->failure_count; i++) {
        free(w->failures[i].id);
        free(w->failures[i].error);
    }
    free(w->failures);
    idset_free(&w->ids);
    memset(w, 0, sizeof *w);
}
