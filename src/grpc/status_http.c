#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "core/utf8.h"
#include "grpc/status_http.h"

void
status_reply(struct evhttp_request *req, int code, const char *reason, const char *type,
             struct evbuffer *body)
{
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    char length[32];
    snprintf(length, sizeof length, "%zu", evbuffer_get_length(body));
    evhttp_add_header(headers, "Content-Type", type);
    evhttp_add_header(headers, "Content-Length", length);
    evhttp_add_header(headers, "Cache-Control", "no-store");
    evhttp_add_header(headers, "X-Content-Type-Options", "nosniff");
    /* evhttp would send a body with HEAD: the length says what GET sends. */
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD)
        evbuffer_drain(body, evbuffer_get_length(body));
    evhttp_send_reply(req, code, reason, body);
}

void
status_reply_text(struct evhttp_request *req, int code, const char *reason,
                  const char *format, ...)
{
    struct evbuffer *body = evbuffer_new();
    if (body == NULL) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    va_list ap;
    va_start(ap, format);
    evbuffer_add_vprintf(body, format, ap);
    va_end(ap);
    evbuffer_add(body, "\n", 1);
    status_reply(req, code, reason, STATUS_CONTENT_TEXT, body);
    evbuffer_free(body);
}

void
status_json_string(struct evbuffer *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t left = strlen(s);
    evbuffer_add(b, "\"", 1);
    while (left > 0) {
        size_t n = utf8_decode((const char *)p, left, NULL);
        if (n == 0)
            evbuffer_add(b, "\\ufffd", 6);
        else if (*p == '"' || *p == '\\')
            evbuffer_add_printf(b, "\\%c", *p);
        else if (*p == '\n')
            evbuffer_add(b, "\\n", 2);
        else if (*p < 0x20 || *p == 0x7f)
            evbuffer_add_printf(b, "\\u%04x", *p);
        else
            evbuffer_add(b, p, n);
        left -= n == 0 ? 1 : n;
        p += n == 0 ? 1 : n;
    }
    evbuffer_add(b, "\"", 1);
}
