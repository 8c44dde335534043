/*
 * status.c: status.listen, HTTP on the loop: /metrics, /status, /healthz; the page
 * (status_page.c) and the known items (status_items.c) hook in here.
 */
#ifndef DS_GRPC_STATUS_H
#define DS_GRPC_STATUS_H

/* Bind status.listen if set; -1: it cannot (logged, told to the master). */
int status_start(void);
/* After a reload: rebind a changed status.listen (new socket first); on
 * failure the old one keeps serving. */
void status_reconfigure(void);
void status_shutdown(void);
/* A reload failed (the master's FILE:LINE:COL message, or why this
 * process could not apply it): shown as the last reload's outcome. */
void status_reload_failed(const char *why);
/* A Prometheus label value into B: backslash, double quote and newline
 * escaped. */
struct evbuffer;
void status_label_value(struct evbuffer *b, const char *s);

#endif
