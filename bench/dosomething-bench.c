/*
 * dosomething-bench: the load client of dosomethingd's benchmark, and two
 * references to hold it against.
 *
 *   dosomething-bench [load options]       load client (default mode)
 *   dosomething-bench --sink ADDR          raw transport reference server
 *   dosomething-bench --hash-loop [...]    no-daemon SHA-256 loop in P processes
 *
 * Load client: opens S getUpdates subscribers first (and, by default, waits
 * until the server has answered each with its initial metadata, i.e. it has
 * registered them), then streams N WorkItems over C concurrent doSomething
 * calls spread over K connections, waits until every subscriber has seen a
 * final update (SUCCEEDED or FAILED) for every item, and prints one JSON line.
 *
 * Everything runs on the gRPC C core with completion queues: thread 0 drives
 * the submitting calls and the subscribers s with s % T == 0; threads 1..T-1
 * (--sub-threads T) drive the other subscribers, each on its own queue.
 * Every wait is bounded by --timeout; on any failure the client says why on
 * stderr and exits non-zero.
 *
 * Item ids are "<prefix><index>"; the update parser reads only the fields it
 * needs (item_id, state, error) straight from the wire.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
/* --hash-api lowlevel uses SHA256_Init/Update/Final, deprecated in OpenSSL 3. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "com/agrounds/dosomething/v1/do_something.pb-c.h"

#define METHOD_SUBMIT  "/com.agrounds.dosomething.v1.DoSomethingService/doSomething"
#define METHOD_UPDATES "/com.agrounds.dosomething.v1.DoSomethingService/getUpdates"

typedef Com__Agrounds__Dosomething__V1__WorkItem work_item;
typedef Com__Agrounds__Dosomething__V1__WorkItem__ParamsEntry param_entry;
typedef Com__Agrounds__Dosomething__V1__UpdatesRequest updates_request;
typedef Com__Agrounds__Dosomething__V1__SubmitReply submit_reply;
typedef Com__Agrounds__Dosomething__V1__Update update_msg;

enum {
    ST_QUEUED = COM__AGROUNDS__DOSOMETHING__V1__STATE__QUEUED,
    ST_STARTED = COM__AGROUNDS__DOSOMETHING__V1__STATE__STARTED,
    ST_PROGRESS = COM__AGROUNDS__DOSOMETHING__V1__STATE__PROGRESS,
    ST_SUCCEEDED = COM__AGROUNDS__DOSOMETHING__V1__STATE__SUCCEEDED,
    ST_FAILED = COM__AGROUNDS__DOSOMETHING__V1__STATE__FAILED,
    ST_RETRYING = COM__AGROUNDS__DOSOMETHING__V1__STATE__RETRYING,
};

#define MAX_PARAMS   16
#define MAX_STATES   8
#define MAX_PROCS    4096
#define MAX_TARGETS  16

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */

static int64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void
die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "dosomething-bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stdout);
    _exit(2);
}

static void *
xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        die("out of memory (%zu x %zu bytes)", n, size);
    return p;
}

static uint64_t
parse_u64(const char *opt, const char *text)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)*text))
        die("%s: not a number: '%s'", opt, text);
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || *end != '\0')
        die("%s: not a number: '%s'", opt, text);
    return v;
}

static double
parse_double(const char *opt, const char *text)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno != 0 || *end != '\0' || v <= 0)
        die("%s: not a positive number: '%s'", opt, text);
    return v;
}

static gpr_timespec
deadline_in_ns(int64_t ns)
{
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_nanos(ns, GPR_TIMESPAN));
}

static void
json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* ------------------------------------------------------------------------ */
/* Options                                                                  */

static struct {
    const char *targets[MAX_TARGETS];   /* calls take turns; subscribers on the first */
    size_t n_targets;
    uint64_t n;
    uint64_t calls;
    uint64_t channels;
    uint64_t subs;
    uint64_t threads;
    const char *kind;
    uint64_t payload;
    uint64_t priorities;        /* > 1: item i gets WorkItem.priority i % priorities */
    uint64_t delay_ms;          /* WorkItem.delay_ms of every item */
    uint64_t same;              /* 0, or R: items i and j have the same payload iff i/R == j/R */
    const char *param_keys[MAX_PARAMS];
    const char *param_values[MAX_PARAMS];
    size_t n_params;
    int states[MAX_STATES];
    size_t n_states;
    uint64_t window;
    int wait_final;
    int sub_ready_metadata;
    pid_t server_pids[MAX_TARGETS];
    size_t n_server_pids;
    double timeout;
    double stall;
    const char *label;
    char id_prefix[64];
    /* modes */
    const char *sink;
    int hash_loop;
    uint64_t procs;
    uint64_t rounds;
    int hash_api;               /* 0 SHA256() one-shot (what the daemon calls), 1 EVP, 2 low level */
} opt = {
    .n = 10000,
    .calls = 4,
    .channels = 1,
    .subs = 1,
    .threads = 1,
    .kind = "echo",
    .payload = 64,
    .wait_final = 1,
    .sub_ready_metadata = 1,
    .timeout = 120,
    .stall = 30,
    .label = "",
    .procs = 1,
    .rounds = 10000,
};

static void
usage(FILE *f)
{
    fprintf(f,
"usage: dosomething-bench [options]                load client (JSON line on stdout)\n"
"       dosomething-bench --sink ADDR [--timeout S] raw transport reference server\n"
"       dosomething-bench --hash-loop [-n N] [--procs P] [--rounds R] [--payload B]\n"
"\n"
"load client:\n"
"  -t, --target ADDR      server address (default 127.0.0.1:8080); repeatable: call i\n"
"                         goes to target i mod T, every subscriber to the first\n"
"  -n, --items N          items to submit (default 10000)\n"
"  -c, --calls C          concurrent doSomething calls (default 4)\n"
"  -k, --channels K       connections; calls and subscribers spread over them (default 1)\n"
"  -s, --subscribers S    getUpdates subscribers, opened first (default 1; 0 with --wait accepted)\n"
"      --sub-threads T    threads reading subscribers (default 1)\n"
"      --kind KIND        WorkItem.kind (default echo)\n"
"      --payload BYTES    payload size (default 64)\n"
"      --priorities P     item i gets priority i %% P (default 1: all 0; at most 128)\n"
"      --delay-ms MS      every item's delay_ms (default 0)\n"
"      --same R           payload \"distinct-<i/R>\": each payload sent by R items in a row\n"
"      --param K=V        a handler parameter (repeatable)\n"
"      --states LIST      subscriber filter: comma-separated state names, or 'all'\n"
"                         (default SUCCEEDED,FAILED)\n"
"      --window W         at most W items sent and not yet final on subscriber 0\n"
"                         (0: unlimited, the default; 1: one at a time)\n"
"      --wait final|accepted  wait for every final update (default) or only for\n"
"                         every doSomething reply\n"
"      --sub-ready metadata|none  subscribers count as registered when the server's\n"
"                         initial metadata arrives (default), or at once\n"
"      --server-pid PID   measure CPU and memory of PID and its descendants (repeatable)\n"
"      --timeout SEC      bound on the whole run (default 120)\n"
"      --stall SEC        fail when nothing progresses (no send, reply or final update)\n"
"                         for SEC seconds (default 30)\n"
"      --label TEXT       copied into the JSON line\n"
"      --id-prefix TEXT   item ids are TEXT<index> (default b<pid>-)\n"
"hash loop:\n"
"      --procs P          processes (default 1); --rounds R (default 10000)\n"
"      --hash-api oneshot|evp|lowlevel  SHA256() as the daemon's handler calls it\n"
"                         (default), EVP with a reused context, or SHA256_Init/Update/Final\n");
}

static int
state_by_name(const char *name, size_t len)
{
    static const struct { const char *name; int value; } names[] = {
        { "QUEUED", ST_QUEUED }, { "STARTED", ST_STARTED }, { "PROGRESS", ST_PROGRESS },
        { "SUCCEEDED", ST_SUCCEEDED }, { "FAILED", ST_FAILED }, { "RETRYING", ST_RETRYING },
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i].name) == len && strncasecmp(names[i].name, name, len) == 0)
            return names[i].value;
    return -1;
}

static void
parse_states(const char *text)
{
    opt.n_states = 0;
    if (strcmp(text, "all") == 0)
        return;
    const char *p = text;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        int st = state_by_name(p, len);
        if (st < 0)
            die("--states: unknown state '%.*s'", (int)len, p);
        if (opt.n_states == MAX_STATES)
            die("--states: too many states");
        opt.n_states++;
        opt.states[opt.n_states - 1] = st;
        p += len;
        if (*p == ',')
            p++;
    }
}

