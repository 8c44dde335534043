/*
 * The master process: supervision, signals, reload. It never calls gRPC.
 */
#ifndef DS_MASTER_MASTER_H
#define DS_MASTER_MASTER_H

#include "core/config.h"

/* Run the master on CONFIG (owned from now on) until it stops. Returns the
 * process exit status. */
int master_run(struct ds_config *config, const char *config_file);

/* pidfile.c */
/* Refuse to start if the pid file names a live master; otherwise write ours.
 * Returns 0 or -1 (logged). */
int pidfile_write(const char *path);
void pidfile_remove(const char *path);
/* The pid the file names if that process is alive, else -1 (reason in err). */
pid_t pidfile_read_live(const char *path, char *err, size_t err_size);

#endif
