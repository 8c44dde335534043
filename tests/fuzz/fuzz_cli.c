/*
 * Fuzz target: what the user gives the command-line client.
 *
 * The input, as is, goes to:
 *   json_parse(): a parsed value's strings are valid UTF-8, NUL-terminated
 *     at their length; numbers are NUL-terminated literals; an object has
 *     key, value pairs with string keys; json_write_string() of each string
 *     parses back to the same bytes. A refusal says "at column N: ...".
 *     json_write_string() of the raw input always parses back, to the same
 *     bytes when the input is UTF-8.
 *   item_from_json() (a line of submit --json): a refusal has a reason,
 *     NUL-terminated, valid UTF-8, without control characters (it is
 *     printed on the user's terminal); an accepted line used only the item
 *     keys, exactly as spelled: the WorkItem fields of do_something.proto
 *     (its protoc-c descriptor, not item.c's list) and payload_b64; each
 *     of them is taken. item_from_line(): the payload is the line.
 *   base64_decode(): what it accepts re-encodes to the input (padding
 *     aside); base64_encode() of the input decodes back to it.
 * And, as a NUL-terminated copy, to parse_u64(), parse_duration_ms() and
 * cli_parse_state(), each compared with a simple reference.
 *
 * Links json.c, item.c, base64.c and parse.c of src/cli and the contract's
 * protoc-c code (for WorkItem's descriptor), never gRPC.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli/cli.h"
#include "cli/item.h"
#include "com/agrounds/dosomething/v1/do_something.pb-c.h"
#include "cli/json.h"
#include "core/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond)) {                                                \
            fprintf(stderr, "fuzz_cli: %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                             \
            fputc('\n', stderr);                                      \
            abort();                                                  \
        }                                                             \
    } while (0)

/* json_write_string() of S (LEN bytes) into a malloc'ed buffer. */
static char *
write_string(const char *s, size_t len, size_t *out_len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, out_len);
    CHECK(f != NULL, "open_memstream failed");
    json_write_string(f, s, len);
    CHECK(fclose(f) == 0, "fclose of the memstream failed");
    return buf;
}

/* What json_write_string() writes parses back as a string; the same bytes
 * when S is UTF-8. */
static void
check_written(const char *s, size_t len)
{
    char err[256];
    size_t written_len;
    char *written = write_string(s, len, &written_len);
    struct json back;

    CHECK(json_parse(written, written_len, &back, err, sizeof err) == 0,
          "json_write_string() wrote what json_parse() refuses: %s", err);
    CHECK(back.type == JSON_STRING, "json_write_string() wrote %s", json_type_name(back.type));
    if (utf8_valid(s, len))
        CHECK(back.length == len && memcmp(back.text, s, len) == 0,
              "a string written and parsed back changed (%zu bytes, now %zu)", len, back.length);
    json_free(&back);
    free(written);
}

static void
check_value(const struct json *v)
{
    switch (v->type) {
    case JSON_STRING:
        CHECK(v->text != NULL && v->text[v->length] == '\0', "a string is not NUL-terminated");
        CHECK(utf8_valid(v->text, v->length), "a parsed string is not valid UTF-8");
        check_written(v->text, v->length);
        break;
    case JSON_NUMBER:
        CHECK(v->text != NULL && strlen(v->text) == v->length && v->length > 0,
              "a number's literal is not its stated length");
        break;
    case JSON_OBJECT:
        CHECK(v->count % 2 == 0, "an object has %zu items, not pairs", v->count);
        for (size_t i = 0; i < v->count; i += 2)
            CHECK(v->items[i].type == JSON_STRING, "an object's key is %s",
                  json_type_name(v->items[i].type));
        /* fall through */
    case JSON_ARRAY:
        for (size_t i = 0; i < v->count; i++)
            check_value(&v->items[i]);
        break;
    default:
        CHECK(v->text == NULL && v->count == 0, "a literal has text or items");
        break;
    }
}

