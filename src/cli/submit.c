/*
 * dosomething submit: stream items from stdin or files into one
 * doSomething call and print the SubmitReply; with --wait, watch every
 * accepted item to its final update.
 *
 * Items are read only when the call can take one (a send completed), so
 * when the server pushes back (queue full), so does the input.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/input.h"
#include "cli/item.h"
#include "cli/item_wire.h"
#include "cli/progress.h"
#include "cli/rpc.h"
#include "cli/wait.h"
#include "core/alloc.h"

#define DO_SOMETHING "/com.agrounds.dosomething.v1.DoSomethingService/doSomething"

/* --wait reads this many items, or for this long, before it subscribes: if
 * the input ends by then, it watches those ids; else it labels the items
 * with a batch and watches that. */
#define WAIT_BUFFER_ITEMS 1000
#define WAIT_BUFFER_MS    2000
#define INPUT_WAIT_MS     50
#define FINISH_MS         5000
#define PARAMS_MAX        256
/* The daemon's bound of WorkItem.delay_ms (DS_DELAY_MAX_MS): 30 days. */
#define SUBMIT_DELAY_MAX_MS (30ull * 24 * 3600 * 1000)
/* The write-buffer hint lets gRPC hold messages back until a message
 * without it; flush at least this often, or the daemon (and --wait) sees
 * nothing of a long input until its end. */
#define FLUSH_BYTES       (64 * 1024)

enum {
    OPT_KIND = OPT_COMMAND_BASE,
    OPT_PARAM,
    OPT_BATCH,
    OPT_ID_PREFIX,
    OPT_JSON,
    OPT_WAIT,
    OPT_RESULTS,
    OPT_PRIORITY,
    OPT_DELAY,
};

/* Items read and not sent yet, in order. */
struct item_queue {
    struct item *items;
    size_t head;
    size_t count;
    size_t size;
};

struct submit {
    struct rpc rpc;
    const struct cli_options *global;
    int json;
    int wait;
    int results;                    /* --results: print each final update */
    char prefix[300];               /* of generated ids: PREFIX-N */
    const char *batch_option;       /* --batch */
    struct item_param params[PARAMS_MAX];
    struct item_defaults defaults;
    char label[32];                 /* the batch --wait generated */
    const char *wait_batch;         /* --wait watches this batch; NULL: ids */
    int64_t start_ms;

    struct input in;
    int input_done;
    int input_failed;
    uint64_t taken;                 /* items taken from the input */
    uint64_t invalid;               /* lines skipped */
    struct item_queue queue;

    struct rpc_call call;
    struct rpc_tag send_tag;
    struct rpc_tag reply_tag;
    grpc_byte_buffer *send_buffer;
    grpc_byte_buffer *reply_buffer;
    grpc_metadata_array reply_metadata;
    int sending;
    int closed;                     /* half-closed: everything is sent */
    int send_failed;
    uint64_t sent;
    size_t unflushed;               /* bytes sent with the hint since the last flush */
    wire_submit_reply *reply;
    int bad_reply;

    struct waiter waiter;
    int waiting;
    int interrupted;
    struct progress progress;
};

/* ---- the queue ---------------------------------------------------------- */

static void
queue_push(struct item_queue *q, const struct item *it)
{
    if (q->count == q->size) {
        size_t size = q->size ? q->size * 2 : 64;
        struct item *items = ds_malloc(size * sizeof *items);
        for (size_t i = 0; i < q->count; i++)
            items[i] = q->items[(q->head + i) % q->size];
        free(q->items);
        q->items = items;
        q->size = size;
        q->head = 0;
    }
    q->items[(q->head + q->count) % q->size] = *it;
    q->count++;
}

static struct item *
queue_at(struct item_queue *q, size_t i)
{
    return &q->items[(q->head + i) % q->size];
}

/* Drop the front item (freeing it). */
static void
queue_pop(struct item_queue *q)
{
    item_free(queue_at(q, 0));
    q->head = (q->head + 1) % q->size;
    q->count--;
}

