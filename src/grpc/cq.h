/*
 * cq.c: the completion queue thread; its events reach the loop.
 */
#ifndef DS_GRPC_CQ_H
#define DS_GRPC_CQ_H

int cq_start(void);
void cq_stop(void);

#endif
