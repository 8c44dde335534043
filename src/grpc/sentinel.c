/*
 * The Redis master's address from Redis Sentinel (sentinel.h has the
 * contract). Two hiredis connections at most: the question's (one
 * sentinel at a time, closed once it answered) and the watch's (SUBSCRIBE
 * +switch-master). Every callback first checks that its context is still
 * the current one: a context being dropped delivers its pending replies
 * as NULL, and those belong to nobody any more.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/adapters/libevent.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "grpc/resolve.h"
#include "grpc/sentinel.h"

#define WATCH_BACKOFF_MIN_MS    500
#define WATCH_BACKOFF_MAX_MS    5000
#define ERRORS_SIZE             1200

struct sentinel_address {
    char *host;                 /* ours (ds_strdup), freed at shutdown */
    int port;
};

static struct {
    struct event_base *base;
    struct sentinel_address *list;
    size_t count;
    char *master;
    sentinel_switched_fn *switched;
    /* the question */
    sentinel_found_fn *fn;      /* NULL: none under way */
    size_t start;               /* the first sentinel a question asks */
    size_t asked;               /* of this question */
    size_t at;                  /* the sentinel being asked */
    redisAsyncContext *ask;
    struct resolve_request *ask_resolve;
    struct event *ask_timer;
    char errors[ERRORS_SIZE];
    size_t answered;            /* the sentinel that answered last */
    int any_answer;
    char last[300];
    /* the watch */
    redisAsyncContext *watch;
    struct resolve_request *watch_resolve;
    size_t watch_at;
    struct event *watch_timer;  /* the subscription's deadline, or the retry */
    uint64_t watch_backoff_ms;
    int watching;               /* subscribed */
    int watch_started;
    int shut;
} sn;

static void ask_next(void);
static void watch_connect(void);

/* Drop AC (no longer current: its callbacks to come find so). Inside one
 * of its reply callbacks hiredis closes it once the callback returns
 * (redisAsyncDisconnect); outside, it goes at once, its pending replies
 * coming back as NULL. */
static void
drop(redisAsyncContext *ac)
{
    if (ac == NULL)
        return;
    ac->data = NULL;
    if (ac->c.flags & REDIS_IN_CALLBACK)
        redisAsyncDisconnect(ac);
    else
        redisAsyncFree(ac);
}