static void
queue_free(struct item_queue *q)
{
    while (q->count > 0)
        queue_pop(q);
    free(q->items);
    memset(q, 0, sizeof *q);
}

/* ---- input -------------------------------------------------------------- */

static void
skip_line(struct submit *s, const char *reason)
{
    cli_error("%s:%llu: %s; line skipped", s->in.name, (unsigned long long)s->in.line, reason);
    s->invalid++;
}

static int
blank(const char *line, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r')
            return 0;
    return 1;
}

/* The batch rule of a large --wait submission; 0 if the item keeps to it. */
static int
outside_wait_batch(struct submit *s, const struct item *it, char *err, size_t size)
{
    if (s->wait_batch == NULL || it->batch == NULL || strcmp(it->batch, s->wait_batch) == 0)
        return 0;
    snprintf(err, size, "batch \"%.64s\" is not the one --wait watches (\"%.64s\"): with --wait, "
             "a submission of more than %d items must be one batch", it->batch, s->wait_batch,
             WAIT_BUFFER_ITEMS);
    return 1;
}

/* Take the next item into the queue: 1, 0 at the end of the input, -2 if
 * none came within timeout_ms. Bad lines are reported and skipped. */
static int
read_item(struct submit *s, int timeout_ms)
{
    char err[600];
    char *line;
    size_t len;

    while (!s->input_done) {
        int r = input_next(&s->in, timeout_ms, &line, &len);
        if (r == -2)
            return -2;
        if (r <= 0) {
            s->input_done = 1;
            s->input_failed = r == -1;
            break;
        }
        struct item it;
        if (!s->json) {
            item_from_line(&it, line, len);
        } else if (blank(line, len)) {
            continue;
        } else if (item_from_json(&it, line, len, err, sizeof err) == -1) {
            skip_line(s, err);
            continue;
        }
        if (outside_wait_batch(s, &it, err, sizeof err)) {
            skip_line(s, err);
            item_free(&it);
            continue;
        }
        if (it.id == NULL || it.id[0] == '\0') {
            char id[340];
            snprintf(id, sizeof id, "%s-%llu", s->prefix, (unsigned long long)s->taken + 1);
            free(it.id);
            it.id = ds_strdup(id);
        }
        s->taken++;
        queue_push(&s->queue, &it);
        return 1;
    }
    return 0;
}

/* ---- the doSomething call ----------------------------------------------- */

static void
on_sent(struct rpc_tag *tag, int ok)
{
    struct submit *s = tag->call->owner;
    grpc_byte_buffer_destroy(s->send_buffer);
    s->send_buffer = NULL;
    s->sending = 0;
    if (!ok)
        s->send_failed = 1;     /* the call is over; its status says why */
}

static void
on_reply(struct rpc_tag *tag, int ok)
{
    struct submit *s = tag->call->owner;
    grpc_byte_buffer *bb = s->reply_buffer;
    s->reply_buffer = NULL;
    if (bb == NULL)
        return;
    grpc_slice slice = rpc_buffer_slice(bb);
    grpc_byte_buffer_destroy(bb);
    s->reply = wire_submit_reply_unpack(NULL, GRPC_SLICE_LENGTH(slice),
                                        GRPC_SLICE_START_PTR(slice));
    grpc_slice_unref(slice);
    if (s->reply == NULL)
        s->bad_reply = 1;
    else if (s->waiting)
        waiter_reply(&s->waiter, s->reply);
}

static int
call_start(struct submit *s)
{
    int64_t timeout = s->global->timeout_ms < 0 ? CLI_DEFAULT_TIMEOUT : s->global->timeout_ms;

    s->call.owner = s;
    if (rpc_call_start(&s->rpc, &s->call, DO_SOMETHING, "doSomething",
                       timeout > 0 ? s->start_ms + timeout : -1) == -1)
        return -1;
    grpc_metadata_array_init(&s->reply_metadata);
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[0].data.recv_initial_metadata.recv_initial_metadata = &s->reply_metadata;
    ops[1].op = GRPC_OP_RECV_MESSAGE;
    ops[1].data.recv_message.recv_message = &s->reply_buffer;
    s->send_tag.done = on_sent;
    s->reply_tag.done = on_reply;
    if (rpc_batch(&s->call, ops, 2, &s->reply_tag) == -1)
        rpc_call_cancel(&s->call);
    return 0;
}

