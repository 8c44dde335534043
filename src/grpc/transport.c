/*
 * What the grpc process sees of gRPC's HTTP/2 transport, which the C API
 * does not show: gRPC's own log lines, and the memory it leaves behind.
 *
 * gRPC tells the application nothing about connections. It does log a
 * GOAWAY it sends with an error (too_many_pings, a broken frame), at debug
 * severity whether or not tracing is on, and a keepalive ping that went
 * unanswered: those lines are logged here as notices, gRPC's errors as
 * errors, the rest at debug. A graceful GOAWAY (grpc.max_connection_age, a
 * reload, a stop) is not logged by gRPC, so not here either.
 *
 * Memory: an HTTP/2 rapid reset flood makes gRPC 1.51 hold a call (~12 KB)
 * per reset stream until the flood's read burst ends; glibc then keeps the
 * freed heap (hundreds of MiB) in its arenas for good. A timer gives it
 * back to the system once the process holds more free heap than it uses.
 * It looks only while no item is held: mallinfo2() walks every free chunk,
 * which in a large heap fragmented by retained finals took ~20 ms of this
 * loop (a latency spike every interval under load), and while items flow
 * the freed heap is reused anyway.
 */
#include <malloc.h>
#include <stdio.h>
#include <string.h>

#include <event2/event.h>
#include <grpc/support/log.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/utf8.h"
#include "grpc/grpc_process.h"
#include "grpc/server.h"
#include "grpc/store.h"
#include "grpc/transport.h"

#define TRIM_INTERVAL_MS 5000
#define TRIM_MIN_FREE    (16u << 20)    /* free heap worth giving back */

static struct event *trim_timer;

/* Called on gRPC's threads: log_write() is one write() per line. */
static void
on_grpc_log(gpr_log_func_args *args)
{
    char text[1024];
    utf8_escape(text, sizeof text, args->message);   /* a peer may have put bytes in it */
    if (strncmp(args->message, "Failed accept4", 14) == 0)
        server_accept_failed();
    if (strstr(args->message, "Sending goaway") != NULL ||
        strstr(args->message, "Keepalive watchdog fired") != NULL) {
        log_notice("gRPC: %s", text);
        return;
    }
    switch (args->severity) {
    case GPR_LOG_SEVERITY_ERROR:
        log_error("gRPC %s:%d: %s", args->file, args->line, text);
        break;
    default:
        log_debug("gRPC %s:%d: %s", args->file, args->line, text);
        break;
    }
}

static void
on_trim_timer(evutil_socket_t fd, short what, void *arg)
{
    if (store_count() == 0) {
        struct mallinfo2 m = mallinfo2();
        if (m.fordblks >= TRIM_MIN_FREE && m.fordblks > m.uordblks) {
            malloc_trim(0);
            log_info("gave %zu MiB of free heap back to the system (%zu MiB in use)",
                     m.fordblks >> 20, m.uordblks >> 20);
        }
    }
    struct timeval tv = clock_timeval_ms(TRIM_INTERVAL_MS);
    evtimer_add(trim_timer, &tv);
}

void
transport_start(void)
{
    gpr_set_log_function(on_grpc_log);
    /* The GOAWAY lines are debug ones; the level check is ours. */
    gpr_set_log_verbosity(GPR_LOG_SEVERITY_DEBUG);
    trim_timer = evtimer_new(gp.base, on_trim_timer, NULL);
    struct timeval tv = clock_timeval_ms(TRIM_INTERVAL_MS);
    evtimer_add(trim_timer, &tv);
}

void
transport_stop(void)
{
    if (trim_timer != NULL) {
        event_free(trim_timer);
        trim_timer = NULL;
    }
}