static redisAsyncContext *
connect_to(const char *address, int port, redisConnectCallback *on_connect,
           redisDisconnectCallback *on_disconnect, char *why, size_t size)
{
    redisAsyncContext *ac = redisAsyncConnect(address, port);
    if (ac == NULL) {
        snprintf(why, size, "out of memory");
        return NULL;
    }
    if (ac->err) {
        snprintf(why, size, "connecting: %s", ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = &sn;
    redisLibeventAttach(ac, sn.base);
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return ac;
}

/* ---- the question --------------------------------------------------------- */

static void
note_error(size_t i, const char *fmt, const char *detail)
{
    size_t used = strlen(sn.errors);
    if (used + 8 >= sizeof sn.errors)
        return;
    char what[300];
    snprintf(what, sizeof what, fmt, detail);
    snprintf(sn.errors + used, sizeof sn.errors - used, "%s%s:%d %s", used ? "; " : "",
             sn.list[i].host, sn.list[i].port, what);
}

static void
end_ask(void)
{
    evtimer_del(sn.ask_timer);
    if (sn.ask_resolve != NULL) {
        resolve_cancel(sn.ask_resolve);
        sn.ask_resolve = NULL;
    }
    redisAsyncContext *ac = sn.ask;
    sn.ask = NULL;
    drop(ac);
}

/* The sentinel being asked failed: WHY (a format with one %s, DETAIL). */
static void
ask_failed(const char *fmt, const char *detail)
{
    note_error(sn.at, fmt, detail);
    end_ask();
    ask_next();
}

static void
on_ask_reply(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    if (ac != sn.ask || sn.fn == NULL)
        return;
    if (r == NULL) {
        /* hiredis is closing it (a protocol error, the peer went) */
        sn.ask = NULL;
        note_error(sn.at, "closed the connection without an answer: %s",
                   ac->errstr[0] ? ac->errstr : "no reason given");
        end_ask();
        ask_next();
        return;
    }
    if (r->type == REDIS_REPLY_NIL) {
        ask_failed("does not know a master named %s", sn.master);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        char e[160];
        snprintf(e, sizeof e, "%.*s", (int)(r->len < 150 ? r->len : 150), r->str);
        ask_failed("answered %s", e);
        return;
    }
    char host[256];
    long port = 0;
    int ok = r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
             r->element[0]->type == REDIS_REPLY_STRING &&
             r->element[1]->type == REDIS_REPLY_STRING &&
             r->element[0]->len > 0 && r->element[0]->len < sizeof host &&
             r->element[1]->len > 0 && r->element[1]->len <= 5;
    if (ok) {
        memcpy(host, r->element[0]->str, r->element[0]->len);
        host[r->element[0]->len] = '\0';
        for (size_t i = 0; i < r->element[0]->len; i++)
            if (host[i] <= ' ' || host[i] > '~' || strchr("/\\\"", host[i]) != NULL)
                ok = 0;
        for (size_t i = 0; ok && i < r->element[1]->len; i++) {
            char c = r->element[1]->str[i];
            if (c < '0' || c > '9')
                ok = 0;
            else
                port = port * 10 + (c - '0');
        }
        ok = ok && port >= 1 && port <= 65535;
    }
    if (!ok) {
        ask_failed("answered something that is not a master's address%s", "");
        return;
    }
    size_t i = sn.at;
    if (sn.errors[0] != '\0')
        log_warn("cluster: sentinel %s:%d answered for %s after others did not: %s",
                 sn.list[i].host, sn.list[i].port, sn.master, sn.errors);
    end_ask();
    sn.answered = i;
    sn.start = i;
    sn.any_answer = 1;
    snprintf(sn.last, sizeof sn.last, "%s:%d", sn.list[i].host, sn.list[i].port);
    sentinel_found_fn *fn = sn.fn;
    sn.fn = NULL;
    if (!sn.watch_started) {
        sn.watch_started = 1;
        sn.watch_at = i;
        watch_connect();
    }
    fn(host, (int)port, NULL);
}

static void
on_ask_connect(const redisAsyncContext *ac, int status)
{
    if (ac != sn.ask || status == REDIS_OK)
        return;
    sn.ask = NULL;      /* hiredis frees it */
    note_error(sn.at, "cannot be reached: %s", ac->errstr);
    end_ask();
    ask_next();
}

static void
on_ask_disconnect(const redisAsyncContext *ac, int status)
{
    if (ac != sn.ask)
        return;
    sn.ask = NULL;      /* hiredis frees it */
    note_error(sn.at, "closed the connection: %s", ac->errstr[0] ? ac->errstr : "by itself");
    end_ask();
    ask_next();
}

static void
on_ask_resolved(void *arg, const char *address, const char *why)
{
    sn.ask_resolve = NULL;
    if (address == NULL) {
        ask_failed("%s", why);
        return;
    }
    char err[200];
    sn.ask = connect_to(address, sn.list[sn.at].port, on_ask_connect, on_ask_disconnect, err,
                        sizeof err);
    if (sn.ask == NULL) {
        ask_failed("%s", err);
        return;
    }
    if (redisAsyncCommand(sn.ask, on_ask_reply, NULL, "SENTINEL get-master-addr-by-name %s",
                          sn.master) != REDIS_OK)
        ask_failed("%s", "cannot send to it");
}

static void
on_ask_timer(evutil_socket_t fd, short what, void *arg)
{
    char t[32];
    snprintf(t, sizeof t, "%d", SENTINEL_ASK_TIMEOUT_MS);
    ask_failed("did not answer within %s ms", t);
}

static void
on_ask_failed_all(evutil_socket_t fd, short what, void *arg)
{
    sentinel_found_fn *fn = sn.fn;
    sn.fn = NULL;
    if (fn == NULL)
        return;
    char why[ERRORS_SIZE + 100];
    snprintf(why, sizeof why, "no sentinel named the master %s: %s", sn.master, sn.errors);
    fn(NULL, 0, why);
}

static void
ask_next(void)
{
    if (sn.fn == NULL)
        return;
    if (sn.asked == sn.count) {
        struct timeval now = { 0, 0 };
        event_base_once(sn.base, -1, EV_TIMEOUT, on_ask_failed_all, NULL, &now);
        return;
    }
    sn.at = (sn.start + sn.asked) % sn.count;
    sn.asked++;
    struct timeval tv = clock_timeval_ms(SENTINEL_ASK_TIMEOUT_MS);
    evtimer_add(sn.ask_timer, &tv);
    sn.ask_resolve = resolve_host(sn.base, sn.list[sn.at].host, on_ask_resolved, NULL);
}

void
sentinel_find(sentinel_found_fn *fn)
{
    sentinel_cancel();
    sn.fn = fn;
    sn.asked = 0;
    sn.errors[0] = '\0';
    ask_next();
}

void
sentinel_cancel(void)
{
    sn.fn = NULL;
    end_ask();
}

void
sentinel_distrust(void)
{
    if (sn.count > 0 && sn.any_answer)
        sn.start = (sn.answered + 1) % sn.count;
}

/* ---- the watch ------------------------------------------------------------ */

static void
watch_lost(const char *why)
{
    if (sn.watching)
        log_warn("cluster: lost the subscription to +switch-master on sentinel %s:%d (%s); "
                 "trying the next sentinel", sn.list[sn.watch_at].host,
                 sn.list[sn.watch_at].port, why);
    sn.watching = 0;
    if (sn.watch_resolve != NULL) {
        resolve_cancel(sn.watch_resolve);
        sn.watch_resolve = NULL;
    }
    redisAsyncContext *ac = sn.watch;
    sn.watch = NULL;
    drop(ac);
    if (sn.shut)
        return;
    sn.watch_at = (sn.watch_at + 1) % sn.count;
    struct timeval tv = clock_timeval_ms(sn.watch_backoff_ms);
    evtimer_del(sn.watch_timer);
    evtimer_add(sn.watch_timer, &tv);
    sn.watch_backoff_ms = sn.watch_backoff_ms * 2 > WATCH_BACKOFF_MAX_MS
                          ? WATCH_BACKOFF_MAX_MS : sn.watch_backoff_ms * 2;
}

/* A port as a sentinel writes it (1 to 5 digits, 1..65535), or -1. */
static int
port_of(const char *s)
{
    int port = 0;
    size_t n = strlen(s);
    if (n == 0 || n > 5)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        port = port * 10 + (s[i] - '0');
    }
    return port >= 1 && port <= 65535 ? port : -1;
}

/* "MASTER OLDIP OLDPORT NEWIP NEWPORT" */
static void
switch_message(const char *s, size_t len)
{
    char buf[600], name[128], old_host[256], new_host[256], old_p[8], new_p[8];
    int new_port = -1;
    if (len >= sizeof buf)
        return;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (sscanf(buf, "%127s %255s %7s %255s %7s", name, old_host, old_p, new_host,
               new_p) == 5)
        new_port = port_of(new_p);     /* the old one is only shown */
    if (new_port == -1) {
        log_warn("cluster: sentinel %s:%d sent a +switch-master that does not parse: %.200s",
                 sn.list[sn.watch_at].host, sn.list[sn.watch_at].port, buf);
        return;
    }
    if (strcmp(name, sn.master) != 0)
        return;
    log_notice("cluster: sentinel %s:%d: master %s moved from %s:%s to %s:%d",
               sn.list[sn.watch_at].host, sn.list[sn.watch_at].port, name, old_host, old_p,
               new_host, new_port);
    sn.switched(new_host, new_port);
}

static void
on_watch_reply(redisAsyncContext *ac, void *reply, void *arg)
{
    redisReply *r = reply;
    if (ac != sn.watch)
        return;
    if (r == NULL)
        return;     /* the disconnect callback says why */
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
        r->element[0]->type != REDIS_REPLY_STRING) {
        watch_lost(r->type == REDIS_REPLY_ERROR ? r->str : "it answered SUBSCRIBE with "
                   "something else than a subscription");
        return;
    }
    const redisReply *kind = r->element[0];
    if (kind->len == 9 && memcmp(kind->str, "subscribe", 9) == 0) {
        evtimer_del(sn.watch_timer);
        sn.watching = 1;
        sn.watch_backoff_ms = WATCH_BACKOFF_MIN_MS;
        log_info("cluster: following +switch-master of %s on sentinel %s:%d", sn.master,
                 sn.list[sn.watch_at].host, sn.list[sn.watch_at].port);
    } else if (kind->len == 7 && memcmp(kind->str, "message", 7) == 0 &&
               r->element[2]->type == REDIS_REPLY_STRING) {
        switch_message(r->element[2]->str, r->element[2]->len);
    }
}

