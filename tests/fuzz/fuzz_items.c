/*
 * Fuzz target: decoding what clients send.
 *
 * The input is unpacked (protobuf-c) both as a WorkItem and as an
 * UpdatesRequest.
 *
 * WorkItem: resolved to a handler as the grpc process does (empty kind: the
 * default) against a config with the builtins echo, sha256 and sleep and an
 * exec handler, then kind_check(). An accepted item also goes through
 * kind_is_quick() and, for echo and for sha256 with few rounds,
 * handler_run(). A refused one must leave a reason. The payload, as text,
 * goes through handler_clean_text(), which must leave valid UTF-8, no
 * longer, without control characters (C0, DEL, C1), and change nothing a
 * second time.
 *
 * UpdatesRequest: filter_init(); if it accepts the request, filter_match()
 * is compared with a linear search over the request's lists for every
 * string of the request (and a few others) and every state.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "core/config.h"
#include "core/kind.h"
#include "core/log.h"
#include "core/utf8.h"
#include "core/wire.h"
#include "grpc/filter.h"
#include "workers/handler.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char fuzz_config_text[] =
    "handlers:\n"
    "  default: echo\n"
    "  echo:   {builtin: echo}\n"
    "  sha256: {builtin: sha256, timeout: 30s}\n"
    "  sleep:  {builtin: sleep}\n"
    "  cat:    {exec: [/bin/cat]}\n";

static struct ds_config *config;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    log_open("stderr", DS_LOG_ERROR);
    char errors[1024];
    config = config_load_text("fuzz.yaml", fuzz_config_text, sizeof fuzz_config_text - 1,
                              errors, sizeof errors);
    if (config == NULL) {
        fprintf(stderr, "fuzz_items: the handler config does not load:\n%s\n", errors);
        abort();
    }
    return 0;
}

/* ---- UTF-8, written independently of handler.c ------------------------- */

static size_t
utf8_valid_length(const unsigned char *s, size_t left)
{
    if (s[0] < 0x80)
        return 1;
    size_t n;
    uint32_t cp, min;
    if ((s[0] & 0xe0) == 0xc0) {
        n = 2; cp = s[0] & 0x1fu; min = 0x80;
    } else if ((s[0] & 0xf0) == 0xe0) {
        n = 3; cp = s[0] & 0x0fu; min = 0x800;
    } else if ((s[0] & 0xf8) == 0xf0) {
        n = 4; cp = s[0] & 0x07u; min = 0x10000;
    } else {
        return 0;
    }
    if (n > left)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

static void
check_clean_text(const uint8_t *data, size_t len)
{
    char *s = malloc(len + 1);
    if (s == NULL)
        return;
    memcpy(s, data, len);
    s[len] = '\0';
    size_t before = strlen(s);
    handler_clean_text(s);
    size_t after = strlen(s);
    if (after > before) {
        fprintf(stderr, "handler_clean_text made the text longer %zu -> %zu\n", before, after);
        abort();
    }
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < after;) {
        size_t n = utf8_valid_length(p + i, after - i);
        if (n == 0) {
            fprintf(stderr, "handler_clean_text left invalid UTF-8 at byte %zu\n", i);
            abort();
        }
        if (n == 1 && (p[i] < 0x20 || p[i] == 0x7f)) {
            fprintf(stderr, "handler_clean_text left control character 0x%02x\n", p[i]);
            abort();
        }
        if (n == 2 && p[i] == 0xc2 && p[i + 1] < 0xa0) {
            fprintf(stderr, "handler_clean_text left C1 control character U+%04X\n", p[i + 1]);
            abort();
        }
        i += n;
    }
    char *again = strdup(s);
    if (again != NULL) {
        handler_clean_text(again);
        if (strcmp(again, s) != 0) {
            fprintf(stderr, "handler_clean_text is not idempotent\n");
            abort();
        }
        free(again);
    }
    free(s);
}

/* ---- WorkItem ------------------------------------------------------------ */

static uint64_t
param_or(const wire_work_item *item, const char *name, uint64_t fallback)
{
    for (size_t i = 0; i < item->n_params; i++)
        if (strcmp(item->params[i]->key, name) == 0)
            return strtoull(item->params[i]->value, NULL, 10);
    return fallback;
}

