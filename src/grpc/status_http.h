/*
 * status_http.c: what every answer of the status endpoint is made of (the
 * reply with its headers, JSON strings), for status.c, status_page.c and
 * status_items.c.
 */
#ifndef DS_GRPC_STATUS_HTTP_H
#define DS_GRPC_STATUS_HTTP_H

struct evbuffer;
struct evhttp_request;

#define STATUS_CONTENT_TEXT "text/plain; charset=utf-8"
#define STATUS_CONTENT_JSON "application/json"

/* BODY (drained; the caller frees it) as REQ's reply, with Content-Type
 * TYPE, its length, and no caching; a HEAD gets the headers only. */
void status_reply(struct evhttp_request *req, int code, const char *reason, const char *type,
                  struct evbuffer *body);
/* A reply of CODE whose body is one line of text (printf FORMAT). */
void status_reply_text(struct evhttp_request *req, int code, const char *reason,
                       const char *format, ...) __attribute__((format(printf, 4, 5)));
/* S as a JSON string: a byte that is not part of a valid UTF-8 sequence
 * becomes U+FFFD (item ids come from clients). */
void status_json_string(struct evbuffer *b, const char *s);

#endif
