/*
 * transport.c: gRPC's log lines in ours (GOAWAYs sent, dead keepalives),
 * and the free heap a rapid reset flood leaves, given back.
 */
#ifndef DS_GRPC_TRANSPORT_H
#define DS_GRPC_TRANSPORT_H

/* Before grpc_init(), with gp.base set. */
void transport_start(void);
void transport_stop(void);

#endif
