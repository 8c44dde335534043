/*
 * The gRPC servers: listeners, and the requests that take each new call.
 *
 * A few requests are kept posted per method so that new calls never wait
 * for the application; every method this server does not know is answered
 * UNIMPLEMENTED at once (without a posted generic request, such a call
 * would hang until its deadline).
 *
 * Who may call what: a grpc.listen entry may serve fewer methods than all
 * (its `methods`). gRPC 1.51 tells a server call its peer, never the local
 * address it came in on, so the listeners serving every method share one
 * grpc_server and each listener serving fewer gets its own: a call's
 * grpc_server names its listener. Every method is registered on every
 * grpc_server (so the call is taken, answered and logged like any other);
 * one its listener does not serve is answered PERMISSION_DENIED. Health
 * and reflection are served everywhere (they are not in `methods`): a
 * probe must work on whichever listener it is pointed at.
 *
 * Usually one generation of servers runs. When a reload changes grpc.listen or
 * grpc.max_message_size, a new server is bound first (SO_REUSEPORT lets it
 * share a port with the old one), then the old one stops taking calls
 * (GOAWAY) and its calls get shutdown_timeout to end before they are
 * cancelled.
 *
 * Descriptors: when accept4() fails (EMFILE), gRPC 1.51 logs "Failed
 * accept4" and never watches that listener again; nothing else tells the
 * application. Its log lines come through transport.c, which catches that
 * one (server_accept_failed()): the process then gives back its descriptor
 * reserve (room for worker channels, journal files and the status port),
 * reports NOT_SERVING, and once descriptors are free again replaces the
 * server the way a reload does, and takes the reserve back. The new server
 * is bound before the old one stops: stopping the old one closes its
 * listener and sends GOAWAY on its connections, and a client reconnecting
 * at once must find a listener (stopped first, it found none: connection
 * refused). With SO_REUSEPORT the dead listener shares the port with the
 * new one only until server_stop() below, in the same turn of the loop.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>
#include <grpc/byte_buffer.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>

#include "core/address.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/descriptors.h"
#include "core/log.h"
#include "core/privileges.h"
#include "core/utf8.h"
#include "grpc/call.h"
#include "grpc/cancel.h"
#include "grpc/get_items.h"
#include "grpc/grpc_process.h"
#include "grpc/health.h"
#include "grpc/reflection.h"
#include "grpc/retry.h"
#include "grpc/server.h"
#include "grpc/submit.h"
#include "grpc/subscribe.h"
#include "grpc/tcp_peer.h"

/* Calls that arrive while none of our requests is posted wait unmatched,
 * and a server shutdown (a graceful stop, a reload that moves the
 * listeners) cancels those: keep enough posted that bursts of new calls
 * find one. */
#define REQUESTS_PER_METHOD 16

struct method {
    const char *path;
    grpc_server_register_method_payload_handling payload;
    void (*start)(grpc_call *call, grpc_byte_buffer *payload);
    unsigned bit;               /* its DS_METHOD_*; 0: served on every listener */
    /* Instead of start, for a method that reads the call's metadata (valid
     * only during the call to it). */
    void (*start_with_metadata)(grpc_call *call, const grpc_metadata_array *metadata);
};

static const struct method methods[] = {
    { "/com.agrounds.dosomething.v1.DoSomethingService/doSomething", GRPC_SRM_PAYLOAD_NONE,
      NULL, DS_METHOD_DO_SOMETHING, submit_call_start },
    { "/com.agrounds.dosomething.v1.DoSomethingService/getUpdates",
      GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, subscribe_call_start, DS_METHOD_GET_UPDATES, NULL },
    { "/com.agrounds.dosomething.v1.DoSomethingService/getItems",
      GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, get_items_call_start, DS_METHOD_GET_ITEMS, NULL },
    { "/com.agrounds.dosomething.v1.DoSomethingService/retry",
      GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, retry_call_start, DS_METHOD_RETRY, NULL },
    { "/com.agrounds.dosomething.v1.DoSomethingService/cancel",
      GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, cancel_call_start, DS_METHOD_CANCEL, NULL },
    { "/grpc.health.v1.Health/Check", GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
      health_check_start, 0, NULL },
    { "/grpc.health.v1.Health/Watch", GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
      health_watch_start, 0, NULL },
    { "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", GRPC_SRM_PAYLOAD_NONE,
      reflection_call_start, 0, NULL },
    { "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", GRPC_SRM_PAYLOAD_NONE,
      reflection_call_start, 0, NULL },
};

#define METHOD_COUNT (sizeof methods / sizeof methods[0])
#define METHOD_OTHER (-1)

struct server;

/* One grpc_server of a generation: the listeners serving every method, or
 * one listener serving fewer. Owned by its struct server. */
struct endpoint {
    struct server *owner;
    grpc_server *server;
    void *handles[METHOD_COUNT];
    unsigned methods;           /* the DS_METHOD_* its listeners serve */
    char listen[512];           /* its addresses, for PERMISSION_DENIED */
    int shut_down;
    struct tag shutdown_tag;
};

/* A generation of servers: one per grpc.listen's method sets (above), all
 * started, stopped and retired together. */
struct server {
    struct server *next;
    struct endpoint *endpoints; /* ds_calloc'd; freed by server_free() */
    size_t endpoint_count;
    size_t endpoints_shut_down;
    char listen[512];           /* for the log */
    char **addresses;           /* its grpc.listen entries (ds_strdup'd, freed with it) */
    size_t address_count;
    uint32_t requests_posted;
    int shutting_down;
    int shut_down;              /* every endpoint is */
    struct event *cancel_timer;
};

/* One posted request for a new call. */
struct request {
    struct tag tag;
    struct server *server;
    struct endpoint *endpoint;
    int method;                 /* index into methods, or METHOD_OTHER */
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array metadata;
    grpc_call_details details;  /* METHOD_OTHER */
    grpc_byte_buffer *payload;
};

/* A call answered at once with an error: a method we do not know
 * (UNIMPLEMENTED, not in the access log), one its listener does not serve
 * (PERMISSION_DENIED), or whose request is over grpc.max_message_size
 * (RESOURCE_EXHAUSTED); the last two in the access log under the method's
 * name. Freed by refused_destroy() with its last reference. */
struct refused_call {
    struct call base;
    grpc_slice details;
};

/* A unix socket path bound by both the old and the new server. */
struct kept_path {
    char path[108];
    char link[120];             /* a second name for the new server's socket */
};

