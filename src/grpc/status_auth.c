/*
 * HTTP basic auth of the status endpoint (status.auth: a user file as
 * nginx's auth_basic_user_file; core/auth_file.c reads it and checks
 * passwords).
 *
 * The endpoint is served on the grpc process's loop, and a bcrypt check
 * costs tens of milliseconds there, so the hashing is bounded:
 * - a successful check is remembered for AUTH_REMEMBER_S, keyed by a keyed
 *   SHA-256 of user and password (never the password itself): a browser or
 *   a scraper sending the same credentials every second hashes once;
 * - the time spent hashing comes from a budget that refills at
 *   AUTH_BUDGET_MS per second (at most AUTH_BURST_MS saved up): a request
 *   that needs a check while the budget is spent gets 429 (Retry-After: 1).
 *   A flood of wrong passwords so costs the data path at most about a
 *   tenth of the loop, plus one check.
 * An unknown user costs a check too (against the first user's hash), so
 * the time of a 401 does not tell which users exist. /healthz stays open.
 */
#include "grpc/status_auth.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include <event2/keyvalq_struct.h>
#include <openssl/evp.h>

#include "core/auth_file.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/log.h"
#include "core/process.h"
#include "grpc/grpc_process.h"

#define AUTH_REALM          "Basic realm=\"dosomethingd\", charset=\"UTF-8\""
#define AUTH_REMEMBER_S     60
#define AUTH_REMEMBERED     32          /* successful checks remembered */
#define AUTH_BUDGET_MS      100         /* hashing per second, refilled */
#define AUTH_BURST_MS       300         /* the most saved up */
#define AUTH_CREDENTIALS_MAX 1400       /* bytes of base64 in an Authorization header */
#define AUTH_NOTE_EVERY_S   10          /* how often refusals are summed up in the log */

static struct {
    int on;                             /* status.auth is set */
    struct auth_file users;             /* empty while none could be read: all refused */
    uint8_t key[32];                    /* of the remembered digests, drawn at start */
    int keyed;
    struct {
        uint8_t digest[32];
        uint64_t until_ns;              /* 0: free */
    } remembered[AUTH_REMEMBERED];
    int64_t budget_ns;
    uint64_t refilled_ns;
    uint64_t denied, busy;              /* since the last note in the log */
    uint64_t noted_ns;
} au;

/* Is the host of ADDR ("host:port", "[v6]:port") a loopback address? */
static int
loopback(const char *addr)
{
    const char *colon = strrchr(addr, ':');
    char host[300];
    size_t len = colon != NULL ? (size_t)(colon - addr) : strlen(addr);
    if (len >= 2 && addr[0] == '[' && addr[len - 1] == ']') {
        addr++;
        len -= 2;
    }
    if (len >= sizeof host)
        return 0;
    memcpy(host, addr, len);
    host[len] = '\0';
    if (strcasecmp(host, "localhost") == 0)
        return 1;
    struct in_addr v4;
    struct in6_addr v6;
    if (inet_pton(AF_INET, host, &v4) == 1)
        return (ntohl(v4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &v6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&v6) ||
               (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
    return 0;
}

void
status_auth_configure(void)
{
    const struct ds_config *c = gp.config;
    memset(au.remembered, 0, sizeof au.remembered);
    if (!au.keyed) {
        if (getrandom(au.key, sizeof au.key, 0) != (ssize_t)sizeof au.key)
            fatal(DS_EXIT_FATAL, "getrandom() failed");
        au.keyed = 1;
        au.budget_ns = (int64_t)AUTH_BURST_MS * 1000000;
        au.refilled_ns = clock_monotonic_ns();
    }
    au.on = c->status.listen != NULL && c->status.auth != NULL;
    if (!au.on) {
        auth_file_free(&au.users);
        if (c->status.listen != NULL && !loopback(c->status.listen))
            log_warn("status.listen %s is not a loopback address and status.auth is off: "
                     "anyone who reaches it reads /metrics and /status (set status.auth, "
                     "or bind it to 127.0.0.1)", c->status.listen);
        return;
    }
    char why[600];
    if (auth_file_load(c->status.auth, &au.users, why, sizeof why) == -1)
        log_error("status.auth: %s; %s", why, au.users.count > 0
                  ? "the users read before stay" : "every request but /healthz is refused (401)");
}

/* The keyed digest of USER:PASSWORD. */
static void
digest_of(const char *credentials, size_t len, uint8_t out[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned n = 0;
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, au.key, sizeof au.key) != 1 ||
        EVP_DigestUpdate(ctx, credentials, len) != 1 || EVP_DigestFinal_ex(ctx, out, &n) != 1)
        memset(out, 0, 32);     /* remembers nothing useful: every check hashes */
    EVP_MD_CTX_free(ctx);
}

static int
same_digest(const uint8_t *a, const uint8_t *b)
{
    unsigned diff = 0;
    for (size_t i = 0; i < 32; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

static int
remembered(const uint8_t digest[32], uint64_t now)
{
    int found = 0;
    for (size_t i = 0; i < AUTH_REMEMBERED; i++)
        if (au.remembered[i].until_ns > now && same_digest(au.remembered[i].digest, digest))
            found = 1;
    return found;
}

static void
remember(const uint8_t digest[32], uint64_t now)
{
    size_t at = 0;
    for (size_t i = 1; i < AUTH_REMEMBERED; i++)
        if (au.remembered[i].until_ns < au.remembered[at].until_ns)
            at = i;
    memcpy(au.remembered[at].digest, digest, 32);
    au.remembered[at].until_ns = now + (uint64_t)AUTH_REMEMBER_S * 1000000000u;
}

/* Standard base64 (padding optional) of IN (LEN bytes) into OUT; the
 * decoded length, or -1. */
static long
base64_decode(const char *in, size_t len, char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    long n = 0;
    while (len > 0 && in[len - 1] == '=')
        len--;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        int v = c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26
                : c >= '0' && c <= '9' ? c - '0' + 52 : c == '+' ? 62 : c == '/' ? 63 : -1;
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (char)(acc >> bits);
        }
    }
    return n;
}

static void
note_refusals(uint64_t now)
{
    if (au.denied + au.busy == 0 || now - au.noted_ns < (uint64_t)AUTH_NOTE_EVERY_S * 1000000000u)
        return;
    log_notice("status endpoint: %llu requests refused for missing or wrong credentials and "
               "%llu for too many password checks (429) in the last %d s",
               (unsigned long long)au.denied, (unsigned long long)au.busy, AUTH_NOTE_EVERY_S);
    au.denied = au.busy = 0;
    au.noted_ns = now;
}

static int
deny(struct evhttp_request *req, struct evbuffer *body, uint64_t now)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", AUTH_REALM);
    evbuffer_add_printf(body, "authentication required (status.auth)\n");
    au.denied++;
    note_refusals(now);
    return 401;
}

