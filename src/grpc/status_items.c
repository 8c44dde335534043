/*
 * Known items for the status page and for scripts, read-only:
 *
 *   GET /items/ID        one item, with the first bytes of its result
 *   GET /items?...       a listing, newest accepted first, paged: state
 *                        (QUEUED..CANCELLED, comma-separated), kind, batch,
 *                        limit (1..GET_ITEMS_LIMIT_MAX, default 50), page
 *                        (the next_page of the previous answer)
 *   GET /batches         per batch, the counts by state of the newest
 *                        GET_ITEMS_LIMIT_MAX known items
 *
 * Each builds an ItemsRequest and asks get_items_ask(), the path getItems
 * takes: the index answers at once; in cluster mode Redis answers later,
 * from the loop. The HTTP request waits for it without blocking the loop,
 * for at most ASK_DEADLINE_MS (then 504), and at most ASKS_MAX of them
 * wait at once (then 503): a burst of clients costs bounded memory. A
 * client gone meanwhile is answered into the void (evhttp frees it).
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/utf8.h"
#include "grpc/get_items.h"
#include "grpc/grpc_process.h"
#include "grpc/status_http.h"
#include "grpc/status_items.h"
#include "grpc/store.h"

#define ASK_DEADLINE_MS     5000
#define ASKS_MAX            64
#define LIST_LIMIT_DEFAULT  50
#define BATCHES_MAX         100     /* batches shown by /batches */
#define RESULT_SHOWN        256     /* bytes of a result shown */
#define QUERY_VALUE_MAX     1024
#define KIND_MAX            64      /* bytes of a kind name (metrics.h) */

enum ask_what { ASK_ITEM, ASK_LIST, ASK_BATCHES };

/* One HTTP request waiting for its answer; owned by this file (the
 * pending list), freed when it is answered. */
struct http_ask {
    struct http_ask *prev, *next;
    struct evhttp_request *req;
    enum ask_what what;
    wire_items_request q;           /* its strings are the fields below */
    char *id;                       /* /items/ID */
    char *ids[1];
    char *kind, *batch, *page;
    char *kinds[1], *batches[1];
    int states[STATE_MAX];
    struct store_items_ask *ask;    /* in flight (cluster mode) */
    struct event *deadline;
    int answered;
    int linked;                     /* in si.pending */
};

static struct {
    struct http_ask *pending;
    size_t count;
} si;

int
status_items_serves(const char *path)
{
    return strcmp(path, "/items") == 0 || strncmp(path, "/items/", 7) == 0 ||
           strcmp(path, "/batches") == 0;
}

static const char *const state_names[] = {
    [STATE_QUEUED] = "QUEUED", [STATE_STARTED] = "STARTED", [STATE_PROGRESS] = "PROGRESS",
    [STATE_SUCCEEDED] = "SUCCEEDED", [STATE_FAILED] = "FAILED",
    [STATE_RETRYING] = "RETRYING", [STATE_CANCELLED] = "CANCELLED",
};

static const char *
state_name(int state)
{
    return state > 0 && state <= STATE_MAX && state_names[state] ? state_names[state] : "UNKNOWN";
}

static void
ask_free(struct http_ask *a)
{
    if (a->deadline != NULL)
        event_free(a->deadline);
    free(a->id);
    free(a->kind);
    free(a->batch);
    free(a->page);
    free(a);
}

static void
unlink_ask(struct http_ask *a)
{
    if (a->prev != NULL)
        a->prev->next = a->next;
    else if (si.pending == a)
        si.pending = a->next;
    if (a->next != NULL)
        a->next->prev = a->prev;
    a->prev = a->next = NULL;
    a->linked = 0;
    si.count--;
}

/* ---- JSON of an item ------------------------------------------------------------ */

static void
json_time(struct evbuffer *b, const char *name, int64_t unix_ns)
{
    if (unix_ns > 0)
        evbuffer_add_printf(b, ",\"%s\":%.6f", name, (double)unix_ns / 1e9);
    else
        evbuffer_add_printf(b, ",\"%s\":null", name);
}