static void
parse_options(int argc, char **argv)
{
    enum { O_SUB_THREADS = 256, O_KIND, O_PAYLOAD, O_PARAM, O_STATES, O_WINDOW, O_WAIT,
           O_SUB_READY, O_SERVER_PID, O_TIMEOUT, O_LABEL, O_ID_PREFIX, O_SINK, O_HASH_LOOP,
           O_PROCS, O_ROUNDS, O_HASH_API, O_STALL, O_PRIORITIES, O_DELAY_MS, O_SAME };
    static const struct option longopts[] = {
        { "target", required_argument, NULL, 't' },
        { "items", required_argument, NULL, 'n' },
        { "calls", required_argument, NULL, 'c' },
        { "channels", required_argument, NULL, 'k' },
        { "subscribers", required_argument, NULL, 's' },
        { "sub-threads", required_argument, NULL, O_SUB_THREADS },
        { "kind", required_argument, NULL, O_KIND },
        { "payload", required_argument, NULL, O_PAYLOAD },
        { "priorities", required_argument, NULL, O_PRIORITIES },
        { "delay-ms", required_argument, NULL, O_DELAY_MS },
        { "param", required_argument, NULL, O_PARAM },
        { "same", required_argument, NULL, O_SAME },
        { "states", required_argument, NULL, O_STATES },
        { "window", required_argument, NULL, O_WINDOW },
        { "wait", required_argument, NULL, O_WAIT },
        { "sub-ready", required_argument, NULL, O_SUB_READY },
        { "server-pid", required_argument, NULL, O_SERVER_PID },
        { "timeout", required_argument, NULL, O_TIMEOUT },
        { "stall", required_argument, NULL, O_STALL },
        { "label", required_argument, NULL, O_LABEL },
        { "id-prefix", required_argument, NULL, O_ID_PREFIX },
        { "sink", required_argument, NULL, O_SINK },
        { "hash-loop", no_argument, NULL, O_HASH_LOOP },
        { "procs", required_argument, NULL, O_PROCS },
        { "rounds", required_argument, NULL, O_ROUNDS },
        { "hash-api", required_argument, NULL, O_HASH_API },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    opt.states[0] = ST_SUCCEEDED;
    opt.states[1] = ST_FAILED;
    opt.n_states = 2;
    snprintf(opt.id_prefix, sizeof opt.id_prefix, "b%ld-", (long)getpid());
    int c;
    while ((c = getopt_long(argc, argv, "t:n:c:k:s:h", longopts, NULL)) != -1) {
        switch (c) {
        case 't':
            if (opt.n_targets == MAX_TARGETS)
                die("--target: at most %d targets", MAX_TARGETS);
            opt.targets[opt.n_targets++] = optarg;
            break;
        case 'n': opt.n = parse_u64("--items", optarg); break;
        case 'c': opt.calls = parse_u64("--calls", optarg); break;
        case 'k': opt.channels = parse_u64("--channels", optarg); break;
        case 's': opt.subs = parse_u64("--subscribers", optarg); break;
        case O_SUB_THREADS: opt.threads = parse_u64("--sub-threads", optarg); break;
        case O_KIND: opt.kind = optarg; break;
        case O_PAYLOAD: opt.payload = parse_u64("--payload", optarg); break;
        case O_PRIORITIES:
            opt.priorities = parse_u64("--priorities", optarg);
            if (opt.priorities < 1 || opt.priorities > 128)
                die("--priorities must be 1..128");
            break;
        case O_DELAY_MS: opt.delay_ms = parse_u64("--delay-ms", optarg); break;
        case O_SAME: opt.same = parse_u64("--same", optarg); break;
        case O_PARAM: {
            char *eq = strchr(optarg, '=');
            if (eq == NULL || eq == optarg)
                die("--param: expected KEY=VALUE, got '%s'", optarg);
            if (opt.n_params == MAX_PARAMS)
                die("--param: at most %d parameters", MAX_PARAMS);
            *eq = '\0';
            opt.param_keys[opt.n_params] = optarg;
            opt.param_values[opt.n_params++] = eq + 1;
            break;
        }
        case O_STATES: parse_states(optarg); break;
        case O_WINDOW: opt.window = parse_u64("--window", optarg); break;
        case O_WAIT:
            if (strcmp(optarg, "final") == 0)
                opt.wait_final = 1;
            else if (strcmp(optarg, "accepted") == 0)
                opt.wait_final = 0;
            else
                die("--wait: expected final or accepted, got '%s'", optarg);
            break;
        case O_SUB_READY:
            if (strcmp(optarg, "metadata") == 0)
                opt.sub_ready_metadata = 1;
            else if (strcmp(optarg, "none") == 0)
                opt.sub_ready_metadata = 0;
            else
                die("--sub-ready: expected metadata or none, got '%s'", optarg);
            break;
        case O_SERVER_PID:
            if (opt.n_server_pids == MAX_TARGETS)
                die("--server-pid: at most %d", MAX_TARGETS);
            opt.server_pids[opt.n_server_pids++] = (pid_t)parse_u64("--server-pid", optarg);
            break;
        case O_TIMEOUT: opt.timeout = parse_double("--timeout", optarg); break;
        case O_STALL: opt.stall = parse_double("--stall", optarg); break;
        case O_LABEL: opt.label = optarg; break;
        case O_ID_PREFIX:
            if (strlen(optarg) >= sizeof opt.id_prefix)
                die("--id-prefix: too long");
            strcpy(opt.id_prefix, optarg);
            break;
        case O_SINK: opt.sink = optarg; break;
        case O_HASH_LOOP: opt.hash_loop = 1; break;
        case O_PROCS: opt.procs = parse_u64("--procs", optarg); break;
        case O_ROUNDS: opt.rounds = parse_u64("--rounds", optarg); break;
        case O_HASH_API:
            if (strcmp(optarg, "oneshot") == 0)
                opt.hash_api = 0;
            else if (strcmp(optarg, "evp") == 0)
                opt.hash_api = 1;
            else if (strcmp(optarg, "lowlevel") == 0)
                opt.hash_api = 2;
            else
                die("--hash-api: expected oneshot, evp or lowlevel, got '%s'", optarg);
            break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc)
        die("unexpected argument '%s' (see --help)", argv[optind]);
    if (opt.n_targets == 0)
        opt.targets[opt.n_targets++] = "127.0.0.1:8080";
    if (opt.sink || opt.hash_loop)
        return;
    if (opt.n == 0)
        die("--items must be at least 1");
    if (opt.calls == 0 || opt.calls > 100000)
        die("--calls must be 1..100000");
    if (opt.calls > opt.n)
        opt.calls = opt.n;
    if (opt.channels == 0 || opt.channels > 1000)
        die("--channels must be 1..1000");
    if (opt.threads == 0 || opt.threads > 64)
        die("--sub-threads must be 1..64");
    if (opt.subs > 100000)
        die("--subscribers must be at most 100000");
    if (opt.wait_final && opt.subs == 0)
        die("--wait final needs at least one subscriber");
    if (opt.window && opt.subs == 0)
        die("--window needs at least one subscriber");
    if (opt.wait_final && opt.n_states > 0) {
        int s = 0, f = 0;
        for (size_t i = 0; i < opt.n_states; i++) {
            s |= opt.states[i] == ST_SUCCEEDED;
            f |= opt.states[i] == ST_FAILED;
        }
        if (!s || !f)
            die("--states must include SUCCEEDED and FAILED when waiting for final updates");
    }
    if (opt.threads > opt.subs && opt.subs > 0)
        opt.threads = opt.subs;
    if (opt.subs == 0)
        opt.threads = 1;
}

/* ------------------------------------------------------------------------ */
/* Server processes: CPU and memory from /proc                              */

struct proc_info {
    pid_t pid;
    char name[96];
    int seen_before, seen_after;
    uint64_t ticks_before, ticks_after;
    long rss_before_kb, rss_after_kb, hwm_kb;
};

static struct proc_info procs[64];
static size_t n_procs;

static int
read_file(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, size - 1, f);
    fclose(f);
    buf[n] = '\0';
    return (int)n;
}

/* ppid and utime+stime of PID, from /proc/PID/stat. */
static int
read_stat(pid_t pid, pid_t *ppid, uint64_t *ticks)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    if (read_file(path, buf, sizeof buf) <= 0)
        return -1;
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    /* after ") ": state(3) ppid(4) ... utime(14) stime(15) */
    char state;
    long pp;
    unsigned long long f[11];
    if (sscanf(p + 2, "%c %ld %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &state,
               &pp, &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7], &f[8], &f[9],
               &f[10]) != 13)
        return -1;
    *ppid = (pid_t)pp;
    *ticks = f[9] + f[10];
    return 0;
}

static long
read_status_kb(pid_t pid, const char *key)
{
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    if (read_file(path, buf, sizeof buf) <= 0)
        return -1;
    size_t klen = strlen(key);
    for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (strncmp(line, key, klen) == 0 && line[klen] == ':')
            return strtol(line + klen + 1, NULL, 10);
    return -1;
}

