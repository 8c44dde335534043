#include "ipc/frame.h"

#include <stdio.h>
#include <string.h>

static const char *type_names[IPC_TYPE_MAX] = {
    [IPC_WORKER_ATTACH] = "WORKER_ATTACH",
    [IPC_WORKER_EXITED] = "WORKER_EXITED",
    [IPC_WORKER_RETIRE] = "WORKER_RETIRE",
    [IPC_CONFIG] = "CONFIG",
    [IPC_DRAIN] = "DRAIN",
    [IPC_REOPEN_LOGS] = "REOPEN_LOGS",
    [IPC_READY] = "READY",
    [IPC_KILL_WORKER] = "KILL_WORKER",
    [IPC_SEQ_RESERVE] = "SEQ_RESERVE",
    [IPC_FATAL] = "FATAL",
    [IPC_WORKER_ATTACHED] = "WORKER_ATTACHED",
    [IPC_WORKER_LOST] = "WORKER_LOST",
    [IPC_RELOAD_FAILED] = "RELOAD_FAILED",
    [IPC_DEADLINE] = "DEADLINE",
    [IPC_BIND_NOW] = "BIND_NOW",
    [IPC_ITEM] = "ITEM",
    [IPC_UPDATE] = "UPDATE",
    [IPC_CANCEL] = "CANCEL",
    [IPC_REATTEMPT] = "REATTEMPT",
};

const char *
ipc_type_name(unsigned type)
{
    if (type < IPC_TYPE_MAX && type_names[type] != NULL)
        return type_names[type];
    return "unknown";
}

int
ipc_frame_check(const void *buf, size_t avail, uint32_t max_body,
                struct ipc_header *header, char *err, size_t err_size)
{
    if (avail < IPC_HEADER_SIZE)
        return 0;
    memcpy(header, buf, IPC_HEADER_SIZE);
    if (header->type >= IPC_TYPE_MAX || type_names[header->type] == NULL) {
        snprintf(err, err_size, "frame of unknown type %u", header->type);
        return -1;
    }
    if (header->flags & ~IPC_FLAG_FD) {
        snprintf(err, err_size, "%s frame with unknown flags 0x%x",
                 ipc_type_name(header->type), header->flags);
        return -1;
    }
    if (header->length > max_body) {
        snprintf(err, err_size, "%s frame of %u bytes exceeds the limit of %u",
                 ipc_type_name(header->type), header->length, max_body);
        return -1;
    }
    return avail - IPC_HEADER_SIZE >= header->length;
}