static struct {
    struct server *current;     /* taking calls */
    struct server *retired;     /* stopping */
    struct kept_path kept[16];
    int kept_count;
    struct kept_path saved[16];     /* the old sockets, while a rebind may fail */
    int saved_count;
    struct event *kept_timer;
} srv;

/* How often a dead listener checks for room to listen again. */
#define LISTENER_RETRY_MS 500

/* The listener gRPC lost at EMFILE, and the descriptors kept for then. */
static struct {
    atomic_int accept_failed;   /* set by a gRPC thread: server_accept_failed() */
    struct event *failed_event; /* wakes the loop for it */
    struct event *retry_timer;
    int dead;                   /* the current server accepts no connection */
    uint64_t restarts;
    int reserve[DESCRIPTORS_RESERVE];
    int reserved;
} lw;

static void post_request(struct endpoint *e, int method);
static void reserve_take(void);
static void on_accept_failed(evutil_socket_t fd, short what, void *arg);
static void on_listener_retry(evutil_socket_t fd, short what, void *arg);
static void server_stop(struct server *s, int cancel_calls);
static void on_kept_timer(evutil_socket_t fd, short what, void *arg);

static void
refused_destroy(struct call *call)
{
    struct refused_call *d = CALL_OF(call, struct refused_call, base);
    grpc_slice_unref(d->details);
    free(d);
}

/* One kind per DS_METHOD_*, for the access log's method name; the methods
 * served everywhere (health) and unknown ones (METHOD_OTHER) are not logged. */
static struct call_kind refused_kinds[DS_METHOD_COUNT + 1];

static void
answer_refused(grpc_call *call, int method, grpc_status_code status, const char *text)
{
    unsigned index = DS_METHOD_COUNT;
    if (method != METHOD_OTHER && methods[method].bit != 0)
        index = (unsigned)__builtin_ctz(methods[method].bit);
    if (refused_kinds[index].destroy == NULL) {
        refused_kinds[index].method = index < DS_METHOD_COUNT ? config_method_name(index) : NULL;
        refused_kinds[index].destroy = refused_destroy;
    }
    struct refused_call *d = ds_calloc(1, sizeof *d);
    call_init(&d->base, call, &refused_kinds[index]);
    d->details = grpc_slice_from_copied_string(text);
    d->base.status = status;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[1].data.send_status_from_server.status = status;
    ops[1].data.send_status_from_server.status_details = &d->details;
    call_batch(&d->base, ops, 2, NULL);
}

static void
answer_unimplemented(grpc_call *call, const grpc_call_details *details)
{
    /* The method is the client's :path: escaped, so the status message is
     * UTF-8 and one line whatever the client sent. */
    char *method = grpc_slice_to_c_string(details->method), escaped[256], text[300];
    snprintf(text, sizeof text, "method %s is not implemented by dosomethingd",
             utf8_escape(escaped, sizeof escaped, method));
    gpr_free(method);
    answer_refused(call, METHOD_OTHER, GRPC_STATUS_UNIMPLEMENTED, text);
}

static void
answer_denied(grpc_call *call, const struct endpoint *e, int method)
{
    unsigned index = (unsigned)__builtin_ctz(methods[method].bit);
    char served[128] = "", text[800];
    size_t used = 0;
    for (unsigned i = 0; i < DS_METHOD_COUNT; i++)
        if (e->methods & (1u << i))
            used += (size_t)snprintf(served + used, used < sizeof served ? sizeof served - used : 0,
                                     "%s%s", used ? ", " : "", config_method_name(i));
    snprintf(text, sizeof text, "method %s is not served on listener %s (it serves %s)",
             config_method_name(index), e->listen, served);
    answer_refused(call, method, GRPC_STATUS_PERMISSION_DENIED, text);
}

/* A request (the one message of a call that has one) over
 * grpc.max_message_size: gRPC read it (receive_limit()), we refuse it. */
static int
answer_if_too_large(grpc_call *call, int method, grpc_byte_buffer *payload)
{
    size_t len = payload != NULL ? grpc_byte_buffer_length(payload) : 0;
    uint64_t max = gp.config->grpc.max_message_size;
    if (len <= max)
        return 0;
    char text[200];
    snprintf(text, sizeof text, "the request is %zu bytes, over grpc.max_message_size (%llu)",
             len, (unsigned long long)max);
    answer_refused(call, method, GRPC_STATUS_RESOURCE_EXHAUSTED, text);
    return 1;
}

static void
server_free(struct server *s)
{
    for (size_t i = 0; i < s->endpoint_count; i++)
        if (s->endpoints[i].server != NULL)
            grpc_server_destroy(s->endpoints[i].server);
    free(s->endpoints);
    for (size_t i = 0; i < s->address_count; i++)
        free(s->addresses[i]);
    free(s->addresses);
    if (s->cancel_timer != NULL)
        event_free(s->cancel_timer);
    free(s);
}

/* A retired server is destroyed once it is shut down and no request of
 * its is still posted. */
static void
reap_retired(void)
{
    for (struct server **pp = &srv.retired; *pp != NULL;) {
        struct server *s = *pp;
        if (s->shut_down && s->requests_posted == 0 && !gp.stopping && !gp.draining) {
            *pp = s->next;
            log_info("stopped listening on %s", s->listen);
            server_free(s);
        } else {
            pp = &s->next;
        }
    }
}

static void
on_request(struct tag *tag, int ok)
{
    struct request *r = (struct request *)tag;
    struct server *s = r->server;
    struct endpoint *e = r->endpoint;
    s->requests_posted--;
    if (ok) {
        if (r->method == 0)
            metrics.calls_submit++;
        else if (r->method == 1)
            metrics.calls_updates++;
        else
            metrics.calls_other++;
        if (r->method == METHOD_OTHER) {
            answer_unimplemented(r->call, &r->details);
        } else if (methods[r->method].bit != 0 && !(e->methods & methods[r->method].bit)) {
            answer_denied(r->call, e, r->method);   /* the payload is freed below */
        } else if (answer_if_too_large(r->call, r->method, r->payload)) {
            ;                                       /* the payload is freed below */
        } else if (methods[r->method].start_with_metadata != NULL) {
            methods[r->method].start_with_metadata(r->call, &r->metadata);
        } else {
            methods[r->method].start(r->call, r->payload);
            r->payload = NULL;      /* the call's now */
        }
    }
    if (r->payload != NULL)
        grpc_byte_buffer_destroy(r->payload);
    grpc_metadata_array_destroy(&r->metadata);
    if (r->method == METHOD_OTHER)
        grpc_call_details_destroy(&r->details);
    int method = r->method;
    free(r);
    /* ok == 0: the server is shutting down; post no more. */
    if (ok && !s->shutting_down)
        post_request(e, method);
    int last = s->shutting_down && s->requests_posted == 0;
    reap_retired();                     /* may free s */
    if (last)
        grpc_process_check_done();      /* a drain may wait for this */
}