static void
check_work_item(const uint8_t *data, size_t size)
{
    wire_work_item *item = wire_work_item_unpack(NULL, size, data);
    if (item == NULL)
        return;
    const char *kind = item->kind[0] ? item->kind : config->default_handler;
    const struct ds_handler_config *handler = config_handler(config, kind);
    if (handler != NULL) {
        char err[512];
        err[0] = '\0';
        if (kind_check(handler, item, err, sizeof err) == 0) {
            (void)kind_is_quick(handler, item);
            struct handler_output out;
            memset(&out, 0, sizeof out);
            out.attempt = 1;
            out.result_max = 1 << 20;
            if (handler->type == DS_HANDLER_ECHO) {
                if (handler_run(handler, item, &out) != 0 || out.result_len != item->payload.len ||
                    (out.result_len > 0 && memcmp(out.result, item->payload.data, out.result_len) != 0)) {
                    fprintf(stderr, "echo did not return the payload\n");
                    abort();
                }
            } else if (handler->type == DS_HANDLER_SHA256 && param_or(item, "rounds", 1) <= 16) {
                uint64_t rounds = param_or(item, "rounds", 1);
                uint8_t want[SHA256_DIGEST_LENGTH];
                SHA256(item->payload.data, item->payload.len, want);
                for (uint64_t i = 1; i < rounds; i++)
                    SHA256(want, sizeof want, want);
                if (handler_run(handler, item, &out) != 0 || out.result_len != sizeof want ||
                    memcmp(out.result, want, sizeof want) != 0) {
                    fprintf(stderr, "sha256 of %llu rounds is wrong\n", (unsigned long long)rounds);
                    abort();
                }
                if (out.release != NULL)
                    out.release((void *)out.result);
            }
        } else if (err[0] == '\0' || strnlen(err, sizeof err) == sizeof err) {
            fprintf(stderr, "kind_check refused an item without a reason\n");
            abort();
        }
    }
    wire_work_item_free(item, NULL);
}

/* ---- UpdatesRequest -------------------------------------------------------- */

static int
linear_in(char **list, size_t count, const char *s)
{
    if (count == 0)
        return 1;
    for (size_t i = 0; i < count; i++)
        if (strcmp(list[i], s) == 0)
            return 1;
    return 0;
}

#define CANDIDATES_MAX 48

static size_t
add_candidates(const char **out, size_t n, char **list, size_t count)
{
    for (size_t i = 0; i < count && n < CANDIDATES_MAX; i++)
        out[n++] = list[i];
    return n;
}

static void
check_updates_request(const uint8_t *data, size_t size)
{
    wire_updates_request *req = wire_updates_request_unpack(NULL, size, data);
    if (req == NULL)
        return;
    struct filter f;
    char err[160];
    err[0] = '\0';
    /* filter_init() refuses a state no update has and a string that is
     * not UTF-8 (protobuf-c does not check proto3 strings), and only those */
    int all_valid = 1;
    for (size_t i = 0; i < req->n_states; i++)
        if ((int)req->states[i] < STATE_QUEUED || (int)req->states[i] > STATE_MAX)
            all_valid = 0;
    char **lists[] = { req->item_ids, req->kinds, req->batches };
    size_t counts[] = { req->n_item_ids, req->n_kinds, req->n_batches };
    for (size_t l = 0; l < 3; l++)
        for (size_t i = 0; i < counts[l]; i++)
            if (!utf8_valid(lists[l][i], strlen(lists[l][i])))
                all_valid = 0;
    int r = filter_init(&f, req, err, sizeof err);
    if (r != (all_valid ? 0 : -1) || (r == -1 && err[0] == '\0')) {
        fprintf(stderr, "filter_init returned %d (states and strings valid: %d, err \"%s\")\n",
                r, all_valid, err);
        abort();
    }
    if (r == -1) {
        wire_updates_request_free(req, NULL);
        return;
    }
    const char *cand[CANDIDATES_MAX];
    size_t n = 0;
    cand[n++] = "";
    cand[n++] = "item-1";
    cand[n++] = "echo";
    n = add_candidates(cand, n, req->item_ids, req->n_item_ids);
    n = add_candidates(cand, n, req->kinds, req->n_kinds);
    n = add_candidates(cand, n, req->batches, req->n_batches);
    for (size_t i = 0; i < n; i++) {
        /* One candidate in each position, the others drawn from the rest. */
        const char *id = cand[i], *kind = cand[(i + 1) % n], *batch = cand[(i + 2) % n];
        for (unsigned state = 0; state <= 33; state++) {
            int want_state = req->n_states == 0;
            for (size_t k = 0; k < req->n_states; k++)
                if ((unsigned)req->states[k] == state)
                    want_state = 1;
            int want = want_state && linear_in(req->item_ids, req->n_item_ids, id) &&
                       linear_in(req->kinds, req->n_kinds, kind) &&
                       linear_in(req->batches, req->n_batches, batch);
            int got = filter_match(&f, id, kind, batch, state);
            if (got != want) {
                fprintf(stderr, "filter_match(\"%s\", \"%s\", \"%s\", %u) = %d, want %d\n",
                        id, kind, batch, state, got, want);
                abort();
            }
        }
    }
    filter_free(&f);
    wire_updates_request_free(req, NULL);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_work_item(data, size);
    check_updates_request(data, size);
    check_clean_text(data, size);
    return 0;
}
