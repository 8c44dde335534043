/*
 * handover.c: the binary upgrade's handover of waiting items to the new
 * instance, over gRPC (a doSomething call to its first grpc.listen).
 */
#ifndef DS_GRPC_HANDOVER_H
#define DS_GRPC_HANDOVER_H

/* Start handing the waiting items to the new instance (idempotent). */
void handover_start(void);
/* Stop: give back what is in flight once its call ends (cancelled now). */
void handover_cancel(void);
/* Is a handover call in flight, or does the handover wait for items that
 * may still come? The process waits for it before exiting, and keeps its
 * workers. */
int handover_active(void);
/* Items may have come, or stopped coming: a handover waiting for them
 * sends those waiting now, or ends once nothing more can come. */
void handover_poll(void);
/* The process ends (the drain is done, or a stop cuts it): a handover
 * still waiting to retry a failed call is over; its summary line is logged
 * (once, whichever way it ended). */
void handover_end(void);
/* At exit, after the last call: release the channel. */
void handover_shutdown(void);

#endif