/* Text if its first bytes are UTF-8 without control characters (but
 * newline, tab, CR); else hex. */
static void
json_result(struct evbuffer *b, const uint8_t *data, size_t len)
{
    size_t shown = len < RESULT_SHOWN ? len : RESULT_SHOWN;
    size_t text_len = utf8_prefix((const char *)data, shown, shown);
    int text = utf8_valid((const char *)data, text_len) && (text_len == shown || len > shown);
    for (size_t i = 0; text && i < text_len; i++)
        if ((data[i] < 0x20 && data[i] != '\n' && data[i] != '\t' && data[i] != '\r') ||
            data[i] == 0x7f)
            text = 0;
    evbuffer_add_printf(b, ",\"result\":{\"size\":%zu,\"shown\":", len);
    if (text) {
        evbuffer_add_printf(b, "%zu,\"text\":", text_len);
        char *s = ds_malloc(text_len + 1);
        memcpy(s, data, text_len);
        s[text_len] = '\0';
        status_json_string(b, s);
        free(s);
    } else {
        evbuffer_add_printf(b, "%zu,\"hex\":\"", shown);
        for (size_t i = 0; i < shown; i++)
            evbuffer_add_printf(b, "%02x", data[i]);
        evbuffer_add(b, "\"", 1);
    }
    evbuffer_add(b, "}", 1);
}

/* M; its result only WITH_RESULT (a lookup by id: a listing carries none). */
static void
json_item(struct evbuffer *b, const wire_known_item *m, int with_result)
{
    evbuffer_add(b, "{\"id\":", 6);
    status_json_string(b, m->id);
    evbuffer_add(b, ",\"kind\":", 8);
    status_json_string(b, m->kind);
    evbuffer_add(b, ",\"batch\":", 9);
    status_json_string(b, m->batch);
    evbuffer_add_printf(b, ",\"state\":\"%s\",\"attempt\":%u,\"max_attempts\":%u,"
                        "\"progress\":%g,\"worker_pid\":%d,\"priority\":%d,\"last_seq\":%llu",
                        state_name(m->state), m->attempt, m->max_attempts, m->progress,
                        m->worker_pid, m->priority, (unsigned long long)m->last_seq);
    json_time(b, "accepted_unix", m->accepted_unix_nano);
    json_time(b, "started_unix", m->started_unix_nano);
    json_time(b, "finished_unix", m->finished_unix_nano);
    evbuffer_add(b, ",\"traceparent\":", 15);
    if (m->traceparent != NULL && m->traceparent[0] != '\0')
        status_json_string(b, m->traceparent);
    else
        evbuffer_add(b, "null", 4);
    evbuffer_add(b, ",\"error\":", 9);
    if (m->error != NULL && m->error[0] != '\0')
        status_json_string(b, m->error);
    else
        evbuffer_add(b, "null", 4);
    if (with_result && (int)m->state == STATE_SUCCEEDED)
        json_result(b, m->result.data, m->result.len);
    else
        evbuffer_add(b, ",\"result\":null", 14);
    evbuffer_add(b, "}", 1);
}

/* /batches: each batch of the page, newest seen first, with its counts. */
static void
json_batches(struct evbuffer *b, const wire_items_reply *reply)
{
    struct batch_row {
        const char *batch;
        uint64_t counts[STATE_MAX + 1];
        uint64_t total;
    } *rows = ds_calloc(BATCHES_MAX, sizeof *rows);
    size_t n = 0, beyond = 0;
    for (size_t i = 0; i < reply->n_items; i++) {
        const wire_known_item *m = reply->items[i];
        size_t r = 0;
        while (r < n && strcmp(rows[r].batch, m->batch) != 0)
            r++;
        if (r == n) {
            if (n == BATCHES_MAX) {
                beyond++;
                continue;
            }
            rows[n++].batch = m->batch;
        }
        if ((int)m->state > 0 && (int)m->state <= STATE_MAX)
            rows[r].counts[m->state]++;
        rows[r].total++;
    }
    evbuffer_add_printf(b, "{\"scanned\":%zu,\"more\":%s,\"items_not_shown\":%zu,\"batches\":[",
                        reply->n_items, reply->next_page_token && reply->next_page_token[0]
                        ? "true" : "false", beyond);
    for (size_t r = 0; r < n; r++) {
        evbuffer_add_printf(b, "%s{\"batch\":", r ? "," : "");
        status_json_string(b, rows[r].batch);
        evbuffer_add_printf(b, ",\"total\":%llu,\"counts\":{", (unsigned long long)rows[r].total);
        for (int s = STATE_QUEUED; s <= STATE_MAX; s++)
            evbuffer_add_printf(b, "%s\"%s\":%llu", s == STATE_QUEUED ? "" : ",",
                                state_name(s), (unsigned long long)rows[r].counts[s]);
        evbuffer_add(b, "}}", 2);
    }
    evbuffer_add(b, "]}\n", 3);
    free(rows);
}

