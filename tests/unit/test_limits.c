/*
 * memory_limit and cpu_limit in the worker (src/workers/limits.c): the
 * texts exec and the watchdog share; a child process that arms the watch
 * and goes over a limit is SIGKILLed, having written why into the page it
 * shares (as a worker with its master); RLIMIT_DATA refuses an allocation
 * of more than twice the memory limit while armed, and is restored after.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/process.h"
#include "workers/limits.h"

static void
test_texts(void **state)
{
    char buf[64];
    limits_memory_text(64ull << 20, buf, sizeof buf);
    assert_string_equal(buf, "memory limit 64MiB exceeded");
    limits_memory_text(1ull << 30, buf, sizeof buf);
    assert_string_equal(buf, "memory limit 1GiB exceeded");
    limits_memory_text(1500 * 1024, buf, sizeof buf);
    assert_string_equal(buf, "memory limit 1500KiB exceeded");
    limits_cpu_text(2000, buf, sizeof buf);
    assert_string_equal(buf, "cpu limit 2s exceeded");
    limits_cpu_text(1500, buf, sizeof buf);
    assert_string_equal(buf, "cpu limit 1500ms exceeded");

    static const char oom[] = "cannot allocate 200 MiB: Cannot allocate memory";
    assert_true(limits_says_out_of_memory(oom, sizeof oom - 1));
    assert_true(limits_says_out_of_memory("x MemoryError", 13));
    assert_false(limits_says_out_of_memory("MemoryError", 6));   /* only LEN bytes */
    assert_false(limits_says_out_of_memory("file not found", 14));

    struct ds_handler_config h = { .type = DS_HANDLER_SHA256 };
    assert_false(limits_apply_to(&h));
    h.cpu_limit_ms = 1000;
    assert_true(limits_apply_to(&h));
    h.type = DS_HANDLER_EXEC;                   /* exec.c's own */
    assert_false(limits_apply_to(&h));
}

/* Valgrind keeps RLIMIT_DATA to itself: the backstop is not seen there. */
static int
under_valgrind(void)
{
    const char *preload = getenv("LD_PRELOAD");
    return preload != NULL && strstr(preload, "vgpreload") != NULL;
}

/* A child arms H's limits and runs WHAT; returns its wait status, and the
 * page it shared in *PAGE (a copy). */
static int
run_child(const struct ds_handler_config *h, void (*what)(void), struct ds_worker_status *page)
{
    struct ds_worker_status *shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE,
                                           MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(shared != MAP_FAILED);
    memset(shared, 0, sizeof *shared);
    pid_t pid = fork();
    assert_true(pid != -1);
    if (pid == 0) {
        limits_arm(h, shared);
        what();
        struct limits_seen seen;
        limits_disarm(&seen);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    *page = *shared;
    munmap(shared, sizeof *shared);
    return status;
}

static void
spin_forever(void)
{
    volatile unsigned long n = 0;
    for (;;)
        n++;
}

static void
touch_256_mib(void)
{
    for (int i = 0; i < 256; i++) {
        char *p = malloc(1 << 20);
        if (p == NULL)
            _exit(3);           /* refused before the sampler saw it: a slow machine */
        memset(p, 1, 1 << 20);
        /* 1 MiB a millisecond, as a handler that computes as it goes; it
         * also lets valgrind, which runs one thread at a time, run the
         * watcher */
        struct timespec ms = { 0, 1000000 };
        nanosleep(&ms, NULL);
    }
    _exit(4);                   /* never stopped */
}

static void
test_cpu_limit_kills(void **state)
{
    struct ds_handler_config h = { .type = DS_HANDLER_SHA256, .cpu_limit_ms = 1000 };
    struct ds_worker_status page;
    int status = run_child(&h, spin_forever, &page);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_int_equal(page.limit_hit, DS_LIMIT_CPU);
    assert_true(strncmp(page.limit_reason, "cpu limit 1s exceeded: it used ", 31) == 0);
    /* Valgrind runs one thread at a time: a spinning one holds the watcher
     * back for a while, and the stop comes late. */
    uint64_t most = under_valgrind() ? 60000000 : 3000000;
    assert_true(page.limit_cpu_usec >= 1000000 && page.limit_cpu_usec < most);
    assert_true(page.limit_max_rss_kib > 0);
}

static void
test_memory_limit_kills(void **state)
{
    struct ds_handler_config h = { .type = DS_HANDLER_MODULE, .memory_limit = 64ull << 20 };
    struct ds_worker_status page;
    int status = run_child(&h, touch_256_mib, &page);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 3)
        return;                 /* RLIMIT_DATA was first: allowed */
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_int_equal(page.limit_hit, DS_LIMIT_MEMORY);
    assert_true(strncmp(page.limit_reason, "memory limit 64MiB exceeded: it grew by ", 40) == 0);
    assert_true(page.limit_max_rss_kib >= 64 * 1024);
}

/* In this process: an allocation over data + 2 x limit fails while armed,
 * works again once disarmed; a short attempt is neither killed nor marked. */
static void
test_data_backstop_and_disarm(void **state)
{
    struct rlimit before, after;
    assert_int_equal(getrlimit(RLIMIT_DATA, &before), 0);
    struct ds_handler_config h = { .type = DS_HANDLER_MODULE, .memory_limit = 16ull << 20,
                                   .cpu_limit_ms = 60000 };
    struct ds_worker_status page;
    memset(&page, 0, sizeof page);
    limits_arm(&h, &page);
#ifdef __SANITIZE_ADDRESS__
    void *big = NULL;           /* ASan aborts on a refused allocation: not tried */
#else
    void *big = malloc(256ull << 20);
#endif
    struct limits_seen seen;
    limits_disarm(&seen);
    if (!under_valgrind())
        assert_null(big);
    free(big);
    assert_int_equal(getrlimit(RLIMIT_DATA, &after), 0);
    assert_true(after.rlim_cur == before.rlim_cur && after.rlim_max == before.rlim_max);
    big = malloc(64ull << 20);
    assert_non_null(big);
    free(big);
    assert_int_equal(page.limit_hit, DS_LIMIT_NONE);
    assert_true(seen.memory_growth < (16ull << 20));
    /* many short attempts: the watcher neither kills nor keeps state between them */
    for (int i = 0; i < 1000; i++) {
        limits_arm(&h, &page);
        limits_disarm(&seen);
    }
    assert_int_equal(page.limit_hit, DS_LIMIT_NONE);
}

/* The CPU an attempt used is measured at the disarm, when it has a
 * cpu_limit (the worker fails one that ended over it between two samples). */
static void
test_disarm_measures_cpu(void **state)
{
    (void)state;
    struct ds_handler_config h = { .type = DS_HANDLER_MODULE, .cpu_limit_ms = 600000 };
    struct ds_worker_status page;
    memset(&page, 0, sizeof page);
    limits_arm(&h, &page);
    struct timespec t0, t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
    do
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 30000000L);
    struct limits_seen seen;
    limits_disarm(&seen);
    assert_true(seen.cpu_ns >= 30000000u);
    assert_int_equal(page.limit_hit, DS_LIMIT_NONE);
    struct ds_handler_config m = { .type = DS_HANDLER_MODULE, .memory_limit = 64ull << 20 };
    limits_arm(&m, &page);
    limits_disarm(&seen);
    assert_true(seen.cpu_ns == 0);      /* no cpu_limit: not measured */
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_texts),
        cmocka_unit_test(test_cpu_limit_kills),
        cmocka_unit_test(test_memory_limit_kills),
        cmocka_unit_test(test_data_backstop_and_disarm),
        cmocka_unit_test(test_disarm_measures_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
