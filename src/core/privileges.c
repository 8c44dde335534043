/*
 * privileges_drop(): see privileges.h.
 */
#include "core/privileges.h"

#include "core/log.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <unistd.h>

int
privileges_drop(const char *user, char *err, size_t err_size)
{
    if (user == NULL || user[0] == '\0' || geteuid() != 0)
        return 0;

    errno = 0;
    struct passwd *pw = getpwnam(user);
    if (pw == NULL) {
        snprintf(err, err_size, "user \"%s\": %s", user,
                 errno != 0 ? strerror(errno) : "no such user");
        return -1;
    }
    /* getpwnam's buffer may be reused by initgroups: copy what we need. */
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;

    int death_signal = 0;
    prctl(PR_GET_PDEATHSIG, &death_signal);
    pid_t parent = getppid();

    if (initgroups(user, gid) == -1) {
        snprintf(err, err_size, "initgroups(\"%s\", %u) failed: %s", user, (unsigned)gid,
                 strerror(errno));
        return -1;
    }
    if (setresgid(gid, gid, gid) == -1) {
        snprintf(err, err_size, "setresgid(%u) failed: %s", (unsigned)gid, strerror(errno));
        return -1;
    }
    if (setresuid(uid, uid, uid) == -1) {
        snprintf(err, err_size, "setresuid(%u) failed: %s", (unsigned)uid, strerror(errno));
        return -1;
    }
    /* Paranoia, as OpenBSD daemons do: root must be gone for good. */
    if (uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
        snprintf(err, err_size, "still able to become root after dropping to user \"%s\"",
                 user);
        return -1;
    }

    if (death_signal != 0) {
        prctl(PR_SET_PDEATHSIG, death_signal);
        if (getppid() != parent)
            raise(death_signal);        /* the parent died while we were unprotected */
    }
    return 0;
}

/* CAP_NET_BIND_SERVICE into the effective set (it stays in the permitted
 * one while the real and saved uids are root's). Raw capget/capset: libcap
 * may not be installed. */
static int
raise_net_bind_service(void)
{
    struct __user_cap_header_struct head = { .version = _LINUX_CAPABILITY_VERSION_3 };
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    if (syscall(SYS_capget, &head, data) == -1)
        return -1;
    data[CAP_TO_INDEX(CAP_NET_BIND_SERVICE)].effective |= CAP_TO_MASK(CAP_NET_BIND_SERVICE);
    return (int)syscall(SYS_capset, &head, data);
}

/* Between privileges_bind_as() and privileges_bind_done() (one thread). */
static struct {
    int active;                 /* switched to the user's ids */
    int paused;                 /* root's again for a moment: privileges_bind_pause() */
    uid_t uid;
    gid_t gid;
    gid_t saved_gid;            /* the effective gid before */
} bind_ids;

/* Root's effective ids again (the saved ones are root's: it cannot fail;
 * going on as the user would fail later in stranger ways). */
static void
become_root(void)
{
    if ((geteuid() != 0 && seteuid(0) == -1) || setegid(bind_ids.saved_gid) == -1) {
        log_syserr("cannot become root again after binding");
        abort();
    }
}

/* The user's effective ids, CAP_NET_BIND_SERVICE raised: 0, or -1 (logged;
 * root's ids kept). */
static int
become_user(void)
{
    if (setegid(bind_ids.gid) == -1) {
        log_syswarn("setegid(%u) failed; binding as root", (unsigned)bind_ids.gid);
        return -1;
    }
    if (seteuid(bind_ids.uid) == -1) {
        log_syswarn("seteuid(%u) failed; binding as root", (unsigned)bind_ids.uid);
        become_root();
        return -1;
    }
    /* Not fatal: a port of 1024 or more binds without it. */
    if (raise_net_bind_service() == -1)
        log_syswarn("capset(CAP_NET_BIND_SERVICE) failed: a port below 1024 binds as root");
    return 0;
}

int
privileges_bind_as(const char *user)
{
    if (user == NULL || user[0] == '\0' || geteuid() != 0)
        return 0;
    errno = 0;
    struct passwd *pw = getpwnam(user);
    if (pw == NULL || pw->pw_uid == 0) {
        if (pw == NULL)
            log_warn("user \"%s\": %s; binding as root", user,
                     errno != 0 ? strerror(errno) : "no such user");
        return 0;
    }
    bind_ids.uid = pw->pw_uid;
    bind_ids.gid = pw->pw_gid;
    bind_ids.saved_gid = getegid();
    if (become_user() == -1)
        return 0;
    bind_ids.active = 1;
    return 1;
}

void
privileges_bind_done(void)
{
    bind_ids.active = bind_ids.paused = 0;
    /* Back to euid 0: the kernel gives the effective set its permitted
     * capabilities again. */
    become_root();
}

int
privileges_bind_pause(void)
{
    if (!bind_ids.active || bind_ids.paused)
        return 0;
    become_root();
    bind_ids.paused = 1;
    return 1;
}

void
privileges_bind_resume(void)
{
    if (!bind_ids.active || !bind_ids.paused)
        return;
    bind_ids.paused = 0;
    if (become_user() == -1)
        bind_ids.active = 0;    /* root's ids: the bind goes on as root */
}
