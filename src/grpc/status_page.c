/*
 * The status page: one self-contained HTML document (its CSS and JS
 * inline; no CDN, nothing fetched but this daemon's own JSON), embedded in
 * the binary by the Makefile from src/grpc/status_page.html. It polls
 * /status and /rates every second: that works through any proxy, holds
 * none of the status port's connections between polls, and reads the
 * same JSON scripts read. The page is read-only.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "grpc/rates.h"
#include "grpc/status_http.h"
#include "grpc/status_page.h"

/* build/gen/status_page_html.c */
extern const unsigned char ds_status_page[];
extern const size_t ds_status_page_len;

int
status_page_serves(const char *path)
{
    return strcmp(path, "/") == 0 || strcmp(path, "/rates") == 0;
}

static void
page(struct evhttp_request *req)
{
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    /* Static: evhttp sends it without a copy. */
    evbuffer_add_reference(b, ds_status_page, ds_status_page_len, NULL, NULL);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Security-Policy", "default-src 'none'; script-src "
                      "'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
                      "img-src data:; base-uri 'none'; form-action 'none'; "
                      "frame-ancestors 'none'");
    evhttp_add_header(h, "Referrer-Policy", "no-referrer");
    status_reply(req, HTTP_OK, "OK", "text/html; charset=utf-8", b);
    evbuffer_free(b);
}

/* after=UNIX: only the seconds after it (the page asks for what is new). */
static void
rates(struct evhttp_request *req)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *query = uri != NULL ? evhttp_uri_get_query(uri) : NULL;
    uint64_t after = 0;
    if (query != NULL && query[0] != '\0') {
        char *end;
        if (strncmp(query, "after=", 6) != 0 || query[6] < '0' || query[6] > '9' ||
            strlen(query + 6) > 12 || (after = strtoull(query + 6, &end, 10), *end != '\0')) {
            status_reply_text(req, HTTP_BADREQUEST, "Bad Request",
                              "/rates takes after=UNIX_SECONDS or nothing");
            return;
        }
    }
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        evhttp_send_error(req, HTTP_INTERNAL, NULL);
        return;
    }
    rates_json(b, after);
    status_reply(req, HTTP_OK, "OK", STATUS_CONTENT_JSON, b);
    evbuffer_free(b);
}

void
status_page_request(struct evhttp_request *req, const char *path)
{
    if (strcmp(path, "/") == 0)
        page(req);
    else
        rates(req);
}