static void
on_watch_connect(const redisAsyncContext *ac, int status)
{
    if (ac != sn.watch || status == REDIS_OK)
        return;
    sn.watch = NULL;    /* hiredis frees it */
    watch_lost(ac->errstr);
}

static void
on_watch_disconnect(const redisAsyncContext *ac, int status)
{
    if (ac != sn.watch)
        return;
    sn.watch = NULL;    /* hiredis frees it */
    watch_lost(ac->errstr[0] ? ac->errstr : "closed by the sentinel");
}

static void
on_watch_resolved(void *arg, const char *address, const char *why)
{
    sn.watch_resolve = NULL;
    if (address == NULL) {
        watch_lost(why);
        return;
    }
    char err[200];
    sn.watch = connect_to(address, sn.list[sn.watch_at].port, on_watch_connect,
                          on_watch_disconnect, err, sizeof err);
    if (sn.watch == NULL) {
        watch_lost(err);
        return;
    }
    redisEnableKeepAlive(&sn.watch->c);
    if (redisAsyncCommand(sn.watch, on_watch_reply, NULL, "SUBSCRIBE +switch-master") !=
        REDIS_OK)
        watch_lost("cannot send SUBSCRIBE");
}

static void
watch_connect(void)
{
    struct timeval tv = clock_timeval_ms(SENTINEL_ASK_TIMEOUT_MS);
    evtimer_add(sn.watch_timer, &tv);   /* subscribed by then, or the next one */
    sn.watch_resolve = resolve_host(sn.base, sn.list[sn.watch_at].host, on_watch_resolved,
                                    NULL);
}