/* Send the front item; with the write-buffer hint if another is ready,
 * and not too much is held back already. */
static void
send_front(struct submit *s)
{
    int last = s->queue.count == 1 && s->input_done;
    struct item *it = queue_at(&s->queue, 0);
    grpc_op ops[2];

    memset(ops, 0, sizeof ops);
    s->send_buffer = item_encode(it, &s->defaults);
    s->unflushed += grpc_byte_buffer_length(s->send_buffer);
    int hint = s->queue.count > 1 && s->unflushed < FLUSH_BYTES;
    if (!hint)
        s->unflushed = 0;
    if (s->waiting)
        waiter_expect(&s->waiter, it->id);
    queue_pop(&s->queue);

    ops[0].op = GRPC_OP_SEND_MESSAGE;
    ops[0].flags = hint ? GRPC_WRITE_BUFFER_HINT : 0;
    ops[0].data.send_message.send_message = s->send_buffer;
    ops[1].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    s->closed = last;
    if (rpc_batch(&s->call, ops, last ? 2 : 1, &s->send_tag) == -1) {
        grpc_byte_buffer_destroy(s->send_buffer);
        s->send_buffer = NULL;
        s->send_failed = 1;
        rpc_call_cancel(&s->call);
        return;
    }
    s->sending = 1;
    s->sent++;
}

/* Feed the call. Returns 1 if it waited for input (the caller then need
 * not wait for completions). */
static int
pump(struct submit *s)
{
    int waited = 0;

    if (s->sending || s->closed || s->send_failed || s->call.ended)
        return 0;
    if (s->queue.count == 0 && !s->input_done) {
        waited = 1;
        if (read_item(s, INPUT_WAIT_MS) != 1 && !s->input_done)
            return waited;
    }
    if (s->queue.count == 0) {
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        s->closed = 1;
        if (rpc_batch(&s->call, &op, 1, &s->send_tag) == -1)
            rpc_call_cancel(&s->call);
        else
            s->sending = 1;
        return waited;
    }
    /* Is the next one ready now? That decides the hint, and whether this
     * one is the last. */
    if (s->queue.count == 1 && !s->input_done)
        read_item(s, 0);
    send_front(s);
    return waited;
}

/* ---- --wait ------------------------------------------------------------- */

static void
random_token(char *out, size_t size)
{
    unsigned char bytes[6];
    if (getrandom(bytes, sizeof bytes, 0) != (ssize_t)sizeof bytes) {
        uint64_t v = (uint64_t)time(NULL) << 20 ^ (uint64_t)getpid() ^ (uint64_t)clock_now_ms();
        memcpy(bytes, &v, sizeof bytes);
    }
    snprintf(out, size, "%02x%02x%02x%02x%02x%02x", bytes[0], bytes[1], bytes[2], bytes[3],
             bytes[4], bytes[5]);
}

/* The buffered items must keep to the batch rule too. */
static void
drop_outside_batch(struct submit *s)
{
    struct item_queue kept = { 0 };
    char err[600];

    while (s->queue.count > 0) {
        struct item *it = queue_at(&s->queue, 0);
        if (outside_wait_batch(s, it, err, sizeof err)) {
            cli_error("item %s: %s; not sent", it->id, err);
            s->invalid++;
            queue_pop(&s->queue);
            continue;
        }
        queue_push(&kept, it);
        s->queue.head = (s->queue.head + 1) % s->queue.size;   /* moved, not freed */
        s->queue.count--;
    }
    free(s->queue.items);
    s->queue = kept;
}

