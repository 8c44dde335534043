/*
 * The user file of status.auth (auth_file.h).
 */
#include "core/auth_file.h"

#include <crypt.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

static int
b64_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '/';
}

static int
b64_run(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!b64_char(s[i]))
            return 0;
    return 1;
}

/* $2b$NN$ + 22 salt + 31 hash characters. */
static const char *
bcrypt_invalid(const char *h)
{
    if (strlen(h) != 60 || h[6] != '$' || h[4] < '0' || h[4] > '9' || h[5] < '0' || h[5] > '9')
        return "is not a bcrypt hash ($2b$COST$ and 53 characters)";
    int cost = (h[4] - '0') * 10 + (h[5] - '0');
    if (cost < 4 || cost > 31)
        return "has a bcrypt cost outside 04..31";
    if (cost > AUTH_BCRYPT_COST_MAX)
        return "has a bcrypt cost over 12 (each check would hold the grpc process for "
               "more than ~200 ms)";
    if (!b64_run(h + 7, 53))
        return "is not a bcrypt hash (a character outside ./A-Za-z0-9)";
    return NULL;
}

/* $6$[rounds=N$]SALT$ + 86 hash characters; SALT 1..16 characters. */
static const char *
sha512_invalid(const char *h)
{
    const char *p = h + 3;
    if (strncmp(p, "rounds=", 7) == 0) {
        char *end;
        errno = 0;
        unsigned long rounds = strtoul(p + 7, &end, 10);
        if (end == p + 7 || *end != '$' || errno != 0 || p[7] < '0' || p[7] > '9')
            return "has a malformed rounds= in its SHA-512 crypt setting";
        if (rounds > AUTH_SHA512_ROUNDS_MAX)
            return "has more than 1000000 SHA-512 crypt rounds (each check would hold the "
                   "grpc process for more than ~250 ms)";
        p = end + 1;
    }
    const char *dollar = strchr(p, '$');
    if (dollar == NULL || dollar == p || dollar - p > 16)
        return "is not a SHA-512 crypt hash ($6$SALT$ with a salt of 1..16 characters)";
    for (const char *s = p; s < dollar; s++)
        if (*s == ':' || *s == '\n' || (unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e)
            return "is not a SHA-512 crypt hash (a bad character in its salt)";
    if (strlen(dollar + 1) != 86 || !b64_run(dollar + 1, 86))
        return "is not a SHA-512 crypt hash (86 characters of ./A-Za-z0-9 after the salt)";
    return NULL;
}

const char *
auth_hash_invalid(const char *hash)
{
    const char *why;
    if (strncmp(hash, "$2b$", 4) == 0 || strncmp(hash, "$2y$", 4) == 0 ||
        strncmp(hash, "$2a$", 4) == 0)
        why = bcrypt_invalid(hash);
    else if (strncmp(hash, "$6$", 3) == 0)
        why = sha512_invalid(hash);
    else
        return "is not a supported hash: use bcrypt ($2b$, $2y$, $2a$: htpasswd -B) or "
               "SHA-512 crypt ($6$: openssl passwd -6)";
    if (why == NULL && crypt_checksalt(hash) != CRYPT_SALT_OK)
        why = "uses a method this libxcrypt does not offer";
    return why;
}

static void
say(char *err, size_t size, const char *path, size_t line, const char *fmt, const char *a,
    const char *b)
{
    char what[300];
    snprintf(what, sizeof what, fmt, a, b);
    if (line > 0)
        snprintf(err, size, "%s:%zu: %s", path, line, what);
    else
        snprintf(err, size, "%s: %s", path, what);
}

void
auth_file_free(struct auth_file *f)
{
    for (size_t i = 0; i < f->count; i++) {
        free(f->users[i].name);
        free(f->users[i].hash);
    }
    free(f->users);
    f->users = NULL;
    f->count = 0;
}

const struct auth_user *
auth_file_find(const struct auth_file *f, const char *name, size_t len)
{
    for (size_t i = 0; i < f->count; i++)
        if (strlen(f->users[i].name) == len && memcmp(f->users[i].name, name, len) == 0)
            return &f->users[i];
    return NULL;
}

/* One line (NUL-terminated, no newline) of PATH into F. */
static int
take_line(struct auth_file *f, char *s, const char *path, size_t line, size_t *lines,
          char *err, size_t err_size)
{
    size_t len = strlen(s);
    if (len > 0 && s[len - 1] == '\r')
        s[--len] = '\0';
    const char *p = s;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0' || *p == '#')
        return 0;
    for (const char *c = s; *c; c++)
        if ((unsigned char)*c < 0x20 && *c != '\t') {
            say(err, err_size, path, line, "has a control character", NULL, NULL);
            return -1;
        }
    char *colon = strchr(s, ':');
    if (colon == NULL) {
        say(err, err_size, path, line, "is not user:hash", NULL, NULL);
        return -1;
    }
    *colon = '\0';
    char *hash = colon + 1, *end = strchr(hash, ':');
    if (end != NULL)
        *end = '\0';    /* htpasswd's optional comment */
    if (s[0] == '\0') {
        say(err, err_size, path, line, "has an empty user name", NULL, NULL);
        return -1;
    }
    if (strlen(s) > AUTH_USER_MAX) {
        say(err, err_size, path, line, "has a user name longer than 255 bytes", NULL, NULL);
        return -1;
    }
    const char *why = auth_hash_invalid(hash);
    if (why != NULL) {
        say(err, err_size, path, line, "the hash of user \"%.64s\" %s", s, why);
        return -1;
    }
    for (size_t i = 0; i < f->count; i++)
        if (strcmp(f->users[i].name, s) == 0) {
            char first[32];
            snprintf(first, sizeof first, "%zu", lines[i]);
            say(err, err_size, path, line, "user \"%.64s\" again (first on line %s)", s, first);
            return -1;
        }
    f->users = ds_realloc(f->users, (f->count + 1) * sizeof *f->users);
    f->users[f->count].name = ds_strdup(s);
    f->users[f->count].hash = ds_strdup(hash);
    lines[f->count] = line;
    f->count++;
    return 0;
}

int
auth_file_load(const char *path, struct auth_file *out, char *err, size_t err_size)
{
    FILE *in = fopen(path, "re");
    if (in == NULL) {
        say(err, err_size, path, 0, "cannot open: %s", strerror(errno), NULL);
        return -1;
    }
    char *text = ds_malloc(AUTH_FILE_MAX + 2);
    size_t len = fread(text, 1, AUTH_FILE_MAX + 1, in);
    int failed = ferror(in);
    fclose(in);
    if (failed) {
        say(err, err_size, path, 0, "cannot read it", NULL, NULL);
        free(text);
        return -1;
    }
    if (len > AUTH_FILE_MAX) {
        say(err, err_size, path, 0, "is larger than 1 MiB", NULL, NULL);
        free(text);
        return -1;
    }
    text[len] = '\0';
    if (memchr(text, '\0', len) != NULL) {
        say(err, err_size, path, 0, "has a NUL byte: not a user file", NULL, NULL);
        free(text);
        return -1;
    }
    struct auth_file f = { NULL, 0 };
    size_t *lines = ds_malloc((len / 4 + 2) * sizeof *lines);  /* a user line has >= 4 bytes */
    size_t line = 0;
    int rc = 0;
    for (char *s = text; rc == 0 && *s != '\0';) {
        char *nl = strchr(s, '\n');
        if (nl != NULL)
            *nl = '\0';
        rc = take_line(&f, s, path, ++line, lines, err, err_size);
        s = nl != NULL ? nl + 1 : s + strlen(s);
    }
    free(lines);
    free(text);
    if (rc == 0 && f.count == 0) {
        say(err, err_size, path, 0, "names no user (lines user:hash)", NULL, NULL);
        rc = -1;
    }
    if (rc == -1) {
        auth_file_free(&f);
        return -1;
    }
    auth_file_free(out);
    *out = f;
    return 0;
}

int
auth_password_matches(const char *hash, const char *password, size_t len)
{
    /* crypt_rn takes a NUL-terminated phrase: one with a NUL inside never
     * matches (it could only match its prefix). */
    if (memchr(password, '\0', len) != NULL || len > 1024)
        return 0;
    static struct crypt_data data;
    char phrase[1025];
    memcpy(phrase, password, len);
    phrase[len] = '\0';
    const char *got = crypt_rn(phrase, hash, &data, (int)sizeof data);
    explicit_bzero(phrase, sizeof phrase);
    if (got == NULL)
        return 0;
    size_t n = strlen(hash);
    unsigned diff = strlen(got) != n;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(got[i] ^ hash[i]);
    explicit_bzero(&data, sizeof data);
    return diff == 0;
}