static void
fuzz_json(const char *text, size_t len)
{
    char err[256];
    struct json v;

    memset(err, 'x', sizeof err);
    if (json_parse(text, len, &v, err, sizeof err) == 0) {
        check_value(&v);
        json_free(&v);
    } else {
        CHECK(memchr(err, '\0', sizeof err) != NULL, "the error is not NUL-terminated");
        CHECK(strncmp(err, "at column ", 10) == 0, "the error does not say where: %s", err);
    }
    check_written(text, len);
}

/* A refusal's reason goes to the user's terminal. */
static int
printable(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        if (*p < 0x20 || *p == 0x7f)
            return 0;
    return utf8_valid(s, strlen(s));
}

/*
 * The keys a line may use, taken from the contract, not from item.c (whose
 * own list a copy here would only repeat, a wrong key included): the fields
 * of the WorkItem message as do_something.proto names them (protoc-c's
 * descriptor of it), and payload_b64, the one key of the CLI's own
 * (payload as base64, for bytes: dosomething(1)).
 */
#define WORK_ITEM_DESCRIPTOR com__agrounds__dosomething__v1__work_item__descriptor
#define CLI_ONLY_KEY         "payload_b64"

static int
same_name(const struct json *key, const char *name)
{
    return key->length == strlen(name) && memcmp(key->text, name, key->length) == 0;
}

static int
item_key(const struct json *key)
{
    const ProtobufCMessageDescriptor *d = &WORK_ITEM_DESCRIPTOR;
    for (unsigned i = 0; i < d->n_fields; i++)
        if (same_name(key, d->fields[i].name))
            return 1;
    return same_name(key, CLI_ONLY_KEY);
}

/* Once: each of those keys is taken (with null, which is as if it were not
 * there): item.c knows every field of the contract. */
static void
check_every_key_taken(void)
{
    static int done;
    const ProtobufCMessageDescriptor *d = &WORK_ITEM_DESCRIPTOR;
    if (done)
        return;
    done = 1;
    CHECK(d->n_fields >= 9, "WorkItem has %u fields in the descriptor", d->n_fields);
    for (unsigned i = 0; i <= d->n_fields; i++) {
        const char *name = i < d->n_fields ? d->fields[i].name : CLI_ONLY_KEY;
        char line[128], err[600];
        struct item it;
        snprintf(line, sizeof line, "{\"%s\": null}", name);
        CHECK(item_from_json(&it, line, strlen(line), err, sizeof err) == 0,
              "item_from_json() refuses the WorkItem key %s: %s", name, err);
        item_free(&it);
    }
}

static void
fuzz_item(const char *line, size_t len)
{
    char err[600];
    struct item it;

    memset(err, 'x', sizeof err);
    if (item_from_json(&it, line, len, err, sizeof err) == -1) {
        CHECK(memchr(err, '\0', sizeof err) != NULL, "the reason is not NUL-terminated");
        CHECK(err[0] != '\0', "a line refused without a reason");
        CHECK(printable(err), "the reason is not printable UTF-8: %s", err);
        CHECK(it.id == NULL && it.payload == NULL && it.params == NULL,
              "a refused line left an item behind");
    } else {
        struct json root;
        CHECK(json_parse(line, len, &root, err, sizeof err) == 0, "accepted what is not JSON");
        CHECK(root.type == JSON_OBJECT, "accepted %s", json_type_name(root.type));
        for (size_t i = 0; i < root.count; i += 2)
            CHECK(item_key(&root.items[i]), "accepted a line with the key \"%s\" (%zu bytes)",
                  root.items[i].text, root.items[i].length);
        json_free(&root);
        for (size_t i = 0; i < it.param_count; i++)
            CHECK(it.params[i].key[0] != '\0' && it.params[i].value != NULL, "a bad param");
        item_free(&it);
    }

    item_from_line(&it, line, len);
    CHECK(it.payload_len == len && memcmp(it.payload, line, len) == 0,
          "a plain line's payload is not the line");
    item_free(&it);
}

/* TEXT without '=' at the end. */
static size_t
unpadded(const char *text, size_t len)
{
    while (len > 0 && text[len - 1] == '=')
        len--;
    return len;
}

