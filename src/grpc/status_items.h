/*
 * status_items.c: known items on the status endpoint, as JSON, answered
 * through getItems' path (get_items.c): GET /items/ID, GET /items?state=
 * &kind=&batch=&limit=&page=, GET /batches.
 */
#ifndef DS_GRPC_STATUS_ITEMS_H
#define DS_GRPC_STATUS_ITEMS_H

struct evhttp_request;

/* Is PATH one of these? */
int status_items_serves(const char *path);
/* Answer REQ for PATH (one status_items_serves() took): at once, or later
 * from the loop (cluster mode), bounded by a deadline. */
void status_items_request(struct evhttp_request *req, const char *path);
/* Answer every request still waiting (503), before evhttp is freed. */
void status_items_shutdown(void);

#endif