static void
post_request(struct endpoint *e, int method)
{
    struct server *s = e->owner;
    struct request *r = ds_calloc(1, sizeof *r);
    r->tag.done = on_request;
    r->server = s;
    r->endpoint = e;
    r->method = method;
    grpc_metadata_array_init(&r->metadata);
    grpc_call_error err;
    if (method == METHOD_OTHER) {
        grpc_call_details_init(&r->details);
        err = grpc_server_request_call(e->server, &r->call, &r->details, &r->metadata, gp.cq,
                                       gp.cq, &r->tag);
    } else {
        int with_payload = methods[method].payload == GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER;
        err = grpc_server_request_registered_call(e->server, e->handles[method], &r->call,
                                                  &r->deadline, &r->metadata,
                                                  with_payload ? &r->payload : NULL, gp.cq,
                                                  gp.cq, &r->tag);
    }
    if (err != GRPC_CALL_OK) {
        log_error("grpc_server_request_call() failed: %s", grpc_call_error_to_string(err));
        grpc_metadata_array_destroy(&r->metadata);
        if (method == METHOD_OTHER)
            grpc_call_details_destroy(&r->details);
        free(r);
        return;
    }
    s->requests_posted++;
}

/* The whole of a PEM file, or NULL (logged). */
static char *
read_pem(const char *path)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        log_syserr("cannot open %s", path);
        return NULL;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (4u << 20)) {
                log_error("%s is larger than 4 MiB: not a PEM file", path);
                free(text);
                fclose(f);
                return NULL;
            }
            text = ds_realloc(text, cap);
        }
        size_t n = fread(text + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        log_error("cannot read %s", path);
        free(text);
        return NULL;
    }
    text[len] = '\0';
    return text;
}

/*
 * The TLS files, read again by gRPC's certificate config fetcher when they
 * change: gRPC asks before each new handshake, so a renewed certificate
 * takes effect on new connections without a rebind, and the calls open on
 * the old ones go on. Asked on gRPC's threads, hence the lock.
 */