int
status_auth_check(struct evhttp_request *req, const char *path, struct evbuffer *body)
{
    if (!au.on || strcmp(path, "/healthz") == 0)
        return 0;
    uint64_t now = clock_monotonic_ns();
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (h == NULL || strncasecmp(h, "Basic ", 6) != 0 || au.users.count == 0)
        return deny(req, body, now);
    h += 6;
    while (*h == ' ')
        h++;
    size_t len = strlen(h);
    while (len > 0 && h[len - 1] == ' ')
        len--;
    char credentials[AUTH_CREDENTIALS_MAX];
    long n = len <= AUTH_CREDENTIALS_MAX ? base64_decode(h, len, credentials) : -1;
    const char *colon = n > 0 ? memchr(credentials, ':', (size_t)n) : NULL;
    if (colon == NULL)
        return deny(req, body, now);
    uint8_t digest[32];
    digest_of(credentials, (size_t)n, digest);
    if (remembered(digest, now)) {
        explicit_bzero(credentials, sizeof credentials);
        return 0;
    }

    /* A check: only while the budget lasts. */
    int64_t refill = (int64_t)((now - au.refilled_ns) * AUTH_BUDGET_MS / 1000);
    au.refilled_ns = now;
    au.budget_ns += refill;
    if (au.budget_ns > (int64_t)AUTH_BURST_MS * 1000000)
        au.budget_ns = (int64_t)AUTH_BURST_MS * 1000000;
    if (au.budget_ns <= 0) {
        explicit_bzero(credentials, sizeof credentials);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
        evbuffer_add_printf(body, "too many password checks; try again in a second\n");
        au.busy++;
        note_refusals(now);
        return 429;
    }
    size_t user_len = (size_t)(colon - credentials);
    const struct auth_user *u = auth_file_find(&au.users, credentials, user_len);
    const char *password = colon + 1;
    size_t password_len = (size_t)n - user_len - 1;
    int ok = auth_password_matches(u != NULL ? u->hash : au.users.users[0].hash, password,
                                   password_len) && u != NULL;
    explicit_bzero(credentials, sizeof credentials);
    uint64_t after = clock_monotonic_ns();
    au.budget_ns -= (int64_t)(after - now);
    au.refilled_ns = after;     /* the loop was not refilling while it hashed */
    if (!ok)
        return deny(req, body, after);
    remember(digest, after);
    return 0;
}

void
status_auth_shutdown(void)
{
    auth_file_free(&au.users);
    explicit_bzero(&au, sizeof au);
}
