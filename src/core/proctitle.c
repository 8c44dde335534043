/*
 * Process titles: overwrite argv in place, as nginx and sendmail do, after
 * moving the environment out of the way so the title may use its space too.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "core/alloc.h"
#include "core/process.h"

extern char **environ;

static char *title_start;
static size_t title_size;

void
proctitle_init(int argc, char **argv)
{
    if (argc == 0 || argv[0] == NULL)
        return;
    char *end = argv[0] + strlen(argv[0]) + 1;
    for (int i = 1; i < argc; i++)
        if (argv[i] == end)
            end = argv[i] + strlen(argv[i]) + 1;
    size_t env_count = 0;
    for (char **e = environ; *e != NULL; e++) {
        if (*e == end)
            end = *e + strlen(*e) + 1;
        env_count++;
    }
    char **copy = ds_calloc(env_count + 1, sizeof(char *));
    for (size_t i = 0; i < env_count; i++)
        copy[i] = ds_strdup(environ[i]);
    environ = copy;
    /* argv[1..] still point into the area: keep them valid for getopt. */
    for (int i = 1; i < argc; i++)
        argv[i] = ds_strdup(argv[i]);
    title_start = argv[0];
    title_size = (size_t)(end - argv[0]);
}

void
proctitle_set(const char *fmt, ...)
{
    char title[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(title, sizeof title, fmt, ap);
    va_end(ap);
    prctl(PR_SET_NAME, title + (strncmp(title, "dosomethingd: ", 14) == 0 ? 14 : 0), 0, 0, 0);
    if (title_start == NULL || title_size < 2)
        return;
    memset(title_start, 0, title_size);
    snprintf(title_start, title_size, "%s", title);
}

const char *
process_status_text(int status, char *buf, size_t size)
{
    if (WIFEXITED(status))
        snprintf(buf, size, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, size, "killed by signal %d%s", WTERMSIG(status),
                 WCOREDUMP(status) ? " (core dumped)" : "");
    else
        snprintf(buf, size, "stopped with status 0x%x", status);
    return buf;
}