/* ---- the answer ------------------------------------------------------------------ */

static void
on_answer(void *arg, enum store_items_status status, const char *why,
          const wire_items_reply *reply)
{
    struct http_ask *a = arg;
    a->ask = NULL;
    a->answered = 1;
    if (status != STORE_ITEMS_OK) {
        if (status == STORE_ITEMS_INVALID)
            status_reply_text(a->req, HTTP_BADREQUEST, "Bad Request", "%s", why);
        else if (status == STORE_ITEMS_TOO_LARGE)
            status_reply_text(a->req, HTTP_BADREQUEST, "Bad Request", "%s", why);
        else
            status_reply_text(a->req, HTTP_SERVUNAVAIL, "Service Unavailable", "%s", why);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        evhttp_send_error(a->req, HTTP_INTERNAL, NULL);
        return;
    }
    if (a->what == ASK_ITEM) {
        if (reply->n_items == 0) {
            char shown[80];
            evbuffer_free(b);
            status_reply_text(a->req, HTTP_NOTFOUND, "Not Found", "item \"%s\" is not known "
                              "(never accepted, or forgotten by items.retention)",
                              utf8_escape(shown, sizeof shown, a->id));
            return;
        }
        json_item(b, reply->items[0], 1);
        evbuffer_add(b, "\n", 1);
    } else if (a->what == ASK_LIST) {
        evbuffer_add(b, "{\"items\":[", 10);
        for (size_t i = 0; i < reply->n_items; i++) {
            if (i > 0)
                evbuffer_add(b, ",", 1);
            json_item(b, reply->items[i], 0);
        }
        evbuffer_add(b, "],\"next_page\":", 14);
        if (reply->next_page_token != NULL && reply->next_page_token[0] != '\0')
            status_json_string(b, reply->next_page_token);
        else
            evbuffer_add(b, "null", 4);
        evbuffer_add(b, "}\n", 2);
    } else {
        json_batches(b, reply);
    }
    status_reply(a->req, HTTP_OK, "OK", STATUS_CONTENT_JSON, b);
    evbuffer_free(b);
}

static void
on_async_answer(void *arg, enum store_items_status status, const char *why,
                const wire_items_reply *reply)
{
    struct http_ask *a = arg;
    on_answer(a, status, why, reply);
    if (a->linked) {
        unlink_ask(a);
        ask_free(a);
    }
}

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct http_ask *a = arg;
    if (a->ask != NULL)
        store_items_abort(a->ask);
    a->ask = NULL;
    status_reply_text(a->req, 504, "Gateway Timeout", "the store did not answer within %d ms",
                      ASK_DEADLINE_MS);
    unlink_ask(a);
    ask_free(a);
}

/* ---- the request ------------------------------------------------------------------ */

