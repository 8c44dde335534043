/*
 * auth_file.c: the user file of status.auth, as nginx's auth_basic_user_file
 * (htpasswd): one `user:hash` per line (an optional `:comment` after the
 * hash is ignored), blank lines and lines starting with '#' skipped. The
 * hashes are bcrypt ($2b$, $2y$, $2a$) or SHA-512 crypt ($6$), checked with
 * libxcrypt's crypt_rn().
 *
 * Read by the master's config check (-t, start, reload: a bad file is a
 * config error) and by the grpc process, which verifies passwords with it
 * (status_auth.c). Pure: no logging, no global state.
 */
#ifndef DS_CORE_AUTH_FILE_H
#define DS_CORE_AUTH_FILE_H

#include <stddef.h>

#define AUTH_FILE_MAX       (1u << 20)  /* bytes of a user file */
#define AUTH_USER_MAX       255         /* bytes of a user name */
/* The most a hash may cost: a check runs on the grpc process's loop
 * (measured here: bcrypt cost 12 ~200 ms, SHA-512 crypt 1,000,000 rounds
 * ~250 ms). */
#define AUTH_BCRYPT_COST_MAX    12
#define AUTH_SHA512_ROUNDS_MAX  1000000ul

struct auth_user {
    char *name;
    char *hash;
};

/* Made by auth_file_load, freed by auth_file_free (by whoever loaded it). */
struct auth_file {
    struct auth_user *users;
    size_t count;
};

/* Read PATH into *OUT (replaced only on success). 0, or -1 with
 * "PATH:LINE: reason" (or "PATH: reason") in ERR. */
int auth_file_load(const char *path, struct auth_file *out, char *err, size_t err_size);
void auth_file_free(struct auth_file *f);

/* The user named NAME (LEN bytes), or NULL. */
const struct auth_user *auth_file_find(const struct auth_file *f, const char *name, size_t len);

/* NULL if HASH is one we verify (syntax, method, cost), else why not. */
const char *auth_hash_invalid(const char *hash);

/* 1 if PASSWORD (LEN bytes) hashes to HASH, else 0; the comparison takes
 * the same time wherever the bytes differ. */
int auth_password_matches(const char *hash, const char *password, size_t len);

#endif
