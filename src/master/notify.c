/*
 * systemd's notify protocol (Type=notify): READY, RELOADING, STOPPING and a
 * STATUS line with the outcome of the last reload. Without NOTIFY_SOCKET,
 * sd_notify() does nothing.
 */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "core/log.h"
#include "master/master.h"

void
notify(const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    int r = sd_notify(0, text);
    if (r < 0)
        log_warn("sd_notify() failed: %d", r);
}

void
notify_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    notify("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
           (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
}
