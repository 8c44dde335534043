/*
 * privileges_drop(): see privileges.h.
 */
#include "core/privileges.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
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