static void
on_watch_timer(evutil_socket_t fd, short what, void *arg)
{
    if (sn.watch != NULL || sn.watch_resolve != NULL) {
        watch_lost("no subscription within the deadline");
        return;
    }
    watch_connect();
}

/* ---- start, stop ---------------------------------------------------------- */

void
sentinel_start(struct event_base *base, const struct ds_config *c,
               sentinel_switched_fn *switched)
{
    memset(&sn, 0, sizeof sn);
    sn.base = base;
    sn.count = c->cluster.sentinel_count;
    sn.list = ds_calloc(sn.count, sizeof *sn.list);
    for (size_t i = 0; i < sn.count; i++) {
        sn.list[i].host = ds_strdup(c->cluster.sentinels[i].host);
        sn.list[i].port = c->cluster.sentinels[i].port;
    }
    sn.master = ds_strdup(c->cluster.master_name);
    sn.switched = switched;
    sn.ask_timer = evtimer_new(base, on_ask_timer, NULL);
    sn.watch_timer = evtimer_new(base, on_watch_timer, NULL);
    sn.watch_backoff_ms = WATCH_BACKOFF_MIN_MS;
}

const char *
sentinel_last(void)
{
    return sn.last;
}

int
sentinel_watching(void)
{
    return sn.watching;
}

void
sentinel_shutdown(void)
{
    if (sn.base == NULL)
        return;
    sn.shut = 1;
    sentinel_cancel();
    if (sn.watch_resolve != NULL)
        resolve_cancel(sn.watch_resolve);
    if (sn.watch != NULL) {
        redisAsyncContext *ac = sn.watch;
        sn.watch = NULL;
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    event_free(sn.ask_timer);
    event_free(sn.watch_timer);
    for (size_t i = 0; i < sn.count; i++)
        free(sn.list[i].host);
    free(sn.list);
    free(sn.master);
    memset(&sn, 0, sizeof sn);
}