static int
parse_states(struct http_ask *a, const char *value, char *err, size_t size)
{
    const char *p = value;
    while (*p != '\0') {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        int found = 0;
        for (int s = STATE_QUEUED; s <= STATE_MAX && !found; s++)
            if (strlen(state_names[s]) == len && strncasecmp(state_names[s], p, len) == 0) {
                found = s;
            }
        if (!found) {
            char shown[64], word[64];
            snprintf(word, sizeof word, "%.*s", (int)(len < 60 ? len : 60), p);
            snprintf(err, size, "state \"%s\" is not one of QUEUED, STARTED, PROGRESS, "
                     "SUCCEEDED, FAILED, RETRYING, CANCELLED", utf8_escape(shown, sizeof shown,
                                                                           word));
            return -1;
        }
        int seen = 0;
        for (size_t i = 0; i < a->q.n_states; i++)
            seen |= a->states[i] == found;
        if (!seen)
            a->states[a->q.n_states++] = found;
        p += len;
        if (*p == ',')
            p++;
    }
    if (a->q.n_states == 0) {
        snprintf(err, size, "state is empty: give one or more state names, comma-separated");
        return -1;
    }
    a->q.states = (void *)a->states;
    return 0;
}

static int
parse_limit(struct http_ask *a, const char *value, char *err, size_t size)
{
    char *end;
    unsigned long long v = 0;
    int digits = value[0] >= '0' && value[0] <= '9' && strlen(value) <= 9;
    if (digits)
        v = strtoull(value, &end, 10);
    if (!digits || *end != '\0' || v < 1 || v > GET_ITEMS_LIMIT_MAX) {
        char shown[40];
        snprintf(err, size, "limit \"%s\": give a number from 1 to %d (default %d)",
                 utf8_escape(shown, sizeof shown, value), GET_ITEMS_LIMIT_MAX,
                 LIST_LIMIT_DEFAULT);
        return -1;
    }
    a->q.limit = (uint32_t)v;
    return 0;
}

/* A string parameter: valid UTF-8, 1..MAX bytes. */
static int
string_param(const char *name, const char *value, size_t max, char **out, char *err, size_t size)
{
    size_t len = strlen(value);
    if (!utf8_valid(value, len)) {
        snprintf(err, size, "%s is not valid UTF-8", name);
        return -1;
    }
    if (len == 0 || len > max) {
        snprintf(err, size, "%s is %zu bytes: must be 1..%zu", name, len, max);
        return -1;
    }
    *out = ds_strdup(value);
    return 0;
}

static int
parse_query(struct http_ask *a, const char *query, char *err, size_t size)
{
    struct evkeyvalq params;
    TAILQ_INIT(&params);
    if (query != NULL && evhttp_parse_query_str(query, &params) == -1) {
        snprintf(err, size, "the query string is not one of name=value pairs");
        return -1;
    }
    int rc = 0;
    unsigned seen = 0;
    for (struct evkeyval *kv = params.tqh_first; kv != NULL && rc == 0; kv = kv->next.tqe_next) {
        static const char *const known[] = { "state", "kind", "batch", "limit", "page" };
        unsigned which = 0;
        while (which < 5 && strcmp(kv->key, known[which]) != 0)
            which++;
        if (which == 5 || a->what == ASK_BATCHES) {
            char shown[64];
            snprintf(err, size, a->what == ASK_BATCHES ? "/batches takes no parameter (\"%s\")"
                     : "unknown parameter \"%s\" (state, kind, batch, limit, page)",
                     utf8_escape(shown, sizeof shown, kv->key));
            rc = -1;
            break;
        }
        if (seen & (1u << which)) {
            snprintf(err, size, "%s given twice", known[which]);
            rc = -1;
            break;
        }
        seen |= 1u << which;
        if (strlen(kv->value) > QUERY_VALUE_MAX) {
            snprintf(err, size, "%s is %zu bytes, more than %d", known[which],
                     strlen(kv->value), QUERY_VALUE_MAX);
            rc = -1;
        } else if (which == 0) {
            rc = parse_states(a, kv->value, err, size);
        } else if (which == 1) {
            rc = string_param("kind", kv->value, KIND_MAX, &a->kind, err, size);
            a->kinds[0] = a->kind;
            a->q.kinds = a->kinds;
            a->q.n_kinds = rc == 0;
        } else if (which == 2) {
            rc = string_param("batch", kv->value, DS_ITEM_BATCH_MAX, &a->batch, err, size);
            a->batches[0] = a->batch;
            a->q.batches = a->batches;
            a->q.n_batches = rc == 0;
        } else if (which == 3) {
            rc = parse_limit(a, kv->value, err, size);
        } else {
            rc = string_param("page", kv->value, 64, &a->page, err, size);
            if (rc == 0)
                a->q.page_token = a->page;
        }
    }
    evhttp_clear_headers(&params);
    return rc;
}

