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

/* notify.c: systemd's notify protocol; nothing without NOTIFY_SOCKET. */
void notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void notify_reloading(void);

/* The binary this master runs, for a USR2 upgrade (main.c fills it in). */
extern char master_executable[4096];

#endif