static void
fuzz_base64(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    size_t n;
    uint8_t *bytes = base64_decode(text, size, &n);

    if (bytes != NULL) {
        char *again = base64_encode(bytes, n);
        size_t a = unpadded(again, strlen(again)), t = unpadded(text, size);
        CHECK(a == t && memcmp(again, text, a) == 0,
              "base64 accepted \"%.*s\", which encodes back as \"%s\"", (int)size, text, again);
        free(again);
        free(bytes);
    }

    char *encoded = base64_encode(data, size);
    bytes = base64_decode(encoded, strlen(encoded), &n);
    CHECK(bytes != NULL, "base64_decode() refuses what base64_encode() wrote: %s", encoded);
    CHECK(n == size && memcmp(bytes, data, size) == 0, "base64 does not round-trip");
    free(bytes);
    free(encoded);
}

/* The references: the grammar spelled out, the arithmetic in 128 bits. */
static int
reference_u64(const char *text, uint64_t *value)
{
    unsigned __int128 v = 0;

    if (*text == '\0')
        return -1;
    for (; *text != '\0'; text++) {
        if (*text < '0' || *text > '9')
            return -1;
        v = v * 10 + (unsigned)(*text - '0');
        if (v > UINT64_MAX)
            return -1;
    }
    *value = (uint64_t)v;
    return 0;
}

/* DIGITS UNIT, or "0" (else -1); the result at most INT64_MAX / scale / 2
 * units (else -2), as parse_duration_ms() promises: room to add it to a
 * clock. */
static int
reference_duration(const char *text, int64_t *ms)
{
    static const struct { const char *unit; int64_t scale; } units[] = {
        { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 },
    };
    unsigned __int128 n = 0;
    const char *p = text;

    if (strcmp(text, "0") == 0) {
        *ms = 0;
        return 0;
    }
    for (; *p >= '0' && *p <= '9'; p++) {
        n = n * 10 + (unsigned)(*p - '0');
        if (n > UINT64_MAX)
            n = (unsigned __int128)UINT64_MAX + 1;      /* too big, whatever follows */
    }
    if (p == text)
        return -1;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(p, units[i].unit) == 0) {
            if (n > (unsigned __int128)(INT64_MAX / units[i].scale / 2))
                return -2;
            *ms = (int64_t)n * units[i].scale;
            return 0;
        }
    }
    return -1;
}

static void
fuzz_numbers(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';

    uint64_t u = 0, ru = 0;
    int rc = parse_u64(text, &u), rrc = reference_u64(text, &ru);
    CHECK(rc == rrc, "parse_u64(\"%s\") returns %d, the reference %d", text, rc, rrc);
    CHECK(rc == -1 || u == ru, "parse_u64(\"%s\") = %llu, the reference %llu", text,
          (unsigned long long)u, (unsigned long long)ru);

    int64_t ms = 0, rms = 0;
    rc = parse_duration_ms(text, &ms);
    rrc = reference_duration(text, &rms);
    CHECK(rc == rrc, "parse_duration_ms(\"%s\") returns %d, the reference %d", text, rc, rrc);
    CHECK(rc != 0 || (ms == rms && ms >= 0), "parse_duration_ms(\"%s\") = %lld, the reference "
          "%lld", text, (long long)ms, (long long)rms);

    wire_state_value state;
    if (cli_parse_state(text, &state) == 0) {
        char name[32];
        cli_state_name((int)state, name, sizeof name);
        CHECK(strcasecmp(name, text) == 0, "cli_parse_state(\"%s\") gives %s", text, name);
        CHECK(strcmp(name, "STATE_UNSPECIFIED") != 0, "cli_parse_state() took %s", text);
    }
    free(text);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Longer inputs find nothing shorter ones do not, and item_from_json()'s
     * duplicate-key check is quadratic: keep each run fast. */
    if (size > 64 * 1024)
        return 0;
    check_every_key_taken();
    fuzz_json((const char *)data, size);
    fuzz_item((const char *)data, size);
    fuzz_base64(data, size);
    fuzz_numbers(data, size);
    return 0;
}
