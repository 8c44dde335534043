/*
 * status_page.c: the status page (GET /, HTML, CSS and JS embedded at
 * build time from status_page.html) and the rates it charts (GET /rates).
 */
#ifndef DS_GRPC_STATUS_PAGE_H
#define DS_GRPC_STATUS_PAGE_H

struct evhttp_request;

/* Is PATH one of these? */
int status_page_serves(const char *path);
void status_page_request(struct evhttp_request *req, const char *path);

#endif