static struct {
    pthread_mutex_t lock;
    char *cert, *key, *ca;      /* ca NULL: no client certificates */
    char signature[256];        /* of the files last loaded: "" none */
} tls_files = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* Inode, size and mtime of each file, or -1 if one cannot be stat()ed. */
static int
tls_signature(char *buf, size_t size)
{
    const char *paths[3] = { tls_files.cert, tls_files.key, tls_files.ca };
    size_t used = 0;
    for (int i = 0; i < 3 && paths[i] != NULL; i++) {
        struct stat st;
        if (stat(paths[i], &st) == -1)
            return -1;
        used += (size_t)snprintf(buf + used, used < size ? size - used : 0, "%llu:%lld:%lld.%ld;",
                                 (unsigned long long)st.st_ino, (long long)st.st_size,
                                 (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    }
    return used < size ? 0 : -1;
}

static grpc_ssl_certificate_config_reload_status
tls_fetch(void *unused, grpc_ssl_server_certificate_config **out)
{
    grpc_ssl_certificate_config_reload_status status = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
    char signature[sizeof tls_files.signature];
    /* gRPC fetches the first config as it binds (add_port()), when this
     * thread has the user's ids: the files are read as root then, as at a
     * start before (a key only root reads is the usual case). */
    int paused = privileges_bind_pause();
    pthread_mutex_lock(&tls_files.lock);
    if (tls_signature(signature, sizeof signature) == -1) {
        /* Being replaced, say: keep what we have, unless we have nothing. */
        if (tls_files.signature[0] == '\0')
            status = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL;
    } else if (strcmp(signature, tls_files.signature) != 0) {
        char *cert = read_pem(tls_files.cert);
        char *key = read_pem(tls_files.key);
        char *ca = tls_files.ca != NULL ? read_pem(tls_files.ca) : NULL;
        if (cert != NULL && key != NULL && (tls_files.ca == NULL || ca != NULL)) {
            grpc_ssl_pem_key_cert_pair pair = { .private_key = key, .cert_chain = cert };
            /* gRPC 1.51 asserts that a fetched config has root
             * certificates; without client_ca no client certificate is
             * asked for, so they are never used: our own chain will do. */
            *out = grpc_ssl_server_certificate_config_create(ca != NULL ? ca : cert, &pair, 1);
            if (tls_files.signature[0] != '\0')
                log_notice("TLS: %s changed; new connections get it", tls_files.cert);
            memcpy(tls_files.signature, signature, sizeof signature);
            status = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW;
        } else if (tls_files.signature[0] == '\0') {
            status = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL;
        }
        free(cert);
        free(key);
        free(ca);
    }
    pthread_mutex_unlock(&tls_files.lock);
    if (paused)
        privileges_bind_resume();
    return status;
}

/* Plaintext, or TLS (with client certificates required when client_ca is
 * set). NULL if a file cannot be read. */
static grpc_server_credentials *
server_credentials(const struct ds_config *config)
{
    if (!config->grpc.tls)
        return grpc_insecure_server_credentials_create();
    /* Readable now, or the rebind (or the start) fails here. */
    char *cert = read_pem(config->grpc.tls_cert);
    char *key = read_pem(config->grpc.tls_key);
    char *ca = config->grpc.tls_client_ca ? read_pem(config->grpc.tls_client_ca) : NULL;
    int readable = cert != NULL && key != NULL && (config->grpc.tls_client_ca == NULL || ca != NULL);
    free(cert);
    free(key);
    free(ca);
    if (!readable)
        return NULL;
    pthread_mutex_lock(&tls_files.lock);
    free(tls_files.cert);
    free(tls_files.key);
    free(tls_files.ca);
    tls_files.cert = ds_strdup(config->grpc.tls_cert);
    tls_files.key = ds_strdup(config->grpc.tls_key);
    tls_files.ca = config->grpc.tls_client_ca ? ds_strdup(config->grpc.tls_client_ca) : NULL;
    tls_files.signature[0] = '\0';
    pthread_mutex_unlock(&tls_files.lock);
    grpc_ssl_server_credentials_options *options =
        grpc_ssl_server_credentials_create_options_using_config_fetcher(
            config->grpc.tls_client_ca != NULL
                ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
            tls_fetch, NULL);
    return grpc_ssl_server_credentials_create_with_options(options);
}

/* grpc.unix_owner as ids, (uid_t)-1 and (gid_t)-1 when unset. Looked up
 * before binding: a chown that cannot work (not root, on a reload after
 * the privileges were dropped) fails here, before the old sockets are
 * replaced. Returns -1 (logged, and told to the master when fatal). */
static int
unix_owner_lookup(const struct ds_config *config, int fatal_errors, uid_t *uid, gid_t *gid)
{
    char why[200], msg[400];
    int has_unix = 0;
    for (size_t i = 0; i < config->grpc.listen_count; i++)
        has_unix |= strncmp(config->grpc.listen[i], "unix:", 5) == 0;
    if (config->grpc.unix_owner == NULL || !has_unix)
        return 0;
    if (config_unix_owner(config->grpc.unix_owner, uid, gid, why, sizeof why) == 0) {
        if (geteuid() == 0 || *uid == geteuid())
            return 0;
        snprintf(why, sizeof why, "running as uid %u, not root", (unsigned)geteuid());
    }
    int n = snprintf(msg, sizeof msg, "grpc.unix_owner %s: %s", config->grpc.unix_owner, why);
    log_error("%s", msg);
    if (fatal_errors)
        master_send_now(IPC_FATAL, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    return -1;
}

/* grpc.unix_mode and grpc.unix_owner on every unix: socket just bound.
 * Returns -1 (logged, and told to the master when fatal). */
static int
unix_paths_set_owner_mode(const struct ds_config *config, uid_t uid, gid_t gid,
                          int fatal_errors)
{
    for (size_t i = 0; i < config->grpc.listen_count; i++) {
        const char *addr = config->grpc.listen[i], *path = addr + 5;
        const char *what = NULL;
        if (strncmp(addr, "unix:", 5) != 0)
            continue;
        if (config->grpc.unix_owner != NULL && chown(path, uid, gid) == -1)
            what = "chown";
        else if (config->grpc.unix_mode >= 0 && chmod(path, (mode_t)config->grpc.unix_mode) == -1)
            what = "chmod";
        if (what == NULL)
            continue;
        char msg[400];
        int n = snprintf(msg, sizeof msg, "cannot %s %s (grpc.unix_%s): %s", what, path,
                         strcmp(what, "chown") == 0 ? "owner" : "mode", strerror(errno));
        log_error("%s", msg);
        if (fatal_errors)
            master_send_now(IPC_FATAL, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
        return -1;
    }
    return 0;
}

/* What gRPC reads of one message before it ends the call itself
 * (RESOURCE_EXHAUSTED, the client not told which items were accepted):
 * twice grpc.max_message_size, and at least 1 MiB more. A message between
 * the two is read and answered by us: an item gets a Rejection naming the
 * sizes (submit.c), a request RESOURCE_EXHAUSTED (answer_if_too_large()). */
static int64_t
receive_limit(uint64_t max)
{
    uint64_t limit = max * 2 > max + (1u << 20) ? max * 2 : max + (1u << 20);
    return limit > INT_MAX ? INT_MAX : (int64_t)limit;
}

static grpc_arg
int_arg(const char *key, int64_t value)
{
    grpc_arg arg = { .type = GRPC_ARG_INTEGER, .key = (char *)key,
                     .value.integer = value > INT_MAX ? INT_MAX : (int)value };
    return arg;
}

/*
 * Bind ADDR for SERVER as USER (privileges.h: every TCP listener is the
 * user's, whether a start, a reload or an upgrade bound it, so that they
 * share ports). Unix sockets are bound as before (as root at a start):
 * the path's directory and grpc.unix_owner decide who reaches them, and
 * they do not share a path. If the bind as USER fails, it is tried again
 * as root: the first upgrade from a binary that bound its start listeners
 * as root must share their root-owned ports. gRPC says only that it
 * failed (port 0), not why. The port gRPC bound, or 0.
 */
static int
add_port(grpc_server *server, const char *addr, grpc_server_credentials *creds,
         const char *user)
{
    int as_user = strncmp(addr, "unix:", 5) != 0 && strncmp(addr, "unix-abstract:", 14) != 0 &&
                  privileges_bind_as(user);
    int port = grpc_server_add_http2_port(server, addr, creds);
    if (as_user) {
        privileges_bind_done();
        if (port == 0) {
            port = grpc_server_add_http2_port(server, addr, creds);
            if (port != 0)
                log_notice("%s: the bind as %s failed, as root it worked (a port an older "
                           "instance bound as root?): a reload cannot share it", addr, user);
        }
    }
    return port;
}

/* A server on every grpc.listen address of the current config, started,
 * or NULL (logged, and told to the master when fatal is set). */
static struct server *
server_create(int fatal_errors)
{
    const struct ds_config *config = gp.config;
    grpc_arg args[16];
    size_t nargs = 0;
    args[nargs++] = int_arg(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                             receive_limit(config->grpc.max_message_size));
    args[nargs++] = int_arg(GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, -1);
    args[nargs++] = int_arg(GRPC_ARG_MAX_CONCURRENT_STREAMS, config->grpc.max_concurrent_streams);
    /* A connection past its age gets a GOAWAY: its calls go on (up to the
     * grace, if any), new ones go to a new connection. It also limits an
     * HTTP/2 rapid reset: gRPC 1.51 keeps a call (~12 KB) for every stream
     * a client opens and resets while it keeps the socket full, and takes
     * no new streams on a connection it sent a GOAWAY. */
    if (config->grpc.max_connection_age_ms > 0)
        args[nargs++] = int_arg(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                                config->grpc.max_connection_age_ms);
    if (config->grpc.max_connection_age_grace_ms > 0)
        args[nargs++] = int_arg(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                                config->grpc.max_connection_age_grace_ms);
    /* Client pings: accepted down to min_ping_interval, with or without
     * calls (idle watch streams behind load balancers); gRPC's defaults
     * (one per 5 minutes, 2 hours without calls) end such connections with
     * GOAWAY "too_many_pings". Our own pings reap dead clients. */
    args[nargs++] = int_arg(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                            config->grpc.keepalive.min_ping_interval_ms);
    args[nargs++] = int_arg(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS,
                            config->grpc.keepalive.permit_without_calls);
    args[nargs++] = int_arg(GRPC_ARG_KEEPALIVE_TIME_MS, config->grpc.keepalive.time_ms > 0 ?
                            config->grpc.keepalive.time_ms : INT_MAX);
    args[nargs++] = int_arg(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, config->grpc.keepalive.timeout_ms);
    /* Else gRPC sends at most 2 pings, and one per 5 minutes, until it
     * sends data: an idle stream's peer would never be checked again. */
    args[nargs++] = int_arg(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    if (config->grpc.keepalive.time_ms > 0)
        args[nargs++] = int_arg(GRPC_ARG_HTTP2_MIN_SENT_PING_INTERVAL_WITHOUT_DATA_MS,
                                config->grpc.keepalive.time_ms);
    grpc_channel_args channel_args = { .num_args = nargs, .args = args };
    uid_t uid = (uid_t)-1;
    gid_t gid = (gid_t)-1;
    if (unix_owner_lookup(config, fatal_errors, &uid, &gid) == -1)
        return NULL;

    struct server *s = ds_calloc(1, sizeof *s);
    s->endpoints = ds_calloc(config->grpc.listen_count, sizeof *s->endpoints);
    s->addresses = ds_calloc(config->grpc.listen_count, sizeof *s->addresses);
    for (size_t i = 0; i < config->grpc.listen_count; i++)
        s->addresses[s->address_count++] = ds_strdup(config->grpc.listen[i]);
    /* Each listen entry's endpoint: the one shared by those serving every
     * method, or its own. */
    size_t endpoint_of[config->grpc.listen_count];
    for (size_t i = 0; i < config->grpc.listen_count; i++) {
        unsigned served = config->grpc.listen_methods[i];
        size_t k = 0;
        if (served == DS_METHODS_ALL)
            while (k < s->endpoint_count && s->endpoints[k].methods != DS_METHODS_ALL)
                k++;
        else
            k = s->endpoint_count;
        endpoint_of[i] = k;
        if (k < s->endpoint_count)
            continue;
        struct endpoint *e = &s->endpoints[s->endpoint_count++];
        e->owner = s;
        e->methods = served;
        e->server = grpc_server_create(&channel_args, NULL);
        for (size_t m = 0; m < METHOD_COUNT; m++)
            e->handles[m] = grpc_server_register_method(e->server, methods[m].path, NULL,
                                                        methods[m].payload, 0);
        grpc_server_register_completion_queue(e->server, gp.cq, NULL);
    }

    grpc_server_credentials *creds = server_credentials(config);
    if (creds == NULL) {
        const char msg[] = "cannot set up TLS (see the lines above)";
        if (fatal_errors)
            master_send_now(IPC_FATAL, msg, sizeof msg - 1);
        server_free(s);
        return NULL;
    }
    int failed = 0;
    size_t used = 0;
    /* Sockets are born with no more than grpc.unix_mode allows; the chmod
     * below then sets exactly that. */
    int narrow = config->grpc.unix_mode >= 0;
    mode_t old_umask = narrow ? umask((mode_t)(~(unsigned)config->grpc.unix_mode & 0777)) : 0;
    for (size_t i = 0; i < config->grpc.listen_count; i++) {
        const char *addr = config->grpc.listen[i];
        struct endpoint *e = &s->endpoints[endpoint_of[i]];
        used += (size_t)snprintf(s->listen + used, used < sizeof s->listen ? sizeof s->listen - used : 0,
                                 "%s%s", i ? ", " : "", addr);
        if (used >= sizeof s->listen)
            used = sizeof s->listen - 1;
        size_t elen = strlen(e->listen);
        snprintf(e->listen + elen, sizeof e->listen - elen, "%s%s", elen ? ", " : "", addr);
        if (add_port(e->server, addr, creds, config->user) == 0) {
            char msg[512];
            int n = snprintf(msg, sizeof msg, "cannot listen on %s (in use, or not an address "
                             "of this machine?)", addr);
            log_error("%s", msg);
            if (fatal_errors)
                master_send_now(IPC_FATAL, msg, (size_t)n);
            failed = 1;
        }
    }
    if (narrow)
        umask(old_umask);
    grpc_server_credentials_release(creds);
    if (!failed && unix_paths_set_owner_mode(config, uid, gid, fatal_errors) == -1)
        failed = 1;
    if (failed) {
        /* gRPC will not destroy a server with bound listeners before a
         * shutdown: it goes with the retired ones. */
        s->next = srv.retired;
        srv.retired = s;
        server_stop(s, 1);
        return NULL;
    }
    for (size_t k = 0; k < s->endpoint_count; k++) {
        struct endpoint *e = &s->endpoints[k];
        grpc_server_start(e->server);
        for (int i = 0; i < REQUESTS_PER_METHOD; i++) {
            for (size_t m = 0; m < METHOD_COUNT; m++)
                post_request(e, (int)m);
            post_request(e, METHOD_OTHER);
        }
    }
    log_info("listening on %s", s->listen);
    return s;
}

int
server_start(void)
{
    srv.kept_timer = evtimer_new(gp.base, on_kept_timer, NULL);
    lw.failed_event = event_new(gp.base, -1, 0, on_accept_failed, NULL);
    lw.retry_timer = evtimer_new(gp.base, on_listener_retry, NULL);
    reserve_take();
    srv.current = server_create(1);
    return srv.current == NULL ? -1 : 0;
}

static void
on_shutdown(struct tag *tag, int ok)
{
    struct endpoint *e = CALL_OF(tag, struct endpoint, shutdown_tag);
    struct server *s = e->owner;
    e->shut_down = 1;
    if (++s->endpoints_shut_down < s->endpoint_count)
        return;
    s->shut_down = 1;
    if (s->cancel_timer != NULL)
        evtimer_del(s->cancel_timer);
    reap_retired();
    grpc_process_check_done();
}

static void
server_stop(struct server *s, int cancel_calls)
{
    if (!s->shutting_down) {
        s->shutting_down = 1;
        for (size_t i = 0; i < s->endpoint_count; i++) {
            struct endpoint *e = &s->endpoints[i];
            e->shutdown_tag.done = on_shutdown;
            grpc_server_shutdown_and_notify(e->server, gp.cq, &e->shutdown_tag);
        }
    }
    if (cancel_calls)
        for (size_t i = 0; i < s->endpoint_count; i++)
            grpc_server_cancel_all_calls(s->endpoints[i].server);
}

static void
on_cancel_timer(evutil_socket_t fd, short what, void *arg)
{
    struct server *s = arg;
    log_notice("calls on %s outlived shutdown_timeout; cancelling them", s->listen);
    for (size_t i = 0; i < s->endpoint_count; i++)
        grpc_server_cancel_all_calls(s->endpoints[i].server);
}

/*
 * A unix socket path in both the old and the new config: binding the new
 * server replaced the socket file, and the old server unlinks the path
 * when it stops, which would leave the new one unreachable. A second name
 * for the new socket, taken before the old server stops, puts it back.
 */
static void
unix_paths_link(const struct ds_config *config, const struct ds_config *old)
{
    srv.kept_count = 0;
    for (size_t i = 0; i < config->grpc.listen_count; i++) {
        const char *addr = config->grpc.listen[i];
        if (strncmp(addr, "unix:", 5) != 0 || srv.kept_count == 16)
            continue;
        for (size_t j = 0; j < old->grpc.listen_count; j++) {
            if (strcmp(addr, old->grpc.listen[j]) != 0)
                continue;
            struct kept_path *k = &srv.kept[srv.kept_count];
            snprintf(k->path, sizeof k->path, "%s", addr + 5);
            snprintf(k->link, sizeof k->link, "%s.reload", addr + 5);
            unlink(k->link);
            if (link(k->path, k->link) == -1)
                log_syswarn("link(\"%s\", \"%s\") failed", k->path, k->link);
            else
                srv.kept_count++;
        }
    }
}

static void
unix_paths_restore(int final)
{
    struct stat st;
    for (int i = 0; i < srv.kept_count; i++) {
        struct kept_path *k = &srv.kept[i];
        if (stat(k->path, &st) == -1 && errno == ENOENT) {
            if (rename(k->link, k->path) == -1 && errno != ENOENT)
                log_syserr("rename(\"%s\", \"%s\") failed", k->link, k->path);
        } else if (final) {
            unlink(k->link);
        }
    }
    if (final)
        srv.kept_count = 0;
}

/*
 * A rebind that fails after binding a unix socket has already replaced the
 * old server's socket file, and the failed server unlinks it as it goes.
 * A second name for each old socket, taken before the rebind, puts it back
 * (now, and again when the failed server is surely gone).
 */
static void
unix_paths_save(const struct ds_config *old)
{
    srv.saved_count = 0;
    for (size_t i = 0; i < old->grpc.listen_count && srv.saved_count < 16; i++) {
        const char *addr = old->grpc.listen[i];
        if (strncmp(addr, "unix:", 5) != 0)
            continue;
        struct kept_path *k = &srv.saved[srv.saved_count];
        snprintf(k->path, sizeof k->path, "%s", addr + 5);
        snprintf(k->link, sizeof k->link, "%s.old", addr + 5);
        unlink(k->link);
        if (link(k->path, k->link) == 0)
            srv.saved_count++;
    }
}

/* put_back: the rebind failed; else it worked and the names go. */
static void
unix_paths_settle(int put_back, int final)
{
    for (int i = 0; i < srv.saved_count; i++) {
        struct kept_path *k = &srv.saved[i];
        if (put_back) {
            struct stat a, b;
            if (stat(k->link, &a) == 0 && (stat(k->path, &b) == -1 || a.st_ino != b.st_ino)) {
                unlink(k->path);
                if (link(k->link, k->path) == -1)
                    log_syserr("link(\"%s\", \"%s\") failed", k->link, k->path);
            }
        }
        if (!put_back || final)
            unlink(k->link);
    }
    if (!put_back || final)
        srv.saved_count = 0;
}

static void
on_kept_timer(evutil_socket_t fd, short what, void *arg)
{
    unix_paths_restore(1);
    unix_paths_settle(1, 1);
}

static int
same_string(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/*
 * A new server on the current config's addresses, bound and started, then
 * the current one retired: it stops (its listeners close, its connections
 * get GOAWAY) and its calls get shutdown_timeout to end. The new server is
 * bound first, so the ports are never without a listener. -1 (logged by
 * server_create) if the new server cannot be made: the current one stays.
 * `old` is the config the current server was made from.
 */
static int
server_replace(const struct ds_config *old)
{
    const struct ds_config *config = gp.config;
    struct timeval later = clock_timeval_ms(1000);
    unix_paths_save(old);
    struct server *s = server_create(0);
    if (s == NULL) {
        unix_paths_settle(1, 0);
        evtimer_add(srv.kept_timer, &later);
        return -1;
    }
    unix_paths_settle(0, 1);
    unix_paths_link(config, old);
    struct server *old_server = srv.current;
    srv.current = s;
    old_server->next = srv.retired;
    srv.retired = old_server;
    old_server->cancel_timer = evtimer_new(gp.base, on_cancel_timer, old_server);
    struct timeval tv = clock_timeval_ms(config->shutdown_timeout_ms);
    evtimer_add(old_server->cancel_timer, &tv);
    server_stop(old_server, 0);
    unix_paths_restore(0);
    evtimer_add(srv.kept_timer, &later);
    return 0;
}

/* After a reload: rebind if a listener setting changed (addresses, the
 * methods each serves, message
 * size limit, streams, connection age, keepalive, the TLS file paths, the
 * unix sockets' mode or owner): a rebind ends the open calls after
 * shutdown_timeout, so an unchanged config rebinds nothing. On failure the
 * current server keeps running. */
void
server_reconfigure(const struct ds_config *old)
{
    const struct ds_config *config = gp.config;
    int changed = config->grpc.listen_count != old->grpc.listen_count ||
                  config->grpc.max_message_size != old->grpc.max_message_size ||
                  config->grpc.tls != old->grpc.tls ||
                  !same_string(config->grpc.tls_cert, old->grpc.tls_cert) ||
                  !same_string(config->grpc.tls_key, old->grpc.tls_key) ||
                  !same_string(config->grpc.tls_client_ca, old->grpc.tls_client_ca) ||
                  config->grpc.max_connection_age_ms != old->grpc.max_connection_age_ms ||
                  config->grpc.max_connection_age_grace_ms !=
                      old->grpc.max_connection_age_grace_ms ||
                  memcmp(&config->grpc.keepalive, &old->grpc.keepalive,
                         sizeof config->grpc.keepalive) != 0 ||
                  config->grpc.max_concurrent_streams != old->grpc.max_concurrent_streams ||
                  config->grpc.unix_mode != old->grpc.unix_mode ||
                  (config->grpc.unix_owner == NULL) != (old->grpc.unix_owner == NULL) ||
                  (config->grpc.unix_owner != NULL &&
                   strcmp(config->grpc.unix_owner, old->grpc.unix_owner) != 0);
    for (size_t i = 0; !changed && i < config->grpc.listen_count; i++)
        changed = strcmp(config->grpc.listen[i], old->grpc.listen[i]) != 0 ||
                  config->grpc.listen_methods[i] != old->grpc.listen_methods[i];
    if (!changed || srv.current == NULL || gp.draining || gp.stopping)
        return;

    if (server_replace(old) == -1)
        log_error("reload: keeping the listeners on %s", srv.current->listen);
}

/* ---- the listener at the descriptor limit ------------------------------ */

static void
reserve_take(void)
{
    while (lw.reserved < DESCRIPTORS_RESERVE) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd == -1)
            break;
        lw.reserve[lw.reserved++] = fd;
    }
}

static void
reserve_release(void)
{
    while (lw.reserved > 0)
        close(lw.reserve[--lw.reserved]);
}

/* Any thread: transport.c saw gRPC log "Failed accept4". */
void
server_accept_failed(void)
{
    if (lw.failed_event != NULL && atomic_exchange(&lw.accept_failed, 1) == 0)
        event_active(lw.failed_event, EV_READ, 0);
}

static void
on_listener_retry(evutil_socket_t fd, short what, void *arg)
{
    if (!lw.dead || gp.stopping || gp.draining || srv.current == NULL)
        return;
    uint64_t open = descriptors_open(), limit = descriptors_limit();
    struct timeval tv = clock_timeval_ms(LISTENER_RETRY_MS);
    /* Room for the reserve and as much again for connections. */
    if (open + 2 * DESCRIPTORS_RESERVE >= limit) {
        evtimer_add(lw.retry_timer, &tv);
        return;
    }
    /* The dead server's listeners stay open until the new one is bound:
     * a client that connects now waits in their backlog (and is reset
     * when they close) rather than being refused. */
    if (server_replace(gp.config) == -1) {
        log_error("cannot listen again on %s; trying again", srv.current->listen);
        evtimer_add(lw.retry_timer, &tv);
        return;
    }
    reserve_take();
    lw.dead = 0;
    lw.restarts++;
    atomic_store(&lw.accept_failed, 0);
    log_notice("listening again on %s (%llu of %llu descriptors open); calls on the old "
               "connections get shutdown_timeout to end", srv.current->listen,
               (unsigned long long)descriptors_open(), (unsigned long long)limit);
    health_changed();
}

static void
on_accept_failed(evutil_socket_t fd, short what, void *arg)
{
    if (lw.dead || srv.current == NULL)
        return;
    lw.dead = 1;
    reserve_release();
    log_error("gRPC stopped accepting connections on %s: accept4() failed with %llu of %llu "
              "descriptors open; NOT_SERVING until it listens again", srv.current->listen,
              (unsigned long long)descriptors_open(), (unsigned long long)descriptors_limit());
    health_changed();
    struct timeval tv = clock_timeval_ms(LISTENER_RETRY_MS);
    evtimer_add(lw.retry_timer, &tv);
}

int
server_listening(void)
{
    return srv.current != NULL && !lw.dead;
}

uint64_t
server_listener_restarts(void)
{
    return lw.restarts;
}

/* Stop taking calls (GOAWAY) everywhere; with cancel_calls, end every call
 * now (clients see UNAVAILABLE). */
void
server_shutdown(int cancel_calls)
{
    if (srv.current != NULL)
        server_stop(srv.current, cancel_calls);
    for (struct server *s = srv.retired; s != NULL; s = s->next)
        server_stop(s, cancel_calls);
}

int
server_is_shut_down(void)
{
    if (srv.current != NULL && !srv.current->shut_down)
        return 0;
    for (struct server *s = srv.retired; s != NULL; s = s->next)
        if (!s->shut_down)
            return 0;
    return 1;
}

/* ---- the bytes clients have not acknowledged (a graceful stop's end) --- */

/* A connection looked at before, by its socket's inode. */
struct peer_entry {
    ino_t inode;
    struct tcp_peer peer;
};

/* What server_connections_unacked() keeps between looks. */
static struct {
    DIR *fd_dir;                /* /proc/self/fd, open from the first look on (closed
                                   by server_destroy()) */
    int fd_dir_failed;          /* opening it failed and was logged */
    struct peer_entry *peers;   /* the last look's connections, by inode (owned) */
    size_t peer_count;
} ua;

/* Is the socket's local address (LOCAL, LEN bytes) that of one of the
 * servers' grpc.listen entries? A TCP one matches by port alone: the host
 * may be a name or a wildcard, and an outgoing connection of this process
 * (Redis) cannot have a port a listener holds on its address.
 *
 * Unix socket connections are looked at too, by path. There nothing is
 * acknowledged: SIOCOUTQ counts what the peer has not read yet (with the
 * kernel's overhead per write), and closing does not drop it (no reset: it
 * stays readable). But a gRPC C-core client (grpcio) that runs again after
 * being stopped may write first (a keepalive ping), get EPIPE, and fail
 * its streams UNAVAILABLE "Broken pipe" before it has read what waits for
 * it: it lost the tail as a TCP client does (test_drain.py: the unix
 * socket test, 3 runs of 3 when these were not waited for). So the stop
 * waits until it has read everything, bounded by shutdown_timeout as for
 * TCP. A unix peer cannot be gone without its socket closing. */
static int
is_listen_address(const struct sockaddr_storage *local, socklen_t len)
{
    unsigned port = 0;
    const char *path = NULL;
    size_t path_len = 0;
    if (local->ss_family == AF_INET) {
        port = ntohs(((const struct sockaddr_in *)local)->sin_port);
    } else if (local->ss_family == AF_INET6) {
        port = ntohs(((const struct sockaddr_in6 *)local)->sin6_port);
    } else if (local->ss_family == AF_UNIX && len > offsetof(struct sockaddr_un, sun_path) &&
               ((const struct sockaddr_un *)local)->sun_path[0] != '\0') {
        /* Not a socketpair's (no name); not always NUL-terminated. */
        path = ((const struct sockaddr_un *)local)->sun_path;
        path_len = strnlen(path, len - offsetof(struct sockaddr_un, sun_path));
    } else {
        return 0;
    }
    struct server *gens[] = { srv.current, srv.retired };
    for (size_t g = 0; g < 2; g++) {
        for (struct server *s = gens[g]; s != NULL; s = g == 0 ? NULL : s->next) {
            for (size_t i = 0; i < s->address_count; i++) {
                const char *addr = s->addresses[i];
                if (strncmp(addr, "unix:", 5) == 0) {
                    if (path != NULL && strlen(addr + 5) == path_len &&
                        memcmp(path, addr + 5, path_len) == 0)
                        return 1;
                    continue;
                }
                char host[256];
                const char *p;
                if (path == NULL && address_split(addr, host, sizeof host, &p) == 0 &&
                    (unsigned)strtoul(p, NULL, 10) == port)
                    return 1;
            }
        }
    }
    return 0;
}

static int
peer_entry_compare(const void *a, const void *b)
{
    ino_t x = ((const struct peer_entry *)a)->inode, y = ((const struct peer_entry *)b)->inode;
    return x < y ? -1 : x > y;
}

/* /proc/self/fd, opened once and kept: at the descriptor limit (EMFILE, a
 * flood of connections) it could not be opened, and the stop would not
 * know what its clients hold. If the table is full already, one of the
 * reserve's descriptors makes room. NULL if it cannot be opened. */
static DIR *
fd_dir(void)
{
    if (ua.fd_dir != NULL)
        return ua.fd_dir;
    ua.fd_dir = opendir("/proc/self/fd");
    if (ua.fd_dir == NULL && (errno == EMFILE || errno == ENFILE) && lw.reserved > 0) {
        close(lw.reserve[--lw.reserved]);
        ua.fd_dir = opendir("/proc/self/fd");
    }
    if (ua.fd_dir == NULL) {
        if (!ua.fd_dir_failed)
            log_syswarn("opendir(/proc/self/fd) failed; cannot tell what clients have not "
                        "received yet; trying again");
        ua.fd_dir_failed = 1;
        return NULL;
    }
    ua.fd_dir_failed = 0;
    return ua.fd_dir;
}

void
server_connections_watch(void)
{
    (void)fd_dir();
}

int
server_connections_unacked(struct unacked *out)
{
    memset(out, 0, sizeof *out);
    DIR *d = fd_dir();
    if (d == NULL)
        return -1;
    rewinddir(d);
    uint64_t now = clock_monotonic_ms();
    struct peer_entry *seen = NULL;
    size_t seen_count = 0, seen_size = 0;
    int failed = 0;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (e == NULL) {
            failed = errno != 0;
            break;
        }
        if (e->d_name[0] == '.')
            continue;
        out->descriptors++;
        int fd = atoi(e->d_name);
        /* gRPC's descriptors, used from its threads: these only look, and
         * one closed and reused meanwhile is only looked at. */
        struct stat st;
        int type = 0, listening = 0;
        socklen_t optlen = sizeof type;
        if (fd == dirfd(d) || fstat(fd, &st) == -1 || !S_ISSOCK(st.st_mode) ||
            getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &optlen) == -1 || type != SOCK_STREAM)
            continue;
        optlen = sizeof listening;
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &optlen) == -1 || listening)
            continue;
        struct sockaddr_storage local;
        socklen_t len = sizeof local;
        int queued = 0;
        if (getsockname(fd, (struct sockaddr *)&local, &len) == -1 ||
            !is_listen_address(&local, len) || ioctl(fd, SIOCOUTQ, &queued) == -1 || queued <= 0)
            continue;
        struct tcp_info info;
        socklen_t info_len = sizeof info;
        memset(&info, 0, sizeof info);
        if (local.ss_family == AF_UNIX ||
            getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &info_len) == -1)
            info_len = 0;       /* cannot tell (or unix: never gone): counted as alive */
        /* As last looked at, if it was. */
        struct peer_entry key = { .inode = st.st_ino };
        struct peer_entry *was = ua.peer_count == 0 ? NULL :
            bsearch(&key, ua.peers, ua.peer_count, sizeof *ua.peers, peer_entry_compare);
        if (was != NULL)
            key.peer = was->peer;
        if (tcp_peer_gone(&key.peer, &info, info_len, now)) {
            out->gone_bytes += (uint64_t)queued;
            out->gone++;
        } else {
            out->bytes += (uint64_t)queued;
        }
        if (seen_count == seen_size) {
            seen_size = seen_size == 0 ? 16 : 2 * seen_size;
            seen = ds_realloc(seen, seen_size * sizeof *seen);
        }
        seen[seen_count++] = key;
    }
    if (failed)
        log_syswarn("readdir(/proc/self/fd) failed");
    if (seen_count > 1)
        qsort(seen, seen_count, sizeof *seen, peer_entry_compare);
    free(ua.peers);
    ua.peers = seen;
    ua.peer_count = seen_count;
    return failed ? -1 : 0;
}

int
server_requests_pending(void)
{
    if (srv.current != NULL && srv.current->requests_posted > 0)
        return 1;
    for (struct server *s = srv.retired; s != NULL; s = s->next)
        if (s->requests_posted > 0)
            return 1;
    return 0;
}

void
server_destroy(void)
{
    /* gRPC may log until grpc_shutdown(): the hook stays, and wakes no
     * one (failed_event is never freed: a gRPC thread may still hold it). */
    atomic_store(&lw.accept_failed, 1);
    if (lw.retry_timer != NULL)
        event_free(lw.retry_timer);
    lw.retry_timer = NULL;
    reserve_release();
    if (ua.fd_dir != NULL)
        closedir(ua.fd_dir);
    ua.fd_dir = NULL;
    free(ua.peers);
    ua.peers = NULL;
    ua.peer_count = 0;
    if (srv.kept_timer != NULL) {
        unix_paths_restore(1);
        unix_paths_settle(0, 1);
        event_free(srv.kept_timer);
        srv.kept_timer = NULL;
    }
    if (srv.current != NULL)
        server_free(srv.current);
    srv.current = NULL;
    while (srv.retired != NULL) {
        struct server *s = srv.retired;
        srv.retired = s->next;
        server_free(s);
    }
}