/*
 * Subscribe before the first item goes out, or an item could finish
 * before the server knows this subscriber. Returns 0, or -1 after a message.
 */
static int
wait_start(struct submit *s)
{
    int64_t until = clock_now_ms() + WAIT_BUFFER_MS;
    while (!s->input_done && s->queue.count < WAIT_BUFFER_ITEMS && clock_now_ms() < until &&
           !rpc_interrupted)
        read_item(s, INPUT_WAIT_MS);
    if (rpc_interrupted || (s->input_done && s->queue.count == 0))
        return 0;

    const char *batch = NULL;
    char **ids = NULL;
    size_t id_count = 0;
    if (s->input_done) {
        /* Few enough to name, unless --batch names them all. */
        const char *b = s->batch_option;
        for (size_t i = 0; i < s->queue.count && b != NULL; i++)
            if (strcmp(item_batch(queue_at(&s->queue, i), &s->defaults), b) != 0)
                b = NULL;
        if (b != NULL) {
            batch = b;
        } else {
            ids = ds_malloc(s->queue.count * sizeof *ids);
            for (size_t i = 0; i < s->queue.count; i++)
                ids[id_count++] = queue_at(&s->queue, i)->id;
        }
    } else {
        if (s->batch_option == NULL) {
            random_token(s->label, sizeof s->label);
            s->defaults.batch = s->label;
        }
        batch = s->wait_batch = s->defaults.batch;
        drop_outside_batch(s);
    }

    int64_t timeout = s->global->timeout_ms;
    int rc = waiter_start(&s->waiter, &s->rpc, batch, ids, id_count,
                          timeout > 0 ? s->start_ms + timeout : -1);
    free(ids);
    if (rc == -1)
        return -1;
    s->waiting = 1;
    s->waiter.results = s->results;

    int64_t deadline = timeout == 0 ? -1 : s->start_ms + (timeout < 0 ? CLI_DEFAULT_TIMEOUT : timeout);
    struct subscription *sub = &s->waiter.sub;
    while (!sub->ready && !sub->ended && !rpc_interrupted &&
           (deadline < 0 || clock_now_ms() < deadline))
        rpc_poll(&s->rpc, 100);
    if (sub->ended) {
        rpc_report(&sub->call);
        return -1;
    }
    if (!sub->ready && !rpc_interrupted) {
        cli_error("getUpdates (to %s): no answer from the server in time; --timeout sets the "
                  "deadline", s->rpc.target);
        return -1;
    }
    return 0;
}

/* ---- the command -------------------------------------------------------- */

static int
finished(const struct submit *s)
{
    if (!s->call.ended || s->call.pending > 0)
        return 0;
    if (!s->waiting || s->call.status != GRPC_STATUS_OK || s->reply == NULL)
        return 1;
    return waiter_done(&s->waiter) || s->waiter.sub.ended;
}

static void
show_progress(struct submit *s)
{
    struct progress_counts c = { .sent = s->sent, .waiting = s->waiting };
    if (s->reply != NULL) {
        c.accepted = s->reply->accepted;
        c.accepted_known = 1;
    }
    c.finished = s->waiter.succeeded + s->waiter.failed;
    progress_update(&s->progress, &c);
}

static void
run(struct submit *s)
{
    while (!finished(s)) {
        if (rpc_interrupted) {
            s->interrupted = 1;
            rpc_call_cancel(&s->call);
            break;
        }
        int waited = pump(s);
        rpc_poll(&s->rpc, waited ? 0 : 100);
        show_progress(s);
    }
}