static void
read_name(pid_t pid, char *out, size_t size)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%ld/cmdline", (long)pid);
    int n = read_file(path, buf, sizeof buf);
    if (n <= 0) {
        snprintf(out, size, "?");
        return;
    }
    for (int i = 0; i < n; i++)
        if (buf[i] == '\0')
            buf[i] = ' ';
    while (n > 0 && (buf[n - 1] == ' ' || buf[n - 1] == '\0'))
        buf[--n] = '\0';
    size_t len = (size_t)n < size - 1 ? (size_t)n : size - 1;
    memcpy(out, buf, len);
    out[len] = '\0';
}

static struct proc_info *
proc_find(pid_t pid, int add)
{
    for (size_t i = 0; i < n_procs; i++)
        if (procs[i].pid == pid)
            return &procs[i];
    if (!add || n_procs == sizeof procs / sizeof procs[0])
        return NULL;
    struct proc_info *p = &procs[n_procs++];
    memset(p, 0, sizeof *p);
    p->pid = pid;
    read_name(pid, p->name, sizeof p->name);
    p->rss_before_kb = p->rss_after_kb = p->hwm_kb = -1;
    return p;
}

/* Every descendant of root (and root), with their CPU and memory now. */
static void
snapshot_procs(pid_t root, int after)
{
    static pid_t pids[MAX_PROCS], ppids[MAX_PROCS];
    static uint64_t ticks[MAX_PROCS];
    size_t count = 0;
    DIR *d = opendir("/proc");
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && count < MAX_PROCS) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        pid_t pid = (pid_t)atol(e->d_name);
        if (read_stat(pid, &ppids[count], &ticks[count]) == 0)
            pids[count++] = pid;
    }
    closedir(d);
    /* Mark the tree: repeat until no new member (the tree is shallow). */
    static char in[MAX_PROCS];
    memset(in, 0, count);
    int changed = 1;
    while (changed) {
        changed = 0;
        for (size_t i = 0; i < count; i++) {
            if (in[i])
                continue;
            int member = pids[i] == root;
            for (size_t j = 0; !member && j < count; j++)
                member = in[j] && pids[j] == ppids[i];
            if (member) {
                in[i] = 1;
                changed = 1;
            }
        }
    }
    for (size_t i = 0; i < count; i++) {
        if (!in[i])
            continue;
        struct proc_info *p = proc_find(pids[i], 1);
        if (p == NULL)
            continue;
        long rss = read_status_kb(pids[i], "VmRSS");
        if (after) {
            p->seen_after = 1;
            p->ticks_after = ticks[i];
            p->rss_after_kb = rss;
            p->hwm_kb = read_status_kb(pids[i], "VmHWM");
        } else {
            p->seen_before = 1;
            p->ticks_before = ticks[i];
            p->rss_before_kb = rss;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Load client                                                              */

enum tag_kind {
    TK_SUB_START, TK_SUB_MD, TK_SUB_MSG, TK_SUB_STATUS,
    TK_CALL_MD, TK_CALL_SEND, TK_CALL_STATUS,
    TK_SINK_REQ, TK_SINK_RECV, TK_SINK_REPLY, TK_SINK_CLOSE,
    TK_SINK_SUB_MD, TK_SINK_SUB_SEND, TK_SINK_SUB_CLOSE, TK_SINK_SHUTDOWN,
};

struct tag {
    enum tag_kind kind;
    void *owner;
};

struct thr;

/* One getUpdates call of a subscriber; a subscriber the server cut off as too
 * slow resumes on a new one (replay from the last seq it got). */
struct stream {
    struct sub *sub;
    grpc_call *call;
    struct tag t_start, t_md, t_msg, t_status;
    grpc_byte_buffer *request;
    grpc_metadata_array md, trailing;
    grpc_byte_buffer *msg;
    grpc_status_code status;
    grpc_slice details;
    int ops;                    /* batches in flight */
};

struct sub {
    int idx;
    struct thr *thr;
    struct stream *cur;
    int ready;
    int complete;
    uint64_t finals, failed, dups, foreign, nonfinal;
    uint64_t last_seq;
    uint64_t resumes;
    uint8_t *seen;              /* bitmap of items with a final update */
    int64_t t_complete;
};

struct scall {
    int idx;
    grpc_call *call;
    struct tag t_md, t_send, t_status;
    grpc_metadata_array md, trailing;
    grpc_byte_buffer *reply;
    grpc_status_code status;
    grpc_slice details;
    grpc_byte_buffer *send_bb;
    uint64_t next;              /* next item index to send */
    uint64_t assigned;          /* items of this call */
    int blocked;                /* waiting for room in the window */
    int done;
    uint64_t accepted, rejected;
};

struct thr {
    int idx;
    pthread_t thread;
    grpc_completion_queue *cq;
    struct sub **subs;
    size_t n_subs;
    long pending;               /* batches started and not yet completed */
};

static grpc_channel **channels;
static struct thr *thrs;
static struct sub *subs_all;
static struct scall *calls;
static grpc_slice tmpl;                 /* the encoded WorkItem without its id */
static int64_t *send_ns;                /* per item: when it was handed to gRPC */
static int64_t *lat_ns;                 /* per item: send -> SUCCEEDED on subscriber 0; -1 none */
static int64_t t_deadline;
static int64_t t_first_send, t_last_reply;
static uint64_t sent, outstanding, calls_done, accepted_total, rejected_total;
static atomic_int g_abort;
static atomic_int g_stop;
static atomic_ulong subs_ready;
static atomic_ulong subs_complete;
static atomic_llong last_progress;      /* now_ns() of the last send, reply or final update */
static pthread_mutex_t err_lock = PTHREAD_MUTEX_INITIALIZER;
static char err_msg[1024];
static atomic_int failed_prints;

static void
fail(const char *fmt, ...)
{
    pthread_mutex_lock(&err_lock);
    if (err_msg[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err_msg, sizeof err_msg, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&err_lock);
    atomic_store(&g_abort, 1);
}

static void
start_batch(struct thr *t, grpc_call *call, const grpc_op *ops, size_t n, struct tag *tag)
{
    grpc_call_error err = grpc_call_start_batch(call, ops, n, tag, NULL);
    if (err != GRPC_CALL_OK)
        die("grpc_call_start_batch: %s (a bug in the bench client)", grpc_call_error_to_string(err));
    t->pending++;
}

static const char *
status_name(grpc_status_code code)
{
    static const char *names[] = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    if ((unsigned)code < sizeof names / sizeof names[0])
        return names[code];
    return "?";
}

/* Contiguous bytes of a received message: a view of its one slice, or a copy. */
static grpc_slice
message_bytes(grpc_byte_buffer *bb)
{
    if (bb->type == GRPC_BB_RAW && bb->data.raw.compression == GRPC_COMPRESS_NONE &&
        bb->data.raw.slice_buffer.count == 1)
        return grpc_slice_ref(bb->data.raw.slice_buffer.slices[0]);
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return grpc_empty_slice();
    grpc_slice s = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    return s;
}

static int
read_varint(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
    const uint8_t *p = *pp;
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (p >= end)
            return -1;
        uint8_t b = *p++;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *pp = p;
            *v = r;
            return 0;
        }
    }
    return -1;
}

struct update_view {
    uint64_t seq;
    const uint8_t *id;
    size_t id_len;
    int state;
    const uint8_t *error;
    size_t error_len;
};

/* Just the fields the client needs, straight from the wire. */
static int
parse_update(const uint8_t *p, size_t n, struct update_view *u)
{
    const uint8_t *end = p + n;
    memset(u, 0, sizeof *u);
    while (p < end) {
        uint64_t key, v;
        if (read_varint(&p, end, &key) < 0)
            return -1;
        uint32_t field = (uint32_t)(key >> 3);
        switch (key & 7) {
        case 0:
            if (read_varint(&p, end, &v) < 0)
                return -1;
            if (field == 1)
                u->seq = v;
            else if (field == 4)
                u->state = (int)v;
            break;
        case 1:
            if (end - p < 8)
                return -1;
            p += 8;
            break;
        case 2:
            if (read_varint(&p, end, &v) < 0 || v > (uint64_t)(end - p))
                return -1;
            if (field == 2) {
                u->id = p;
                u->id_len = (size_t)v;
            } else if (field == 6) {
                u->error = p;
                u->error_len = (size_t)v;
            }
            p += v;
            break;
        case 5:
            if (end - p < 4)
                return -1;
            p += 4;
            break;
        default:
            return -1;
        }
    }
    return 0;
}

/* The item index of an id of ours, or -1. */
static int64_t
item_index(const uint8_t *id, size_t len)
{
    size_t plen = strlen(opt.id_prefix);
    if (len <= plen || len > plen + 20 || memcmp(id, opt.id_prefix, plen) != 0)
        return -1;
    uint64_t v = 0;
    for (size_t i = plen; i < len; i++) {
        if (id[i] < '0' || id[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(id[i] - '0');
    }
    return v < opt.n ? (int64_t)v : -1;
}

static void call_send_next(struct scall *c);

static void
unblock_calls(void)
{
    static uint64_t rr;
    for (uint64_t k = 0; k < opt.calls && (opt.window == 0 || outstanding < opt.window); k++) {
        struct scall *c = &calls[(rr + k) % opt.calls];
        if (c->blocked) {
            c->blocked = 0;
            call_send_next(c);
            rr = (rr + k + 1) % opt.calls;
        }
    }
}

static void
sub_on_update(struct sub *s, grpc_byte_buffer *bb)
{
    grpc_slice bytes = message_bytes(bb);
    struct update_view u;
    if (parse_update(GRPC_SLICE_START_PTR(bytes), GRPC_SLICE_LENGTH(bytes), &u) < 0) {
        grpc_slice_unref(bytes);
        fail("subscriber %d: an update that is not a valid Update message", s->idx);
        return;
    }
    if (u.seq > s->last_seq)
        s->last_seq = u.seq;
    if (u.state != ST_SUCCEEDED && u.state != ST_FAILED) {
        s->nonfinal++;
        grpc_slice_unref(bytes);
        return;
    }
    int64_t i = item_index(u.id, u.id_len);
    if (i < 0) {
        s->foreign++;
        grpc_slice_unref(bytes);
        return;
    }
    if (s->seen[i >> 3] & (1u << (i & 7))) {
        s->dups++;
        grpc_slice_unref(bytes);
        return;
    }
    int64_t now = now_ns();
    atomic_store_explicit(&last_progress, now, memory_order_relaxed);
    s->seen[i >> 3] |= (uint8_t)(1u << (i & 7));
    s->finals++;
    if (u.state == ST_FAILED) {
        s->failed++;
        if (atomic_fetch_add(&failed_prints, 1) < 3)
            fprintf(stderr, "dosomething-bench: item %.*s FAILED: %.*s\n", (int)u.id_len,
                    (const char *)u.id, (int)u.error_len, (const char *)u.error);
    }
    grpc_slice_unref(bytes);
    if (s->idx == 0) {
        if (u.state == ST_SUCCEEDED)
            lat_ns[i] = now - send_ns[i];
        if (outstanding > 0)
            outstanding--;
        if (opt.window)
            unblock_calls();
    }
    if (s->finals == opt.n) {
        s->complete = 1;
        s->t_complete = now;
        atomic_fetch_add(&subs_complete, 1);
    }
}

static void
stream_post_recv(struct stream *st)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &st->msg;
    st->ops++;
    start_batch(st->sub->thr, st->call, &op, 1, &st->t_msg);
}

static struct stream *
stream_start(struct sub *s, int replay, uint64_t after_seq)
{
    struct thr *t = s->thr;
    struct stream *st = xcalloc(1, sizeof *st);
    st->sub = s;
    grpc_slice method = grpc_slice_from_static_string(METHOD_UPDATES);
    /* every subscriber is on the first target: channels[0 .. opt.channels - 1] */
    st->call = grpc_channel_create_call(channels[s->idx % opt.channels], NULL,
                                        GRPC_PROPAGATE_DEFAULTS, t->cq, method, NULL,
                                        gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (st->call == NULL)
        die("cannot create a getUpdates call");
    st->t_start = (struct tag){ TK_SUB_START, st };
    st->t_md = (struct tag){ TK_SUB_MD, st };
    st->t_msg = (struct tag){ TK_SUB_MSG, st };
    st->t_status = (struct tag){ TK_SUB_STATUS, st };
    grpc_metadata_array_init(&st->md);
    grpc_metadata_array_init(&st->trailing);

    updates_request req = COM__AGROUNDS__DOSOMETHING__V1__UPDATES_REQUEST__INIT;
    Com__Agrounds__Dosomething__V1__State states[MAX_STATES];
    for (size_t i = 0; i < opt.n_states; i++)
        states[i] = (Com__Agrounds__Dosomething__V1__State)opt.states[i];
    req.n_states = opt.n_states;
    req.states = states;
    req.replay = replay;
    req.after_seq = after_seq;
    size_t len = com__agrounds__dosomething__v1__updates_request__get_packed_size(&req);
    grpc_slice slice = grpc_slice_malloc(len);
    com__agrounds__dosomething__v1__updates_request__pack(&req, GRPC_SLICE_START_PTR(slice));
    st->request = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);

    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = st->request;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    st->ops++;
    start_batch(t, st->call, ops, 3, &st->t_start);

    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[0].data.recv_initial_metadata.recv_initial_metadata = &st->md;
    st->ops++;
    start_batch(t, st->call, ops, 1, &st->t_md);

    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &st->trailing;
    ops[0].data.recv_status_on_client.status = &st->status;
    ops[0].data.recv_status_on_client.status_details = &st->details;
    st->ops++;
    start_batch(t, st->call, ops, 1, &st->t_status);

    stream_post_recv(st);
    return st;
}

static void
stream_free(struct stream *st)
{
    if (st->request != NULL)
        grpc_byte_buffer_destroy(st->request);
    if (st->msg != NULL)
        grpc_byte_buffer_destroy(st->msg);
    grpc_metadata_array_destroy(&st->md);
    grpc_metadata_array_destroy(&st->trailing);
    grpc_slice_unref(st->details);
    grpc_call_unref(st->call);
    free(st);
}

static void
sub_start(struct sub *s)
{
    s->cur = stream_start(s, 0, 0);
    if (!opt.sub_ready_metadata) {
        s->ready = 1;
        atomic_fetch_add(&subs_ready, 1);
    }
}

static void
call_send_next(struct scall *c)
{
    uint64_t i = c->next;
    if (i >= opt.n || c->done)
        return;
    if (opt.window && outstanding >= opt.window) {
        c->blocked = 1;
        return;
    }
    int last = i + opt.calls >= opt.n;
    /* The id field, then the shared rest of the item (fields may come in any order). */
    char id[96];
    int id_len = snprintf(id, sizeof id, "%s%" PRIu64, opt.id_prefix, i);
    grpc_slice slices[3];
    int with_priority = opt.priorities > 1;
    slices[0] = grpc_slice_malloc((size_t)id_len + 2 + (with_priority ? 2 : 0));
    uint8_t *p = GRPC_SLICE_START_PTR(slices[0]);
    p[0] = 0x0a;                /* field 1, length-delimited */
    p[1] = (uint8_t)id_len;     /* < 128 */
    memcpy(p + 2, id, (size_t)id_len);
    if (with_priority) {
        p[2 + id_len] = 0x40;   /* field 8 (priority), varint */
        p[3 + id_len] = (uint8_t)(i % opt.priorities);     /* < 128 */
    }
    slices[1] = grpc_slice_ref(tmpl);
    size_t n_slices = 2;
    if (opt.same > 0) {
        /* --same R: a payload of its own for every R items in a row (the
         * last payload field wins over the template's). */
        char distinct[32];
        int len = snprintf(distinct, sizeof distinct, "distinct-%" PRIu64, i / opt.same);
        slices[2] = grpc_slice_malloc((size_t)len + 2);
        uint8_t *q = GRPC_SLICE_START_PTR(slices[2]);
        q[0] = 0x1a;            /* field 3 (payload), length-delimited */
        q[1] = (uint8_t)len;    /* < 128 */
        memcpy(q + 2, distinct, (size_t)len);
        n_slices = 3;
    }
    c->send_bb = grpc_raw_byte_buffer_create(slices, n_slices);
    for (size_t s = 0; s < n_slices; s++)
        grpc_slice_unref(slices[s]);

    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_MESSAGE;
    ops[0].data.send_message.send_message = c->send_bb;
    /* Coalesce while this call surely has another message to send right after. */
    if (!last && opt.window == 0)
        ops[0].flags = GRPC_WRITE_BUFFER_HINT;
    size_t n_ops = 1;
    if (last) {
        ops[1].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        n_ops = 2;
    }
    int64_t now = now_ns();
    if (t_first_send == 0)
        t_first_send = now;
    send_ns[i] = now;
    c->next += opt.calls;
    sent++;
    outstanding++;
    start_batch(&thrs[0], c->call, ops, n_ops, &c->t_send);
}

static void
call_start(struct scall *c)
{
    struct thr *t = &thrs[0];
    grpc_slice method = grpc_slice_from_static_string(METHOD_SUBMIT);
    /* call i: target i mod T, and on it channel (i / T) mod K (T = 1: i mod K) */
    size_t target = (size_t)c->idx % opt.n_targets;
    size_t chan = target * opt.channels + ((size_t)c->idx / opt.n_targets) % opt.channels;
    c->call = grpc_channel_create_call(channels[chan], NULL,
                                       GRPC_PROPAGATE_DEFAULTS, t->cq, method, NULL,
                                       gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (c->call == NULL)
        die("cannot create a doSomething call");
    c->t_md = (struct tag){ TK_CALL_MD, c };
    c->t_send = (struct tag){ TK_CALL_SEND, c };
    c->t_status = (struct tag){ TK_CALL_STATUS, c };
    grpc_metadata_array_init(&c->md);
    grpc_metadata_array_init(&c->trailing);

    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    /* Headers alone: the messages after them may carry the write-buffer hint. */
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY;
    start_batch(t, c->call, ops, 1, &c->t_md);

    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[0].data.recv_initial_metadata.recv_initial_metadata = &c->md;
    ops[1].op = GRPC_OP_RECV_MESSAGE;
    ops[1].data.recv_message.recv_message = &c->reply;
    ops[2].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[2].data.recv_status_on_client.trailing_metadata = &c->trailing;
    ops[2].data.recv_status_on_client.status = &c->status;
    ops[2].data.recv_status_on_client.status_details = &c->details;
    start_batch(t, c->call, ops, 3, &c->t_status);
}

static void
call_on_status(struct scall *c)
{
    c->done = 1;
    calls_done++;
    t_last_reply = now_ns();
    atomic_store_explicit(&last_progress, t_last_reply, memory_order_relaxed);
    if (c->status != GRPC_STATUS_OK) {
        char *d = grpc_slice_to_c_string(c->details);
        fail("doSomething call %d (to %s) ended with %s: %s (sent %" PRIu64 " of %" PRIu64
             " items)", c->idx, opt.targets[(size_t)c->idx % opt.n_targets],
             status_name(c->status), d, sent, opt.n);
        gpr_free(d);
        return;
    }
    if (c->reply == NULL) {
        fail("doSomething call %d: status OK without a SubmitReply", c->idx);
        return;
    }
    grpc_slice bytes = message_bytes(c->reply);
    submit_reply *r = com__agrounds__dosomething__v1__submit_reply__unpack(
        NULL, GRPC_SLICE_LENGTH(bytes), GRPC_SLICE_START_PTR(bytes));
    grpc_slice_unref(bytes);
    if (r == NULL) {
        fail("doSomething call %d: the reply is not a valid SubmitReply", c->idx);
        return;
    }
    c->accepted = r->accepted;
    c->rejected = r->rejected;
    accepted_total += r->accepted;
    rejected_total += r->rejected;
    if (r->rejected > 0) {
        fail("doSomething call %d: %" PRIu64 " items rejected, the first: %s", c->idx,
             (uint64_t)r->rejected, r->n_rejections > 0 ? r->rejections[0]->reason : "?");
    }
    com__agrounds__dosomething__v1__submit_reply__free_unpacked(r, NULL);
}

#define MAX_RESUMES 1000

static void
stream_event(enum tag_kind kind, struct stream *st, int ok)
{
    struct sub *s = st->sub;
    int live = !atomic_load(&g_stop) && !atomic_load(&g_abort);
    st->ops--;
    switch (kind) {
    case TK_SUB_MD:
        if (ok && opt.sub_ready_metadata && !s->ready) {
            s->ready = 1;
            atomic_fetch_add(&subs_ready, 1);
        }
        break;
    case TK_SUB_MSG:
        if (ok && st->msg != NULL) {
            sub_on_update(s, st->msg);
            grpc_byte_buffer_destroy(st->msg);
            st->msg = NULL;
            if (live)
                stream_post_recv(st);
        }
        break;
    case TK_SUB_STATUS:
        if (!live || st != s->cur || (s->complete && st->status == GRPC_STATUS_OK))
            break;
        if (st->status == GRPC_STATUS_RESOURCE_EXHAUSTED && !s->complete && opt.sub_ready_metadata
            && s->resumes < MAX_RESUMES) {
            /* cut off as too slow: come back for what was missed */
            s->resumes++;
            s->cur = stream_start(s, 1, s->last_seq);
        } else {
            char *d = grpc_slice_to_c_string(st->details);
            fail("subscriber %d ended with %s: %s (it had %" PRIu64 " of %" PRIu64
                 " final updates, %" PRIu64 " resumes)", s->idx, status_name(st->status), d,
                 s->finals, opt.n, s->resumes);
            gpr_free(d);
        }
        break;
    default:
        break;
    }
    if (st->ops == 0 && st != s->cur)
        stream_free(st);
}

static void
handle_event(struct thr *t, grpc_event *ev)
{
    struct tag *tag = ev->tag;
    int ok = ev->success;
    t->pending--;
    switch (tag->kind) {
    case TK_SUB_START:
    case TK_SUB_MD:
    case TK_SUB_MSG:
    case TK_SUB_STATUS:
        stream_event(tag->kind, tag->owner, ok);
        break;
    case TK_CALL_MD:
        break;
    case TK_CALL_SEND: {
        struct scall *c = tag->owner;
        atomic_store_explicit(&last_progress, now_ns(), memory_order_relaxed);
        grpc_byte_buffer_destroy(c->send_bb);
        c->send_bb = NULL;
        if (ok && !atomic_load(&g_abort))
            call_send_next(c);
        break;
    }
    case TK_CALL_STATUS:
        call_on_status(tag->owner);
        break;
    default:
        die("unexpected completion tag %d", (int)tag->kind);
    }
}

/* Wait for the next event up to `ms`; 1 if one was handled. */
static int
poll_once(struct thr *t, int64_t ms)
{
    grpc_event ev = grpc_completion_queue_next(t->cq, deadline_in_ns(ms * 1000000), NULL);
    if (ev.type == GRPC_OP_COMPLETE) {
        handle_event(t, &ev);
        return 1;
    }
    if (ev.type == GRPC_QUEUE_SHUTDOWN)
        die("completion queue shut down unexpectedly");
    return 0;
}

/* Cancel this thread's calls and wait (bounded) for their batches. */
static void
thread_finish(struct thr *t, int cancel_submits)
{
    for (size_t i = 0; i < t->n_subs; i++)
        grpc_call_cancel(t->subs[i]->cur->call, NULL);
    if (cancel_submits && calls != NULL)
        for (uint64_t i = 0; i < opt.calls; i++)
            if (calls[i].call != NULL)
                grpc_call_cancel(calls[i].call, NULL);
    int64_t limit = now_ns() + 10 * 1000000000LL;
    while (t->pending > 0) {
        if (now_ns() > limit) {
            fprintf(stderr, "dosomething-bench: %ld batches did not complete after cancel\n",
                    t->pending);
            return;
        }
        poll_once(t, 100);
    }
}

static void *
sub_thread(void *arg)
{
    struct thr *t = arg;
    while (!atomic_load(&g_stop) && !atomic_load(&g_abort))
        poll_once(t, 100);
    thread_finish(t, 0);
    return NULL;
}

/* Where the run stands, for a timeout or stall message. */
static const char *
progress_text(void)
{
    static char text[512];
    uint64_t lo = UINT64_MAX, hi = 0, resumes = 0;
    for (uint64_t i = 0; i < opt.subs; i++) {
        uint64_t f = subs_all[i].finals;
        lo = f < lo ? f : lo;
        hi = f > hi ? f : hi;
        resumes += subs_all[i].resumes;
    }
    if (opt.subs == 0)
        lo = 0;
    snprintf(text, sizeof text, "sent %" PRIu64 " of %" PRIu64 ", %" PRIu64 " of %" PRIu64
             " calls replied (accepted %" PRIu64 "), subscribers complete %lu of %" PRIu64
             ", final updates per subscriber %" PRIu64 "..%" PRIu64 " of %" PRIu64
             ", resumes after a cut-off %" PRIu64 "%s", sent, opt.n, calls_done, opt.calls,
             accepted_total, atomic_load(&subs_complete), opt.subs, lo, hi, opt.n, resumes,
             resumes ? " (a resumed replay skips what left the update log)" : "");
    return text;
}

static int
cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted nanoseconds, in milliseconds. */
static double
percentile_ms(const int64_t *sorted, size_t n, double p)
{
    if (n == 0)
        return 0;
    double rank = p * (double)n;
    size_t k = (size_t)rank;
    if ((double)k < rank)
        k++;
    if (k == 0)
        k = 1;
    if (k > n)
        k = n;
    return (double)sorted[k - 1] / 1e6;
}

static double
cpu_seconds_self(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void
build_template(void)
{
    work_item item = COM__AGROUNDS__DOSOMETHING__V1__WORK_ITEM__INIT;
    uint8_t *payload = xcalloc(opt.payload, 1);
    for (uint64_t i = 0; i < opt.payload; i++)
        payload[i] = (uint8_t)('a' + i % 26);
    param_entry entries[MAX_PARAMS];
    param_entry *ptrs[MAX_PARAMS];
    for (size_t i = 0; i < opt.n_params; i++) {
        com__agrounds__dosomething__v1__work_item__params_entry__init(&entries[i]);
        entries[i].key = (char *)opt.param_keys[i];
        entries[i].value = (char *)opt.param_values[i];
        ptrs[i] = &entries[i];
    }
    item.kind = (char *)opt.kind;
    item.payload.data = payload;
    item.payload.len = opt.payload;
    item.n_params = opt.n_params;
    item.params = ptrs;
    item.delay_ms = (uint32_t)opt.delay_ms;
    size_t len = com__agrounds__dosomething__v1__work_item__get_packed_size(&item);
    tmpl = grpc_slice_malloc(len);
    com__agrounds__dosomething__v1__work_item__pack(&item, GRPC_SLICE_START_PTR(tmpl));
    free(payload);
}

static int
run_load(void)
{
    if (strlen(opt.id_prefix) + 20 >= 127)
        die("--id-prefix: too long");
    grpc_init();
    t_deadline = now_ns() + (int64_t)(opt.timeout * 1e9);
    build_template();
    send_ns = xcalloc(opt.n, sizeof *send_ns);
    lat_ns = xcalloc(opt.n, sizeof *lat_ns);
    for (uint64_t i = 0; i < opt.n; i++)
        lat_ns[i] = -1;

    grpc_arg args[] = {
        /* one connection per channel, not one shared by every channel to the target */
        { .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, .value.integer = 1 },
        { .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, .value.integer = -1 },
        { .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, .value.integer = -1 },
    };
    grpc_channel_args chargs = { .num_args = 3, .args = args };
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    channels = xcalloc(opt.n_targets * opt.channels, sizeof *channels);
    for (uint64_t i = 0; i < opt.n_targets * opt.channels; i++) {
        const char *target = opt.targets[i / opt.channels];
        channels[i] = grpc_channel_create(target, creds, &chargs);
        if (channels[i] == NULL)
            die("cannot create a channel to %s", target);
    }
    grpc_channel_credentials_release(creds);

    thrs = xcalloc(opt.threads, sizeof *thrs);
    for (uint64_t i = 0; i < opt.threads; i++) {
        thrs[i].idx = (int)i;
        thrs[i].cq = grpc_completion_queue_create_for_next(NULL);
        thrs[i].subs = xcalloc(opt.subs / opt.threads + 1, sizeof *thrs[i].subs);
    }
    subs_all = xcalloc(opt.subs, sizeof *subs_all);
    for (uint64_t i = 0; i < opt.subs; i++) {
        struct sub *s = &subs_all[i];
        s->idx = (int)i;
        s->thr = &thrs[i % opt.threads];
        s->seen = xcalloc(opt.n / 8 + 1, 1);
        s->thr->subs[s->thr->n_subs++] = s;
        sub_start(s);
    }
    /* The other threads only touch their own queue and subscribers from here on. */
    for (uint64_t i = 1; i < opt.threads; i++)
        if (pthread_create(&thrs[i].thread, NULL, sub_thread, &thrs[i]) != 0)
            die("pthread_create failed");

    struct thr *t0 = &thrs[0];
    /* Subscribers first: wait until the server has taken each one. */
    while (atomic_load(&subs_ready) < opt.subs && !atomic_load(&g_abort)) {
        poll_once(t0, 10);
        if (now_ns() > t_deadline)
            fail("timeout: only %lu of %" PRIu64 " subscribers were registered after %.0f s "
                 "(is the server up at %s?)", atomic_load(&subs_ready), opt.subs, opt.timeout,
                 opt.targets[0]);
    }

    double client_cpu0 = 0;
    if (!atomic_load(&g_abort)) {
        for (size_t i = 0; i < opt.n_server_pids; i++)
            snapshot_procs(opt.server_pids[i], 0);
        client_cpu0 = cpu_seconds_self();
        calls = xcalloc(opt.calls, sizeof *calls);
        for (uint64_t i = 0; i < opt.calls; i++) {
            calls[i].idx = (int)i;
            calls[i].next = i;
            calls[i].assigned = (opt.n - i + opt.calls - 1) / opt.calls;
            call_start(&calls[i]);
        }
        atomic_store(&last_progress, now_ns());
        for (uint64_t i = 0; i < opt.calls; i++)
            call_send_next(&calls[i]);
    }

    while (!atomic_load(&g_abort)) {
        int replies_done = calls_done == opt.calls;
        if (replies_done && (!opt.wait_final || atomic_load(&subs_complete) == opt.subs))
            break;
        poll_once(t0, 50);
        int64_t now = now_ns();
        if (now > t_deadline)
            fail("timeout after %.0f s: %s", opt.timeout, progress_text());
        else if (now - atomic_load_explicit(&last_progress, memory_order_relaxed) >
                 (int64_t)(opt.stall * 1e9))
            fail("stalled: nothing progressed for %.0f s: %s", opt.stall, progress_text());
    }
    int64_t t_end = now_ns();
    double client_cpu1 = cpu_seconds_self();
    for (size_t i = 0; i < opt.n_server_pids && !atomic_load(&g_abort); i++)
        snapshot_procs(opt.server_pids[i], 1);

    atomic_store(&g_stop, 1);
    thread_finish(t0, atomic_load(&g_abort));
    for (uint64_t i = 1; i < opt.threads; i++)
        pthread_join(thrs[i].thread, NULL);

    if (atomic_load(&g_abort)) {
        fprintf(stderr, "dosomething-bench: %s\n", err_msg);
        fflush(stdout);
        fflush(stderr);
        _exit(2);
    }

    /* Results. */
    int64_t t_last_final = 0;
    uint64_t failed = 0, dups = 0, foreign = 0, nonfinal = 0, resumes = 0;
    for (uint64_t i = 0; i < opt.subs; i++) {
        struct sub *s = &subs_all[i];
        if (s->t_complete > t_last_final)
            t_last_final = s->t_complete;
        failed += s->failed;
        dups += s->dups;
        foreign += s->foreign;
        nonfinal += s->nonfinal;
        resumes += s->resumes;
    }
    if (!opt.wait_final)
        t_last_final = t_last_reply;
    double submit_s = (double)(t_last_reply - t_first_send) / 1e9;
    double elapsed_s = (double)(t_last_final - t_first_send) / 1e9;

    size_t n_lat = 0;
    for (uint64_t i = 0; i < opt.n; i++)
        if (lat_ns[i] >= 0)
            lat_ns[n_lat++] = lat_ns[i];
    qsort(lat_ns, n_lat, sizeof *lat_ns, cmp_i64);
    double sum = 0;
    for (size_t i = 0; i < n_lat; i++)
        sum += (double)lat_ns[i];
#define PCT(p) percentile_ms(lat_ns, n_lat, p)

    long hz = sysconf(_SC_CLK_TCK);
    double server_cpu = 0;
    for (size_t i = 0; i < n_procs; i++)
        if (procs[i].seen_before && procs[i].seen_after)
            server_cpu += (double)(procs[i].ticks_after - procs[i].ticks_before) / (double)hz;

    FILE *f = stdout;
    fprintf(f, "{\"mode\":\"load\",\"label\":");
    json_string(f, opt.label);
    fprintf(f, ",\"target\":");
    json_string(f, opt.targets[0]);
    fprintf(f, ",\"targets\":[");
    for (size_t i = 0; i < opt.n_targets; i++) {
        fprintf(f, "%s", i ? "," : "");
        json_string(f, opt.targets[i]);
    }
    fprintf(f, "]");
    fprintf(f, ",\"n\":%" PRIu64 ",\"calls\":%" PRIu64 ",\"channels\":%" PRIu64
            ",\"subscribers\":%" PRIu64 ",\"sub_threads\":%" PRIu64 ",\"kind\":", opt.n,
            opt.calls, opt.channels, opt.subs, opt.threads);
    json_string(f, opt.kind);
    fprintf(f, ",\"payload_bytes\":%" PRIu64 ",\"window\":%" PRIu64 ",\"wait\":\"%s\"",
            opt.payload, opt.window, opt.wait_final ? "final" : "accepted");
    fprintf(f, ",\"accepted\":%" PRIu64 ",\"rejected\":%" PRIu64 ",\"failed\":%" PRIu64
            ",\"duplicates\":%" PRIu64 ",\"foreign\":%" PRIu64 ",\"nonfinal\":%" PRIu64 ",\"resumes\":%" PRIu64,
            accepted_total, rejected_total, failed, dups, foreign, nonfinal, resumes);
    fprintf(f, ",\"submit_s\":%.6f,\"elapsed_s\":%.6f,\"submitted_per_s\":%.1f,"
            "\"items_per_s\":%.1f", submit_s, elapsed_s,
            submit_s > 0 ? (double)opt.n / submit_s : 0.0,
            elapsed_s > 0 ? (double)opt.n / elapsed_s : 0.0);
    fprintf(f, ",\"latency_ms\":{\"count\":%zu,\"p50\":%.4f,\"p90\":%.4f,\"p99\":%.4f,"
            "\"max\":%.4f,\"mean\":%.4f}", n_lat, PCT(0.50), PCT(0.90), PCT(0.99),
            n_lat ? (double)lat_ns[n_lat - 1] / 1e6 : 0.0, n_lat ? sum / (double)n_lat / 1e6 : 0.0);
    fprintf(f, ",\"client_cpu_s\":%.3f,\"server_cpu_s\":%.3f,\"wall_s\":%.3f",
            client_cpu1 - client_cpu0, server_cpu, (double)(t_end - t_first_send) / 1e9);
    fprintf(f, ",\"server_procs\":[");
    for (size_t i = 0; i < n_procs; i++) {
        struct proc_info *p = &procs[i];
        fprintf(f, "%s{\"pid\":%ld,\"name\":", i ? "," : "", (long)p->pid);
        json_string(f, p->name);
        fprintf(f, ",\"cpu_s\":");
        if (p->seen_before && p->seen_after)
            fprintf(f, "%.3f", (double)(p->ticks_after - p->ticks_before) / (double)hz);
        else
            fprintf(f, "null");
        fprintf(f, ",\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,\"hwm_kb\":%ld}",
                p->rss_before_kb, p->rss_after_kb, p->hwm_kb);
    }
    fprintf(f, "]}\n");
    fflush(f);
    if (failed > 0) {
        fprintf(stderr, "dosomething-bench: %" PRIu64 " final updates were FAILED\n", failed);
        _exit(3);
    }
    _exit(0);
}

/* ------------------------------------------------------------------------ */
/* Sink: the same service, served trivially by the gRPC C core              */

struct sink_sub {
    struct sink_sub *prev, *next;
    grpc_call *call;
    int refs;
    struct tag t_md, t_send, t_close;
    grpc_slice *queue;
    size_t q_size, q_head, q_count;
    grpc_byte_buffer *send_bb;
    int closed;
    int cancelled;
};

struct sink_call {
    grpc_call *call;
    int refs;
    struct tag t_recv, t_reply, t_close;
    grpc_byte_buffer *msg;
    grpc_byte_buffer *reply_bb;
    uint64_t count;
    int cancelled;
};

struct sink_req {
    struct tag tag;
    int updates;                /* 1: getUpdates; 0: doSomething */
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
};

static struct {
    grpc_server *server;
    grpc_completion_queue *cq;
    void *m_submit, *m_updates;
    struct sink_sub *subs;
    uint64_t seq;
    int shutting_down;
} sk;

static volatile sig_atomic_t sink_signalled;

static void
sink_on_signal(int sig)
{
    (void)sig;
    sink_signalled = 1;
}

static void
sink_batch(grpc_call *call, const grpc_op *ops, size_t n, struct tag *tag)
{
    grpc_call_error err = grpc_call_start_batch(call, ops, n, tag, NULL);
    if (err != GRPC_CALL_OK)
        die("sink: grpc_call_start_batch: %s", grpc_call_error_to_string(err));
}

static void
sink_post_request(int updates)
{
    struct sink_req *r = xcalloc(1, sizeof *r);
    r->tag = (struct tag){ TK_SINK_REQ, r };
    r->updates = updates;
    grpc_metadata_array_init(&r->md);
    grpc_call_error err = grpc_server_request_registered_call(
        sk.server, updates ? sk.m_updates : sk.m_submit, &r->call, &r->deadline, &r->md,
        updates ? &r->payload : NULL, sk.cq, sk.cq, &r->tag);
    if (err != GRPC_CALL_OK)
        die("sink: grpc_server_request_registered_call: %s", grpc_call_error_to_string(err));
}

static void
sink_sub_unref(struct sink_sub *s)
{
    if (--s->refs > 0)
        return;
    while (s->q_count > 0) {
        grpc_slice_unref(s->queue[s->q_head]);
        s->q_head = (s->q_head + 1) % s->q_size;
        s->q_count--;
    }
    free(s->queue);
    grpc_call_unref(s->call);
    free(s);
}

static void
sink_pump(struct sink_sub *s)
{
    if (s->send_bb != NULL || s->closed || s->q_count == 0)
        return;
    grpc_slice slice = s->queue[s->q_head];
    s->q_head = (s->q_head + 1) % s->q_size;
    s->q_count--;
    s->send_bb = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_SEND_MESSAGE;
    op.flags = s->q_count > 0 ? GRPC_WRITE_BUFFER_HINT : 0;
    op.data.send_message.send_message = s->send_bb;
    s->refs++;
    sink_batch(s->call, &op, 1, &s->t_send);
}

static void
sink_publish(grpc_slice update)
{
    for (struct sink_sub *s = sk.subs; s != NULL; s = s->next) {
        if (s->q_count == s->q_size) {
            size_t size = s->q_size ? s->q_size * 2 : 64;
            grpc_slice *q = xcalloc(size, sizeof *q);
            for (size_t i = 0; i < s->q_count; i++)
                q[i] = s->queue[(s->q_head + i) % s->q_size];
            free(s->queue);
            s->queue = q;
            s->q_size = size;
            s->q_head = 0;
        }
        s->queue[(s->q_head + s->q_count) % s->q_size] = grpc_slice_ref(update);
        s->q_count++;
        sink_pump(s);
    }
}

static void
sink_call_unref(struct sink_call *c)
{
    if (--c->refs > 0)
        return;
    if (c->reply_bb != NULL)
        grpc_byte_buffer_destroy(c->reply_bb);
    grpc_call_unref(c->call);
    free(c);
}

static void
sink_call_recv(struct sink_call *c)
{
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->msg;
    c->refs++;
    sink_batch(c->call, &op, 1, &c->t_recv);
}

static void
sink_on_item(struct sink_call *c, grpc_byte_buffer *bb)
{
    grpc_slice bytes = message_bytes(bb);
    work_item *item = com__agrounds__dosomething__v1__work_item__unpack(
        NULL, GRPC_SLICE_LENGTH(bytes), GRPC_SLICE_START_PTR(bytes));
    grpc_slice_unref(bytes);
    if (item == NULL)
        return;         /* counted, not answered: a client would see it never finish */
    c->count++;
    if (sk.subs != NULL) {
        update_msg u = COM__AGROUNDS__DOSOMETHING__V1__UPDATE__INIT;
        u.seq = ++sk.seq;
        u.item_id = item->id;
        u.kind = item->kind[0] ? item->kind : "echo";
        u.state = COM__AGROUNDS__DOSOMETHING__V1__STATE__SUCCEEDED;
        u.result = item->payload;
        u.attempt = 1;
        u.worker_pid = getpid();
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        u.time_unix_nano = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
        u.batch = item->batch;
        size_t len = com__agrounds__dosomething__v1__update__get_packed_size(&u);
        grpc_slice s = grpc_slice_malloc(len);
        com__agrounds__dosomething__v1__update__pack(&u, GRPC_SLICE_START_PTR(s));
        sink_publish(s);
        grpc_slice_unref(s);
    }
    com__agrounds__dosomething__v1__work_item__free_unpacked(item, NULL);
}

static void
sink_call_reply(struct sink_call *c)
{
    submit_reply r = COM__AGROUNDS__DOSOMETHING__V1__SUBMIT_REPLY__INIT;
    r.accepted = c->count;
    size_t len = com__agrounds__dosomething__v1__submit_reply__get_packed_size(&r);
    grpc_slice s = grpc_slice_malloc(len);
    com__agrounds__dosomething__v1__submit_reply__pack(&r, GRPC_SLICE_START_PTR(s));
    c->reply_bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = c->reply_bb;
    ops[2].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[2].data.send_status_from_server.status = GRPC_STATUS_OK;
    c->refs++;
    sink_batch(c->call, ops, 3, &c->t_reply);
}

static void
sink_on_request(struct sink_req *r, int ok)
{
    if (ok && !r->updates) {
        struct sink_call *c = xcalloc(1, sizeof *c);
        c->call = r->call;
        c->refs = 1;
        c->t_recv = (struct tag){ TK_SINK_RECV, c };
        c->t_reply = (struct tag){ TK_SINK_REPLY, c };
        c->t_close = (struct tag){ TK_SINK_CLOSE, c };
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        op.data.recv_close_on_server.cancelled = &c->cancelled;
        sink_batch(c->call, &op, 1, &c->t_close);
        sink_call_recv(c);
    } else if (ok) {
        struct sink_sub *s = xcalloc(1, sizeof *s);
        s->call = r->call;
        s->refs = 2;
        s->t_md = (struct tag){ TK_SINK_SUB_MD, s };
        s->t_send = (struct tag){ TK_SINK_SUB_SEND, s };
        s->t_close = (struct tag){ TK_SINK_SUB_CLOSE, s };
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        op.data.recv_close_on_server.cancelled = &s->cancelled;
        sink_batch(s->call, &op, 1, &s->t_close);
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_SEND_INITIAL_METADATA;
        sink_batch(s->call, &op, 1, &s->t_md);
        s->next = sk.subs;
        if (sk.subs != NULL)
            sk.subs->prev = s;
        sk.subs = s;
    }
    if (r->payload != NULL)
        grpc_byte_buffer_destroy(r->payload);
    grpc_metadata_array_destroy(&r->md);
    int updates = r->updates;
    free(r);
    if (ok && !sk.shutting_down)
        sink_post_request(updates);
}

static void
sink_handle(grpc_event *ev)
{
    struct tag *tag = ev->tag;
    int ok = ev->success;
    switch (tag->kind) {
    case TK_SINK_REQ:
        sink_on_request(tag->owner, ok);
        break;
    case TK_SINK_RECV: {
        struct sink_call *c = tag->owner;
        if (ok && c->msg != NULL) {
            sink_on_item(c, c->msg);
            grpc_byte_buffer_destroy(c->msg);
            c->msg = NULL;
            sink_call_recv(c);
        } else if (ok) {
            sink_call_reply(c);     /* the client half-closed */
        }
        sink_call_unref(c);
        break;
    }
    case TK_SINK_REPLY:
        sink_call_unref(tag->owner);
        break;
    case TK_SINK_CLOSE:
        sink_call_unref(tag->owner);
        break;
    case TK_SINK_SUB_MD:
        sink_sub_unref(tag->owner);
        break;
    case TK_SINK_SUB_SEND: {
        struct sink_sub *s = tag->owner;
        grpc_byte_buffer_destroy(s->send_bb);
        s->send_bb = NULL;
        if (ok)
            sink_pump(s);
        sink_sub_unref(s);
        break;
    }
    case TK_SINK_SUB_CLOSE: {
        struct sink_sub *s = tag->owner;
        s->closed = 1;
        if (s->prev != NULL)
            s->prev->next = s->next;
        else if (sk.subs == s)
            sk.subs = s->next;
        if (s->next != NULL)
            s->next->prev = s->prev;
        s->prev = s->next = NULL;
        sink_sub_unref(s);
        break;
    }
    case TK_SINK_SHUTDOWN:
        break;
    default:
        die("sink: unexpected completion tag %d", (int)tag->kind);
    }
}

static int
run_sink(void)
{
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = sink_on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    grpc_init();
    grpc_arg args[] = {
        { .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, .value.integer = -1 },
        { .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, .value.integer = -1 },
    };
    grpc_channel_args chargs = { .num_args = 2, .args = args };
    sk.cq = grpc_completion_queue_create_for_next(NULL);
    sk.server = grpc_server_create(&chargs, NULL);
    sk.m_submit = grpc_server_register_method(sk.server, METHOD_SUBMIT, NULL,
                                              GRPC_SRM_PAYLOAD_NONE, 0);
    sk.m_updates = grpc_server_register_method(sk.server, METHOD_UPDATES, NULL,
                                               GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    grpc_server_register_completion_queue(sk.server, sk.cq, NULL);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    if (grpc_server_add_http2_port(sk.server, opt.sink, creds) == 0)
        die("sink: cannot listen on %s", opt.sink);
    grpc_server_credentials_release(creds);
    grpc_server_start(sk.server);
    for (int i = 0; i < 8; i++) {
        sink_post_request(0);
        sink_post_request(1);
    }
    fprintf(stderr, "dosomething-bench: sink listening on %s (pid %ld)\n", opt.sink,
            (long)getpid());

    while (!sink_signalled) {
        grpc_event ev = grpc_completion_queue_next(sk.cq, deadline_in_ns(200 * 1000000LL), NULL);
        if (ev.type == GRPC_OP_COMPLETE)
            sink_handle(&ev);
    }
    /* Stop: end every call, wait (bounded) for the server to shut down. */
    sk.shutting_down = 1;
    static struct tag t_shutdown = { TK_SINK_SHUTDOWN, NULL };
    grpc_server_shutdown_and_notify(sk.server, sk.cq, &t_shutdown);
    grpc_server_cancel_all_calls(sk.server);
    int64_t limit = now_ns() + 3 * 1000000000LL;
    while (now_ns() < limit) {
        grpc_event ev = grpc_completion_queue_next(sk.cq, deadline_in_ns(100 * 1000000LL), NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        if (ev.tag == &t_shutdown)
            break;
        sink_handle(&ev);
    }
    _exit(0);
}

/* ------------------------------------------------------------------------ */
/* Hash loop: the physical limit of the sha256 scenario                     */

static int
run_hash_loop(void)
{
    if (opt.procs == 0 || opt.procs > 1024)
        die("--procs must be 1..1024");
    if (opt.rounds == 0)
        die("--rounds must be at least 1");
    uint8_t *payload = xcalloc(opt.payload, 1);
    for (uint64_t i = 0; i < opt.payload; i++)
        payload[i] = (uint8_t)('a' + i % 26);
    pid_t *pids = xcalloc(opt.procs, sizeof *pids);
    int64_t t0 = now_ns();
    for (uint64_t p = 0; p < opt.procs; p++) {
        pids[p] = fork();
        if (pids[p] == -1)
            die("fork: %s", strerror(errno));
        if (pids[p] == 0) {
            uint8_t d[SHA256_DIGEST_LENGTH], acc = 0;
            EVP_MD *md = opt.hash_api == 1 ? EVP_MD_fetch(NULL, "SHA256", NULL) : NULL;
            EVP_MD_CTX *ctx = opt.hash_api == 1 ? EVP_MD_CTX_new() : NULL;
            if (opt.hash_api == 1 && (md == NULL || ctx == NULL))
                _exit(1);
            for (uint64_t i = p; i < opt.n; i += opt.procs) {
                if (opt.hash_api == 0) {
                    /* exactly the handler's calls */
                    SHA256(payload, opt.payload, d);
                    for (uint64_t r = 1; r < opt.rounds; r++)
                        SHA256(d, sizeof d, d);
                } else if (opt.hash_api == 1) {
                    unsigned int len;
                    EVP_DigestInit_ex(ctx, md, NULL);
                    EVP_DigestUpdate(ctx, payload, opt.payload);
                    EVP_DigestFinal_ex(ctx, d, &len);
                    for (uint64_t r = 1; r < opt.rounds; r++) {
                        EVP_DigestInit_ex(ctx, md, NULL);
                        EVP_DigestUpdate(ctx, d, sizeof d);
                        EVP_DigestFinal_ex(ctx, d, &len);
                    }
                } else {
                    SHA256_CTX c;
                    SHA256_Init(&c);
                    SHA256_Update(&c, payload, opt.payload);
                    SHA256_Final(d, &c);
                    for (uint64_t r = 1; r < opt.rounds; r++) {
                        SHA256_Init(&c);
                        SHA256_Update(&c, d, sizeof d);
                        SHA256_Final(d, &c);
                    }
                }
                acc ^= d[0];
            }
            _exit(acc == 0 ? 0 : 0);
        }
    }
    int64_t limit = t0 + (int64_t)(opt.timeout * 1e9);
    uint64_t left = opt.procs;
    while (left > 0) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid > 0) {
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                die("hash loop: process %ld failed", (long)pid);
            left--;
            continue;
        }
        if (pid == -1 && errno != EINTR)
            die("waitpid: %s", strerror(errno));
        if (now_ns() > limit) {
            for (uint64_t p = 0; p < opt.procs; p++)
                kill(pids[p], SIGKILL);
            die("hash loop: timeout after %.0f s", opt.timeout);
        }
        struct timespec ts = { 0, 200000 };
        nanosleep(&ts, NULL);
    }
    double elapsed = (double)(now_ns() - t0) / 1e9;
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("{\"mode\":\"hash-loop\",\"label\":");
    json_string(stdout, opt.label);
    printf(",\"hash_api\":\"%s\"", opt.hash_api == 0 ? "oneshot" : opt.hash_api == 1 ? "evp" : "lowlevel");
    printf(",\"n\":%" PRIu64 ",\"procs\":%" PRIu64 ",\"rounds\":%" PRIu64
           ",\"payload_bytes\":%" PRIu64 ",\"elapsed_s\":%.6f,\"items_per_s\":%.1f,"
           "\"cpu_s\":%.3f}\n", opt.n, opt.procs, opt.rounds, opt.payload, elapsed,
           (double)opt.n / elapsed, cpu);
    fflush(stdout);
    return 0;
}

int
main(int argc, char **argv)
{
    parse_options(argc, argv);
    if (opt.sink)
        return run_sink();
    if (opt.hash_loop)
        return run_hash_loop();
    signal(SIGPIPE, SIG_IGN);
    return run_load();
}
