/*
 * Items: from a line, from a JSON line. To the wire: item_wire.c (the
 * only part that needs gRPC).
 */
#include "cli/item.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/json.h"
#include "core/alloc.h"
#include "core/utf8.h"

#define ITEM_KEYS "id, kind, payload, payload_b64, params, batch, timeout_ms, max_attempts, " \
                  "priority, delay_ms"
/* Of a name the user wrote, this many bytes go into a message; escaped
 * (6 bytes a byte at most) with "..." it fits in NAME_BUF. */
#define NAME_SHOWN 64
#define NAME_BUF   (NAME_SHOWN * 6 + 8)

/* The keys ITEM_KEYS names. */
static const char *const item_keys[] = {
    "id", "kind", "payload", "payload_b64", "params", "batch", "timeout_ms", "max_attempts",
    "priority", "delay_ms",
};

/*
 * A name the user wrote (a key), for a message in BUF (NAME_BUF bytes):
 * its first NAME_SHOWN bytes, cut between characters, with '"', '\\' and
 * control characters escaped as in JSON. The message goes to a terminal,
 * and a key may hold control characters or \u0000 (which would also cut
 * it short).
 */
static const char *
name_text(const struct json *name, char *buf, size_t size)
{
    size_t shown = utf8_prefix(name->text, name->length, NAME_SHOWN), n = 0;

    for (size_t i = 0; i < shown && n + 7 < size; i++) {
        unsigned char c = (unsigned char)name->text[i];
        if (c == '"' || c == '\\')
            n += (size_t)snprintf(buf + n, size - n, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            n += (size_t)snprintf(buf + n, size - n, "\\u%04x", c);
        else
            buf[n++] = (char)c;
    }
    buf[n] = '\0';
    if (shown < name->length && n + 4 < size)
        strcpy(buf + n, "...");
    return buf;
}

/* Is KEY one of the item's, exactly (a \u0000 in it makes it none)? */
static int
item_key(const struct json *key)
{
    for (size_t i = 0; i < sizeof item_keys / sizeof item_keys[0]; i++)
        if (key->length == strlen(item_keys[i]) &&
            memcmp(key->text, item_keys[i], key->length) == 0)
            return 1;
    return 0;
}

void
item_from_line(struct item *it, const char *line, size_t len)
{
    memset(it, 0, sizeof *it);
    it->payload = ds_malloc(len ? len : 1);
    memcpy(it->payload, line, len);
    it->payload_len = len;
}

/* A string for a protobuf string field: NUL would cut it short. */
static int
text_value(const struct json *v, const char *key, char **out, char *err, size_t err_size)
{
    if (v->type != JSON_STRING) {
        snprintf(err, err_size, "%s must be a string, got %s", key, json_type_name(v->type));
        return -1;
    }
    if (memchr(v->text, '\0', v->length) != NULL) {
        snprintf(err, err_size, "%s must not contain \\u0000", key);
        return -1;
    }
    *out = ds_strdup(v->text);
    return 0;
}

static int
u32_value(const struct json *v, const char *key, uint32_t *out, char *err, size_t err_size)
{
    uint64_t n;

    if (v->type != JSON_NUMBER || parse_u64(v->text, &n) == -1 || n > UINT32_MAX) {
        snprintf(err, err_size, "%s must be an integer 0..%u", key, (unsigned)UINT32_MAX);
        return -1;
    }
    *out = (uint32_t)n;
    return 0;
}

static int
i32_value(const struct json *v, const char *key, int32_t *out, char *err, size_t err_size)
{
    uint64_t n;
    const char *text = v->type == JSON_NUMBER ? v->text : "";
    int negative = text[0] == '-';

    if (v->type != JSON_NUMBER || parse_u64(text + negative, &n) == -1 ||
        n > (negative ? (uint64_t)INT32_MAX + 1 : (uint64_t)INT32_MAX)) {
        snprintf(err, err_size, "%s must be an integer %d..%d", key, INT32_MIN, INT32_MAX);
        return -1;
    }
    *out = negative ? (int32_t)(-(int64_t)n) : (int32_t)n;
    return 0;
}

/* params: {"name": "value" | number | boolean}; numbers keep their spelling. */
static int
params_value(const struct json *v, struct item *it, char *err, size_t err_size)
{
    if (v->type != JSON_OBJECT) {
        snprintf(err, err_size, "params must be an object, got %s", json_type_name(v->type));
        return -1;
    }
    it->params = ds_calloc(v->count / 2 + 1, sizeof *it->params);
    for (size_t i = 0; i < v->count; i += 2) {
        const struct json *key = &v->items[i], *value = &v->items[i + 1];
        char name[NAME_BUF], path[sizeof name + 8];
        snprintf(path, sizeof path, "params.%s", name_text(key, name, sizeof name));
        if (key->length == 0 || memchr(key->text, '\0', key->length) != NULL) {
            snprintf(err, err_size, "params: a name must be a non-empty string without \\u0000");
            return -1;
        }
        for (size_t j = 0; j < it->param_count; j++) {
            if (strcmp(it->params[j].key, key->text) == 0) {
                snprintf(err, err_size, "%s: given twice", path);
                return -1;
            }
        }
        char *text;
        if (value->type == JSON_TRUE || value->type == JSON_FALSE)
            text = ds_strdup(value->type == JSON_TRUE ? "true" : "false");
        else if (value->type == JSON_NUMBER)
            text = ds_strdup(value->text);
        else if (text_value(value, path, &text, err, err_size) == -1)
            return -1;
        it->params[it->param_count].key = ds_strdup(key->text);
        it->params[it->param_count].value = text;
        it->param_count++;
    }
    return 0;
}

static int
payload_b64_value(const struct json *v, struct item *it, char *err, size_t err_size)
{
    if (v->type != JSON_STRING) {
        snprintf(err, err_size, "payload_b64 must be a string, got %s", json_type_name(v->type));
        return -1;
    }
    it->payload = base64_decode(v->text, v->length, &it->payload_len);
    if (it->payload == NULL) {
        snprintf(err, err_size, "payload_b64 is not base64");
        return -1;
    }
    return 0;
}

static int
apply_key(struct item *it, const char *key, const struct json *v, char *err, size_t err_size)
{
    if (strcmp(key, "id") == 0)
        return text_value(v, key, &it->id, err, err_size);
    if (strcmp(key, "kind") == 0)
        return text_value(v, key, &it->kind, err, err_size);
    if (strcmp(key, "batch") == 0)
        return text_value(v, key, &it->batch, err, err_size);
    if (strcmp(key, "timeout_ms") == 0)
        return u32_value(v, key, &it->timeout_ms, err, err_size);
    if (strcmp(key, "max_attempts") == 0)
        return u32_value(v, key, &it->max_attempts, err, err_size);
    if (strcmp(key, "priority") == 0) {
        it->has_priority = 1;
        return i32_value(v, key, &it->priority, err, err_size);
    }
    if (strcmp(key, "delay_ms") == 0) {
        it->has_delay = 1;
        return u32_value(v, key, &it->delay_ms, err, err_size);
    }
    if (strcmp(key, "params") == 0)
        return params_value(v, it, err, err_size);
    if (strcmp(key, "payload_b64") == 0)
        return payload_b64_value(v, it, err, err_size);
    /* payload: item_from_json() lets no other key through */
    if (v->type != JSON_STRING) {
        snprintf(err, err_size, "payload must be a string (payload_b64 for bytes), got %s",
                 json_type_name(v->type));
        return -1;
    }
    it->payload = ds_malloc(v->length ? v->length : 1);
    memcpy(it->payload, v->text, v->length);
    it->payload_len = v->length;
    return 0;
}

int
item_from_json(struct item *it, const char *line, size_t len, char *err, size_t err_size)
{
    struct json root;
    int rc = 0;

    memset(it, 0, sizeof *it);
    if (json_parse(line, len, &root, err, err_size) == -1)
        return -1;
    if (root.type != JSON_OBJECT) {
        snprintf(err, err_size, "a line must be a JSON object, got %s", json_type_name(root.type));
        json_free(&root);
        return -1;
    }
    for (size_t i = 0; i < root.count && rc == 0; i += 2) {
        /* Known keys only, null or not: a misspelt key is never silently
         * dropped. From here on a key holds no \u0000. */
        if (!item_key(&root.items[i])) {
            char name[NAME_BUF];
            snprintf(err, err_size, "unknown key \"%s\" (there are " ITEM_KEYS ")",
                     name_text(&root.items[i], name, sizeof name));
            rc = -1;
            break;
        }
        const char *key = root.items[i].text;
        for (size_t j = 0; j < i; j += 2) {
            if (strcmp(root.items[j].text, key) == 0) {
                snprintf(err, err_size, "key \"%s\" given twice", key);
                rc = -1;
            }
        }
        if (rc == 0 && (strcmp(key, "payload") == 0 || strcmp(key, "payload_b64") == 0) &&
            it->payload != NULL) {
            snprintf(err, err_size, "give payload or payload_b64, not both");
            rc = -1;
        }
        /* null is the same as leaving the key out */
        if (rc == 0 && root.items[i + 1].type != JSON_NULL)
            rc = apply_key(it, key, &root.items[i + 1], err, err_size);
    }
    json_free(&root);
    if (rc == -1)
        item_free(it);
    return rc;
}

const char *
item_batch(const struct item *it, const struct item_defaults *d)
{
    if (it->batch != NULL)
        return it->batch;
    return d->batch != NULL ? d->batch : "";
}

void
item_free(struct item *it)
{
    free(it->id);
    free(it->kind);
    free(it->payload);
    for (size_t i = 0; i < it->param_count; i++) {
        free(it->params[i].key);
        free(it->params[i].value);
    }
    free(it->params);
    free(it->batch);
    memset(it, 0, sizeof *it);
}