static void
print_reply(const wire_submit_reply *r)
{
    printf("accepted %llu\n", (unsigned long long)r->accepted);
    printf("rejected %llu\n", (unsigned long long)r->rejected);
    for (size_t i = 0; i < r->n_rejections; i++) {
        const wire_rejection *rj = r->rejections[i];
        printf("  %u ", (unsigned)rj->index);
        cli_put_shown(stdout, rj->id, strlen(rj->id));
        fputs(": ", stdout);
        cli_put_shown(stdout, rj->reason, strlen(rj->reason));
        putchar('\n');
    }
    if (r->rejected > r->n_rejections)
        printf("  (%llu more rejections not listed)\n",
               (unsigned long long)(r->rejected - r->n_rejections));
    /* Ids the daemon already knew: not run again (a resend is safe). */
    printf("duplicates %llu\n", (unsigned long long)r->duplicates);
}

/* Print what happened; returns the exit status. */
static int
report(struct submit *s)
{
    int rc = CLI_EXIT_OK;

    progress_clear(&s->progress);
    if (s->reply != NULL) {
        print_reply(s->reply);
        if (s->reply->rejected > 0)
            rc = CLI_EXIT_NEGATIVE;
    }
    if (s->waiting && s->reply != NULL && s->call.status == GRPC_STATUS_OK) {
        waiter_print(&s->waiter, stdout);
        if (s->waiter.failed > 0)
            rc = CLI_EXIT_NEGATIVE;
    }
    fflush(stdout);
    if (s->invalid > 0 || s->input_failed) {
        if (s->invalid > 0)
            cli_error("%llu input line%s skipped", (unsigned long long)s->invalid,
                      s->invalid == 1 ? "" : "s");
        rc = CLI_EXIT_USAGE;
    }
    if (s->interrupted) {
        cli_error("interrupted after sending %llu items%s", (unsigned long long)s->sent,
                  s->reply == NULL ? "; the items sent may have been accepted" : "");
        return CLI_EXIT_INTERRUPTED;
    }
    if (s->call.status != GRPC_STATUS_OK) {
        rpc_report(&s->call);
        return CLI_EXIT_RPC;
    }
    if (s->reply == NULL) {
        cli_error("doSomething (to %s): %s", s->rpc.target,
                  s->bad_reply ? "the reply is not a SubmitReply" : "no reply");
        return CLI_EXIT_RPC;
    }
    if (s->waiting && !waiter_done(&s->waiter)) {
        struct rpc_call *c = &s->waiter.sub.call;
        uint64_t left = s->reply->accepted - s->waiter.succeeded - s->waiter.failed;
        if (c->status == GRPC_STATUS_OK)
            cli_error("getUpdates (to %s): the server ended the stream", s->rpc.target);
        else
            rpc_report(c);
        cli_error("%llu accepted item%s did not finish while watched", (unsigned long long)left,
                  left == 1 ? "" : "s");
        return CLI_EXIT_RPC;
    }
    return rc;
}

static int
add_param(struct submit *s, const char *arg)
{
    const char *eq = strchr(arg, '=');
    if (eq == NULL || eq == arg)
        return cli_usage_error("submit", "--param takes NAME=VALUE, not \"%s\"", arg);
    if (s->defaults.param_count == PARAMS_MAX)
        return cli_usage_error("submit", "more than %d --param", PARAMS_MAX);
    char *key = ds_strndup(arg, (size_t)(eq - arg));
    for (size_t i = 0; i < s->defaults.param_count; i++) {
        if (strcmp(s->params[i].key, key) == 0) {
            free(key);
            return cli_usage_error("submit", "--param %s given twice", s->params[i].key);
        }
    }
    s->params[s->defaults.param_count].key = key;
    s->params[s->defaults.param_count].value = ds_strdup(eq + 1);
    s->defaults.param_count++;
    return 0;
}

