/*
 * dosomethingd: the command line, then the master.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/config.h"
#include "core/log.h"
#include "core/process.h"
#include "master/listen_probe.h"
#include "master/master.h"

static void
usage(FILE *out)
{
    fprintf(out,
        "usage: dosomethingd [-c FILE] [-p PREFIX] [-t] [-T] [-s SIGNAL] [-v] [-h]\n"
        "\n"
        "  -c FILE    the config file (default: %s%s)\n"
        "  -p PREFIX  the prefix the default config is found under (default: %s)\n"
        "  -t         check the config and exit; binds nothing\n"
        "  -T         check the config and print it with every default filled in\n"
        "  -s SIGNAL  send SIGNAL to the running master (found through the pid file):\n"
        "             reload (HUP), stop (TERM), quit (QUIT, graceful), reopen (USR1)\n"
        "  -v         print the version\n"
        "  -h         this help\n"
        "\n"
        "Signals: HUP reload, TERM/INT fast stop, QUIT graceful stop, USR1 reopen logs,\n"
        "USR2 binary upgrade (start the new executable, then drain this one),\n"
        "TTIN/TTOU one worker more/less until the next reload.\n",
        DS_CONF_PATH[0] == '/' ? "" : "PREFIX/", DS_CONF_PATH, DS_PREFIX);
}

static int
signal_by_name(const char *name)
{
    if (strcmp(name, "reload") == 0) return SIGHUP;
    if (strcmp(name, "stop") == 0) return SIGTERM;
    if (strcmp(name, "quit") == 0) return SIGQUIT;
    if (strcmp(name, "reopen") == 0) return SIGUSR1;
    return -1;
}

static struct ds_config *
load_or_report(const char *file)
{
    char errors[8192];
    struct ds_config *config = config_load(file, errors, sizeof errors);
    if (config == NULL)
        fprintf(stderr, "%s", errors[0] ? errors : "config: unknown error\n");
    if (config == NULL && errors[0] && errors[strlen(errors) - 1] != '\n')
        fputc('\n', stderr);
    return config;
}

/* Detach: fork, new session, stdin/stdout to /dev/null. stderr too unless
 * it is where the log goes. */
static int
daemonize(const struct ds_config *config)
{
    pid_t pid = fork();
    if (pid == -1) {
        log_syserr("fork() failed");
        return -1;
    }
    if (pid > 0)
        _exit(0);
    if (setsid() == -1)
        log_syswarn("setsid() failed");
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd == -1) {
        log_syserr("open(\"/dev/null\") failed");
        return -1;
    }
    dup2(fd, 0);
    dup2(fd, 1);
    if (strcmp(config->log.file, "stderr") == 0)
        dup2(fd, 2);
    else
        log_redirect_stderr();
    if (fd > 2)
        close(fd);
    return 0;
}

int
main(int argc, char **argv)
{
    const char *file = NULL, *prefix = DS_PREFIX, *signal_name = NULL;
    int test = 0, print = 0, opt;

    /* Where this binary is, before anything can replace it: USR2 runs the
     * file found there then. */
    ssize_t n = readlink("/proc/self/exe", master_executable, sizeof master_executable - 1);
    if (n > 0)
        master_executable[n] = '\0';
    proctitle_init(argc, argv);
    while ((opt = getopt(argc, argv, "c:p:tTs:vh")) != -1) {
        switch (opt) {
        case 'c': file = optarg; break;
        case 'p': prefix = optarg; break;
        case 't': test = 1; break;
        case 'T': test = print = 1; break;
        case 's': signal_name = optarg; break;
        case 'v': printf("dosomethingd %s\n", DS_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return DS_EXIT_FATAL;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "dosomethingd: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return DS_EXIT_FATAL;
    }

    char default_file[4096];
    if (file == NULL) {
        if (DS_CONF_PATH[0] == '/')
            snprintf(default_file, sizeof default_file, "%s", DS_CONF_PATH);
        else
            snprintf(default_file, sizeof default_file, "%s/%s", prefix, DS_CONF_PATH);
        file = default_file;
    }

    int sig = 0;
    if (signal_name != NULL && (sig = signal_by_name(signal_name)) == -1) {
        fprintf(stderr, "dosomethingd: -s takes reload, stop, quit or reopen, not \"%s\"\n",
                signal_name);
        return DS_EXIT_FATAL;
    }

    struct ds_config *config = load_or_report(file);
    if (config == NULL) {
        if (test)
            fprintf(stderr, "dosomethingd: config %s test failed\n", file);
        return DS_EXIT_FATAL;
    }

    if (sig != 0) {
        char err[512];
        pid_t pid = pidfile_read_live(config->pid_file, err, sizeof err);
        int status = DS_EXIT_FAILURE;
        if (pid == -1)
            fprintf(stderr, "dosomethingd: no master runs: %s\n", err);
        else if (kill(pid, sig) == -1)
            fprintf(stderr, "dosomethingd: kill(%ld, %s) failed: %s\n", (long)pid,
                    strsignal(sig), strerror(errno));
        else
            status = DS_EXIT_OK;
        config_free(config);
        return status;
    }

    if (test) {
        int status = DS_EXIT_OK;
        if (!print)
            fprintf(stderr, "dosomethingd: config %s is ok\n", config->path);
        else if (config_print(config, stdout) == -1) {
            /* EILSEQ: a path (the directory's name) that is not UTF-8. */
            fprintf(stderr, "dosomethingd: cannot print the config: %s\n",
                    errno == EILSEQ ? "a value is not UTF-8, which YAML cannot hold"
                                    : strerror(errno));
            status = DS_EXIT_FAILURE;
        }
        config_free(config);
        return status;
    }

    if (log_open(config->log.file, config->log.level) == -1) {
        config_free(config);
        return DS_EXIT_FATAL;
    }
    /* A new master of a binary upgrade binds beside the old one, and is
     * already detached. */
    int upgrading = getenv("DOSOMETHINGD_UPGRADE") != NULL;
    if (!upgrading && listen_probe_config(config)) {
        config_free(config);
        return DS_EXIT_FAILURE;
    }
    if (config->daemon && !upgrading && daemonize(config) == -1) {
        config_free(config);
        return DS_EXIT_FATAL;
    }
    return master_run(config, file);
}