/* The id of /items/ID, percent-decoded. */
static int
parse_id(struct http_ask *a, const char *encoded, char *err, size_t size)
{
    size_t len;
    char *id = evhttp_uridecode(encoded, 0, &len);
    if (id == NULL) {
        snprintf(err, size, "the id cannot be decoded");
        return -1;
    }
    a->id = id;
    if (len == 0) {
        snprintf(err, size, "no id: ask for /items/ID");
        return -1;
    }
    if (memchr(id, '\0', len) != NULL) {
        snprintf(err, size, "the id holds a NUL byte");
        return -1;
    }
    if (!utf8_valid(id, len)) {
        snprintf(err, size, "the id is not valid UTF-8");
        return -1;
    }
    if (len > DS_ITEM_ID_MAX) {
        snprintf(err, size, "the id is %zu bytes, more than an id has (%d)", len,
                 DS_ITEM_ID_MAX);
        return -1;
    }
    a->ids[0] = id;
    a->q.item_ids = a->ids;
    a->q.n_item_ids = 1;
    a->q.with_results = 1;
    return 0;
}

void
status_items_request(struct evhttp_request *req, const char *path)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *query = uri != NULL ? evhttp_uri_get_query(uri) : NULL;
    char err[300];

    if (si.count >= ASKS_MAX) {
        status_reply_text(req, HTTP_SERVUNAVAIL, "Service Unavailable", "%zu item lookups are "
                          "waiting for the store already; ask again", si.count);
        return;
    }
    struct http_ask *a = ds_calloc(1, sizeof *a);
    a->req = req;
    com__agrounds__dosomething__v1__items_request__init(&a->q);
    int rc;
    if (strncmp(path, "/items/", 7) == 0) {
        a->what = ASK_ITEM;
        rc = parse_id(a, path + 7, err, sizeof err);
        if (rc == 0 && query != NULL && query[0] != '\0') {
            snprintf(err, sizeof err, "/items/ID takes no parameter");
            rc = -1;
        }
    } else {
        a->what = strcmp(path, "/batches") == 0 ? ASK_BATCHES : ASK_LIST;
        a->q.limit = a->what == ASK_BATCHES ? GET_ITEMS_LIMIT_MAX : LIST_LIMIT_DEFAULT;
        rc = parse_query(a, query, err, sizeof err);
    }
    if (rc == 0)
        rc = get_items_check(&a->q, err, sizeof err);
    if (rc == -1) {
        status_reply_text(req, HTTP_BADREQUEST, "Bad Request", "%s", err);
        ask_free(a);
        return;
    }
    struct store_items_ask *ask = get_items_ask(&a->q, a->ids, on_async_answer, a);
    if (a->answered) {
        /* The index answers before get_items_ask returns. */
        ask_free(a);
        return;
    }
    a->ask = ask;
    a->linked = 1;
    a->prev = NULL;
    a->next = si.pending;
    if (si.pending != NULL)
        si.pending->prev = a;
    si.pending = a;
    si.count++;
    a->deadline = evtimer_new(gp.base, on_deadline, a);
    struct timeval tv = clock_timeval_ms(ASK_DEADLINE_MS);
    evtimer_add(a->deadline, &tv);
}

void
status_items_shutdown(void)
{
    while (si.pending != NULL) {
        struct http_ask *a = si.pending;
        if (a->ask != NULL)
            store_items_abort(a->ask);
        a->ask = NULL;
        status_reply_text(a->req, HTTP_SERVUNAVAIL, "Service Unavailable",
                          "the server is stopping");
        unlink_ask(a);
        ask_free(a);
    }
}