static int
parse_options(struct submit *s, int argc, char **argv, struct cli_options *global)
{
    static const struct option options[] = {
        { "kind", required_argument, NULL, OPT_KIND },
        { "param", required_argument, NULL, OPT_PARAM },
        { "batch", required_argument, NULL, OPT_BATCH },
        { "id-prefix", required_argument, NULL, OPT_ID_PREFIX },
        { "json", no_argument, NULL, OPT_JSON },
        { "wait", no_argument, NULL, OPT_WAIT },
        { "results", no_argument, NULL, OPT_RESULTS },
        { "priority", required_argument, NULL, OPT_PRIORITY },
        { "delay", required_argument, NULL, OPT_DELAY },
        CLI_GLOBAL_LONG_OPTIONS
    };
    int opt;

    s->defaults.params = s->params;
    optind = 0;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case OPT_KIND: s->defaults.kind = optarg; break;
        case OPT_PARAM:
            if (add_param(s, optarg) != 0)
                return CLI_EXIT_USAGE;
            break;
        case OPT_BATCH: s->batch_option = s->defaults.batch = optarg; break;
        case OPT_ID_PREFIX:
            if (optarg[0] == '\0' || strlen(optarg) > 200)
                return cli_usage_error("submit", "--id-prefix takes 1..200 characters");
            snprintf(s->prefix, sizeof s->prefix, "%s", optarg);
            break;
        case OPT_JSON: s->json = 1; break;
        case OPT_WAIT: s->wait = 1; break;
        case OPT_RESULTS: s->results = 1; break;
        case OPT_PRIORITY: {
            uint64_t n;
            int negative = optarg[0] == '-';
            if (parse_u64(optarg + negative, &n) == -1 ||
                n > (negative ? (uint64_t)INT32_MAX + 1 : (uint64_t)INT32_MAX))
                return cli_usage_error("submit", "--priority takes an integer %d..%d, got "
                                       "\"%.32s\"", INT32_MIN, INT32_MAX, optarg);
            s->defaults.priority = negative ? (int32_t)(-(int64_t)n) : (int32_t)n;
            break;
        }
        case OPT_DELAY: {
            int64_t ms;
            if (parse_duration_ms(optarg, &ms) != 0 || ms > (int64_t)SUBMIT_DELAY_MAX_MS)
                return cli_usage_error("submit", "--delay takes a duration up to 720h (30 "
                                       "days), such as 30s or 5m, got \"%.32s\"", optarg);
            s->defaults.delay_ms = (uint32_t)ms;
            break;
        }
        default:
            if (cli_command_option("submit", opt, optarg, global) == -1)
                return CLI_EXIT_USAGE;
            break;
        }
    }
    if (s->results && !s->wait)
        return cli_usage_error("submit", "--results prints what --wait waits for: give --wait");
    return cli_options_check(global);
}

int
submit_main(int argc, char **argv, struct cli_options *global)
{
    struct submit *s = ds_calloc(1, sizeof *s);
    int rc = parse_options(s, argc, argv, global);

    s->global = global;
    s->start_ms = clock_now_ms();
    if (rc != 0)
        goto out;
    if (s->prefix[0] == '\0')
        random_token(s->prefix, sizeof s->prefix);
    if (input_open(&s->in, argv + optind, (size_t)(argc - optind)) == -1) {
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    progress_init(&s->progress);
    if ((rc = rpc_open(&s->rpc, global)) != 0)
        goto out_input;
    if (s->wait && wait_start(s) == -1) {
        rc = CLI_EXIT_RPC;
    } else if (call_start(s) == -1) {
        rc = CLI_EXIT_RPC;
    } else {
        run(s);
        rc = report(s);
        rpc_call_finish(&s->rpc, &s->call, FINISH_MS);
        rpc_call_free(&s->call);
        grpc_metadata_array_destroy(&s->reply_metadata);
    }
    if (s->waiting)
        waiter_finish(&s->waiter);
    if (s->reply != NULL)
        wire_submit_reply_free(s->reply, NULL);
    if (s->send_buffer != NULL && s->call.pending == 0)
        grpc_byte_buffer_destroy(s->send_buffer);
    rpc_close(&s->rpc);
out_input:
    input_close(&s->in);
out:
    queue_free(&s->queue);
    for (size_t i = 0; i < s->defaults.param_count; i++) {
        free(s->params[i].key);
        free(s->params[i].value);
    }
    free(s);
    return rc;
}
