/*
 * dosomething.yaml -> struct ds_config.
 *
 * libyaml's event API feeds a small tree of nodes (each with its line and
 * column) built in a scratch pool; tables of keys then walk that tree into a
 * fresh config whose every byte lives in config->pool. Errors are collected,
 * not fatal, so one `dosomethingd -t` shows all of them.
 */
#include "core/config.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <yaml.h>

#include "core/auth_file.h"
#include "core/descriptors.h"
#include "dosomething/handler.h"

/* Limits against hostile or broken files. */
#define CONFIG_FILE_MAX      (1024 * 1024)
#define CONFIG_SCALAR_MAX    (64 * 1024)
#define CONFIG_DEPTH_MAX     32

#define CONFIG_LISTEN_MAX    16
#define CONFIG_KINDS_MAX     256
#define CONFIG_NAME_MAX      64
#define CONFIG_KEY_PATH_MAX  256

#define MS_SECOND            1000ull
#define MS_MINUTE            (60 * MS_SECOND)
#define MS_HOUR              (60 * MS_MINUTE)

enum node_type {
    NODE_SCALAR,
    NODE_MAPPING,
    NODE_SEQUENCE,
};

/* One YAML node. A mapping's children alternate key, value, key, value. */
struct node {
    enum node_type type;
    size_t line;                  /* 1-based, of the node's first character */
    size_t column;
    size_t order;                 /* document order */
    int plain;                    /* a plain scalar: may be a null */
    struct node *duplicate_of;    /* a key: the first key of that name */
    char *value;                  /* a scalar: NUL-terminated, no NUL inside */
    size_t count;
    struct node *first;
    struct node *last;
    struct node *next;
};

/* Where a key's value was, for errors found after the walk. */
struct key_position {
    char *path;
    const struct node *node;
    struct key_position *next;
};

struct loader {
    const char *file;             /* as the caller named it, for messages */
    struct ds_config *config;
    struct ds_pool *scratch;      /* the tree and positions: freed after loading */
    char *errors;
    size_t errors_size;
    size_t errors_len;
    int errors_full;
    unsigned error_count;
    size_t node_count;
    struct key_position *positions;
    unsigned handler_types;       /* builtin/exec/module keys in the current handler */
};

enum parse_result {
    PARSE_OK,
    PARSE_SYNTAX,
    PARSE_NO_UNIT,
    PARSE_OVERFLOW,
};

enum value_type {
    VALUE_NONE,                   /* shown_as left out: the rule's print function */
    VALUE_BOOL,
    VALUE_UINT,
    VALUE_SIZE,
    VALUE_DURATION,
    VALUE_ENUM,
    VALUE_STRING,
    VALUE_PATH,
    VALUE_OFF_PATH,               /* off (NULL) or a path */
    VALUE_OFF_DURATION,           /* off (0) or a duration of at least min (>= 1) */
    VALUE_OFF_SIZE,               /* off (0) or a size of at least min (>= 1) */
    VALUE_SECTION,
    VALUE_CUSTOM,
};

struct printer;

/*
 * One key of a mapping: where its value goes (offset and width into the
 * struct being filled), how it is read, and how -T prints it back. min and
 * max bound numbers, sizes and durations (in ms).
 *
 * A key of any type but VALUE_CUSTOM prints by its type, from offset. A
 * VALUE_CUSTOM key prints as shown_as says (from offset, or its section),
 * or else through print; one with neither makes config_print() fail, so the
 * round-trip tests catch a key added without a way to print it.
 */
struct key_rule {
    const char *name;
    enum value_type type;
    size_t offset;
    size_t width;
    uint64_t min;
    uint64_t max;
    const char *const *names;     /* VALUE_ENUM: NULL-terminated, index = value */
    const struct key_rule *section;
    void (*parse)(struct loader *ld, struct node *value, const char *path, void *base);
    int required;
    enum value_type shown_as;     /* VALUE_CUSTOM: printed as this type */
    void (*print)(struct printer *p, const struct key_rule *rule, const void *base);
};

#define CONFIG_FIELD(f)                                                 \
    .offset = offsetof(struct ds_config, f),                            \
    .width = sizeof(((struct ds_config *)0)->f)
#define HANDLER_FIELD(f)                                                \
    .offset = offsetof(struct ds_handler_config, f),                    \
    .width = sizeof(((struct ds_handler_config *)0)->f)

static const char *const level_names[] = {
    "error", "warn", "notice", "info", "debug", NULL
};
static const char *const on_full_names[] = { "block", "reject", NULL };
static const char *const affinity_names[] = { "off", "auto", NULL };
/* Index = enum ds_handler_type. */
static const char *const builtin_names[] = { "echo", "sha256", "sleep", NULL };

static const struct {
    const char *kind;
    enum ds_handler_type type;
    uint64_t timeout_ms;
} default_handlers[] = {
    { "echo", DS_HANDLER_ECHO, 0 },
    { "sha256", DS_HANDLER_SHA256, 30 * MS_SECOND },
    { "sleep", DS_HANDLER_SLEEP, 0 },
};


/* Errors. */

static void
append_error(struct loader *ld, char *line)
{
    size_t len, room;
    char *p;

    ld->error_count++;
    if (ld->errors == NULL || ld->errors_size == 0 || ld->errors_full)
        return;

    /* Bytes from the file must not forge extra lines in a log. */
    for (p = line; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';

    len = strlen(line);
    room = ld->errors_size - 1 - ld->errors_len;
    if (ld->errors_len > 0) {
        if (room == 0) {
            ld->errors_full = 1;
            return;
        }
        ld->errors[ld->errors_len++] = '\n';
        room--;
    }
    if (len > room) {
        len = room;
        ld->errors_full = 1;
    }
    memcpy(ld->errors + ld->errors_len, line, len);
    ld->errors_len += len;
    ld->errors[ld->errors_len] = '\0';
}

static size_t
advance(size_t used, int n, size_t size)
{
    if (n < 0)
        return used;
    used += (size_t)n;
    return used < size ? used : size - 1;
}

/* "FILE:LINE:COL: path: reason", or "FILE: path: reason" when line is 0. */
static void
verror_at(struct loader *ld, size_t line, size_t column, const char *path,
          const char *fmt, va_list ap)
{
    char buf[1024];
    size_t n;

    if (line > 0)
        n = advance(0, snprintf(buf, sizeof buf, "%s:%zu:%zu: ", ld->file, line, column),
                    sizeof buf);
    else
        n = advance(0, snprintf(buf, sizeof buf, "%s: ", ld->file), sizeof buf);
    if (path != NULL && path[0] != '\0')
        n = advance(n, snprintf(buf + n, sizeof buf - n, "%s: ", path), sizeof buf);
    vsnprintf(buf + n, sizeof buf - n, fmt, ap);
    append_error(ld, buf);
}

static void error_at(struct loader *ld, const struct node *node, const char *path,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void error_mark(struct loader *ld, size_t line, size_t column,
                       const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void
error_at(struct loader *ld, const struct node *node, const char *path, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    verror_at(ld, node != NULL ? node->line : 0, node != NULL ? node->column : 0,
              path, fmt, ap);
    va_end(ap);
}

static void
error_mark(struct loader *ld, size_t line, size_t column, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    verror_at(ld, line, column, NULL, fmt, ap);
    va_end(ap);
}

/* A value quoted in a message: long ones are cut. */
static const char *
excerpt(const char *s, char *buf, size_t size)
{
    size_t len = strlen(s);

    if (len < size)
        return s;
    snprintf(buf, size, "%.*s...", (int)(size - 4), s);
    return buf;
}


/* Paths. */

static char *
pool_join(struct ds_pool *pool, const char *a, const char *b, const char *c)
{
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *s = pool_alloc(pool, la + lb + lc + 1);

    memcpy(s, a, la);
    memcpy(s + la, b, lb);
    memcpy(s + la + lb, c, lc);
    return s;
}

/* The config's path and directory, absolute, whether or not the file exists. */
static int
set_paths(struct loader *ld, const char *file)
{
    struct ds_config *c = ld->config;
    const char *slash = strrchr(file, '/');
    const char *base = slash != NULL ? slash + 1 : file;
    char cwd[PATH_MAX], real[PATH_MAX];
    char *dir;

    if (slash == NULL)
        dir = pool_strdup(c->pool, ".");
    else if (slash == file)
        dir = pool_strdup(c->pool, "/");
    else
        dir = pool_strndup(c->pool, file, (size_t)(slash - file));

    if (realpath(dir, real) != NULL) {
        dir = pool_strdup(c->pool, real);
    } else if (dir[0] != '/') {
        if (getcwd(cwd, sizeof cwd) == NULL) {
            error_mark(ld, 0, 0, "cannot get the current directory: %s", strerror(errno));
            return -1;
        }
        dir = pool_join(c->pool, cwd, "/", dir);
    }
    c->dir = dir;
    c->path = pool_join(c->pool, dir, strcmp(dir, "/") == 0 ? "" : "/", base);
    return 0;
}

static char *
resolve_path(struct loader *ld, const char *text)
{
    const char *dir = ld->config->dir;

    if (text[0] == '/')
        return pool_strdup(ld->config->pool, text);
    while (text[0] == '.' && text[1] == '/') {
        text += 2;
        while (*text == '/')
            text++;
    }
    if (*text == '\0')
        return pool_strdup(ld->config->pool, dir);
    return pool_join(ld->config->pool, dir, strcmp(dir, "/") == 0 ? "" : "/", text);
}


/* Numbers, sizes, durations. */

static enum parse_result
parse_digits(const char **text, uint64_t *value)
{
    const char *p = *text;
    uint64_t v = 0;

    if (*p < '0' || *p > '9')
        return PARSE_SYNTAX;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return PARSE_OVERFLOW;
        v = v * 10 + d;
    }
    *text = p;
    *value = v;
    return PARSE_OK;
}

static int
parse_uint(const char *text, uint64_t *value)
{
    return parse_digits(&text, value) == PARSE_OK && *text == '\0' ? 0 : -1;
}

/* NUMBER then UNIT, from a table; spaces between the two are allowed. */
static enum parse_result
parse_with_unit(const char *text, const char *const *units, const uint64_t *scales,
                int unit_required, uint64_t *value)
{
    const char *p = text;
    enum parse_result r;
    uint64_t n;
    size_t i;

    r = parse_digits(&p, &n);
    if (r != PARSE_OK)
        return r;
    while (*p == ' ')
        p++;
    if (*p == '\0') {
        if (unit_required)
            return p == text ? PARSE_SYNTAX : PARSE_NO_UNIT;
        *value = n;
        return PARSE_OK;
    }
    for (i = 0; units[i] != NULL; i++) {
        if (strcmp(p, units[i]) == 0) {
            if (n > UINT64_MAX / scales[i])
                return PARSE_OVERFLOW;
            *value = n * scales[i];
            return PARSE_OK;
        }
    }
    return PARSE_SYNTAX;
}

static const char *const duration_units[] = { "ms", "s", "m", "h", "d", NULL };
static const uint64_t duration_scales[] = { 1, MS_SECOND, MS_MINUTE, MS_HOUR, 24 * MS_HOUR };
static const char *const size_units[] = { "KiB", "MiB", "GiB", "TiB", NULL };
static const uint64_t size_scales[] = { 1ull << 10, 1ull << 20, 1ull << 30, 1ull << 40 };
#define SIZE_UNITS (sizeof size_scales / sizeof size_scales[0])

static enum parse_result
parse_duration(const char *text, uint64_t *ms)
{
    return parse_with_unit(text, duration_units, duration_scales, 1, ms);
}

static enum parse_result
parse_size(const char *text, uint64_t *bytes)
{
    return parse_with_unit(text, size_units, size_scales, 0, bytes);
}

int
config_parse_duration_ms(const char *text, uint64_t *ms)
{
    return parse_duration(text, ms) == PARSE_OK ? 0 : -1;
}

int
config_parse_size(const char *text, uint64_t *bytes)
{
    return parse_size(text, bytes) == PARSE_OK ? 0 : -1;
}

/* The largest unit that is exact: 30s, 100ms, 1h. */
static const char *
format_duration(uint64_t ms, char *buf, size_t size)
{
    if (ms == 0)
        snprintf(buf, size, "0s");
    else if (ms % MS_HOUR == 0)
        snprintf(buf, size, "%lluh", (unsigned long long)(ms / MS_HOUR));
    else if (ms % MS_MINUTE == 0)
        snprintf(buf, size, "%llum", (unsigned long long)(ms / MS_MINUTE));
    else if (ms % MS_SECOND == 0)
        snprintf(buf, size, "%llus", (unsigned long long)(ms / MS_SECOND));
    else
        snprintf(buf, size, "%llums", (unsigned long long)ms);
    return buf;
}

static const char *
format_size(uint64_t bytes, char *buf, size_t size)
{
    int i;

    for (i = (int)SIZE_UNITS - 1; i >= 0; i--) {
        if (bytes != 0 && bytes % size_scales[i] == 0) {
            snprintf(buf, size, "%llu%s", (unsigned long long)(bytes / size_scales[i]),
                     size_units[i]);
            return buf;
        }
    }
    snprintf(buf, size, "%llu", (unsigned long long)bytes);
    return buf;
}

static void
store_uint(void *field, size_t width, uint64_t v)
{
    uint8_t u8 = (uint8_t)v;
    uint16_t u16 = (uint16_t)v;
    uint32_t u32 = (uint32_t)v;

    switch (width) {
    case 1: memcpy(field, &u8, 1); break;
    case 2: memcpy(field, &u16, 2); break;
    case 4: memcpy(field, &u32, 4); break;
    default: memcpy(field, &v, 8); break;
    }
}


static uint64_t
load_uint(const void *field, size_t width)
{
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t v;

    switch (width) {
    case 1: memcpy(&u8, field, 1); return u8;
    case 2: memcpy(&u16, field, 2); return u16;
    case 4: memcpy(&u32, field, 4); return u32;
    default: memcpy(&v, field, 8); return v;
    }
}


/* Printing: YAML through libyaml's emitter, for -T. */

/* One config_print() call. The first failure sticks: later emits do
 * nothing, and error keeps its errno. */
struct printer {
    yaml_emitter_t emitter;
    FILE *out;
    int failed;
    int error;                    /* errno of the first failure */
};

static int
printer_write(void *data, unsigned char *buffer, size_t size)
{
    struct printer *p = data;

    errno = 0;
    if (fwrite(buffer, 1, size, p->out) != size) {
        if (!p->failed)
            p->error = errno != 0 ? errno : EIO;
        p->failed = 1;
        return 0;
    }
    return 1;
}

static void
printer_fail(struct printer *p, int error)
{
    if (!p->failed)
        p->error = error;
    p->failed = 1;
}

/* Takes EVENT whatever happens (the emitter frees it). */
static void
emit(struct printer *p, yaml_event_t *event)
{
    if (p->failed) {
        yaml_event_delete(event);
        return;
    }
    if (!yaml_emitter_emit(&p->emitter, event))
        printer_fail(p, p->emitter.error == YAML_MEMORY_ERROR ? ENOMEM : EIO);
}

static void
emit_scalar(struct printer *p, const char *value, yaml_scalar_style_t style)
{
    yaml_event_t event;

    if (p->failed)
        return;
    /* Fails on a string that is not UTF-8 (a directory's name, say): YAML
     * cannot say it, and -T must not print what does not load back. */
    if (!yaml_scalar_event_initialize(&event, NULL, NULL, (yaml_char_t *)value,
                                      (int)strlen(value), 1, 1, style)) {
        printer_fail(p, EILSEQ);
        return;
    }
    emit(p, &event);
}

/* A key, an enum name, a number, a size, a duration, on or off. */
static void
emit_plain(struct printer *p, const char *value)
{
    emit_scalar(p, value, YAML_PLAIN_SCALAR_STYLE);
}

/* Strings from the file or the system, always double-quoted, escaped where
 * YAML needs it. */
static void
emit_string(struct printer *p, const char *value)
{
    emit_scalar(p, value, YAML_DOUBLE_QUOTED_SCALAR_STYLE);
}

static void
emit_uint(struct printer *p, uint64_t value)
{
    char buf[32];

    snprintf(buf, sizeof buf, "%llu", (unsigned long long)value);
    emit_plain(p, buf);
}

static void
emit_mapping_start(struct printer *p)
{
    yaml_event_t event;

    if (!p->failed) {
        yaml_mapping_start_event_initialize(&event, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE);
        emit(p, &event);
    }
}

static void
emit_mapping_end(struct printer *p)
{
    yaml_event_t event;

    if (!p->failed) {
        yaml_mapping_end_event_initialize(&event);
        emit(p, &event);
    }
}

/* VALUES on one line, each by EMIT_ONE: [a, b, c], [] when empty. */
static void
emit_list(struct printer *p, char *const *values, size_t count,
          void (*emit_one)(struct printer *p, const char *value))
{
    yaml_event_t event;
    size_t i;

    if (p->failed)
        return;
    yaml_sequence_start_event_initialize(&event, NULL, NULL, 1, YAML_FLOW_SEQUENCE_STYLE);
    emit(p, &event);
    for (i = 0; i < count; i++)
        emit_one(p, values[i]);
    if (!p->failed) {
        yaml_sequence_end_event_initialize(&event);
        emit(p, &event);
    }
}

/* Quoted strings. */
static void
emit_string_list(struct printer *p, char *const *values, size_t count)
{
    emit_list(p, values, count, emit_string);
}

/* Plain (numbers). */
static void
emit_int_list(struct printer *p, char *const *values, size_t count)
{
    emit_list(p, values, count, emit_plain);
}

/* A stream of one document, whose root comes between start and end. */
static void
emit_document_start(struct printer *p)
{
    yaml_event_t event;

    if (!p->failed) {
        yaml_stream_start_event_initialize(&event, YAML_UTF8_ENCODING);
        emit(p, &event);
    }
    if (!p->failed) {
        yaml_document_start_event_initialize(&event, NULL, NULL, NULL, 1);
        emit(p, &event);
    }
}

static void
emit_document_end(struct printer *p)
{
    yaml_event_t event;

    if (!p->failed) {
        yaml_document_end_event_initialize(&event, 1);
        emit(p, &event);
    }
    if (!p->failed) {
        yaml_stream_end_event_initialize(&event);
        emit(p, &event);
    }
}

static void
printer_init(struct printer *p, FILE *out)
{
    memset(p, 0, sizeof *p);
    p->out = out;
    if (!yaml_emitter_initialize(&p->emitter)) {
        printer_fail(p, ENOMEM);
        return;
    }
    yaml_emitter_set_output(&p->emitter, printer_write, p);
    yaml_emitter_set_encoding(&p->emitter, YAML_UTF8_ENCODING);
    yaml_emitter_set_unicode(&p->emitter, 1);
    yaml_emitter_set_indent(&p->emitter, 2);
    yaml_emitter_set_width(&p->emitter, -1);       /* never fold a long path */
}

/* 0, or -1 with errno set. */
static int
printer_finish(struct printer *p)
{
    if (!p->failed && !yaml_emitter_flush(&p->emitter))
        printer_fail(p, EIO);
    yaml_emitter_delete(&p->emitter);
    if (p->failed)
        errno = p->error;
    return p->failed ? -1 : 0;
}

/* The tree. */

static struct node *
new_node(struct loader *ld, enum node_type type, const yaml_event_t *event)
{
    struct node *n = pool_alloc(ld->scratch, sizeof *n);

    n->type = type;
    n->line = event->start_mark.line + 1;
    n->column = event->start_mark.column + 1;
    n->order = ld->node_count++;
    return n;
}

static void
append_child(struct node *parent, struct node *child)
{
    if (parent->last == NULL)
        parent->first = child;
    else
        parent->last->next = child;
    parent->last = child;
    parent->count++;
}

/* libyaml counts from 0 and gives reader errors as byte offsets. */
static void
offset_position(const char *text, size_t len, size_t offset, size_t *line, size_t *column)
{
    size_t i, start = 0;

    *line = 1;
    if (offset > len)
        offset = len;
    for (i = 0; i < offset; i++) {
        if (text[i] == '\n') {
            (*line)++;
            start = i + 1;
        }
    }
    *column = offset - start + 1;
}

static void
syntax_error(struct loader *ld, const yaml_parser_t *parser, const char *text, size_t len)
{
    const char *problem = parser->problem != NULL ? parser->problem : "unknown problem";
    size_t line, column;

    switch (parser->error) {
    case YAML_MEMORY_ERROR:
        error_mark(ld, 0, 0, "out of memory while parsing");
        return;
    case YAML_READER_ERROR:
        offset_position(text, len, parser->problem_offset, &line, &column);
        if (parser->problem_value != -1)
            error_mark(ld, line, column, "syntax error: %s (#x%X)", problem,
                       (unsigned)parser->problem_value);
        else
            error_mark(ld, line, column, "syntax error: %s", problem);
        return;
    default:
        line = parser->problem_mark.line + 1;
        column = parser->problem_mark.column + 1;
        if (parser->context != NULL)
            error_mark(ld, line, column, "syntax error: %s (%s at line %zu, column %zu)",
                       problem, parser->context, parser->context_mark.line + 1,
                       parser->context_mark.column + 1);
        else
            error_mark(ld, line, column, "syntax error: %s", problem);
        return;
    }
}

/*
 * Build the tree of TEXT's single document; *root is NULL for an empty
 * stream. Stops at the first error: past a syntax error or a refused
 * construct there is nothing sound left to check.
 */
static int
parse_tree(struct loader *ld, const char *text, size_t len, struct node **root)
{
    struct node *stack[CONFIG_DEPTH_MAX];
    yaml_parser_t parser;
    yaml_event_t event;
    size_t depth = 0;
    int documents = 0, done = 0, rc = 0;
    struct node *n;
    unsigned char *anchor, *tag;
    size_t line, column;

    *root = NULL;
    if (!yaml_parser_initialize(&parser)) {
        error_mark(ld, 0, 0, "out of memory while parsing");
        return -1;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);

    while (!done) {
        if (!yaml_parser_parse(&parser, &event)) {
            syntax_error(ld, &parser, text, len);
            rc = -1;
            break;
        }
        n = NULL;
        anchor = tag = NULL;
        line = event.start_mark.line + 1;
        column = event.start_mark.column + 1;

        switch (event.type) {
        case YAML_STREAM_END_EVENT:
            done = 1;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++documents > 1) {
                error_mark(ld, line, column, "multiple documents are not supported");
                rc = -1;
            }
            break;
        case YAML_ALIAS_EVENT:
            error_mark(ld, line, column, "anchors and aliases are not supported");
            rc = -1;
            break;
        case YAML_SCALAR_EVENT:
            anchor = event.data.scalar.anchor;
            tag = event.data.scalar.tag;
            if (event.data.scalar.length > CONFIG_SCALAR_MAX) {
                error_mark(ld, line, column, "value too long (more than %d KiB)",
                           CONFIG_SCALAR_MAX / 1024);
                rc = -1;
                break;
            }
            if (memchr(event.data.scalar.value, '\0', event.data.scalar.length) != NULL) {
                error_mark(ld, line, column, "a value contains a NUL character");
                rc = -1;
                break;
            }
            n = new_node(ld, NODE_SCALAR, &event);
            n->plain = event.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            n->value = pool_strndup(ld->scratch, (const char *)event.data.scalar.value,
                                    event.data.scalar.length);
            break;
        case YAML_MAPPING_START_EVENT:
            anchor = event.data.mapping_start.anchor;
            tag = event.data.mapping_start.tag;
            n = new_node(ld, NODE_MAPPING, &event);
            break;
        case YAML_SEQUENCE_START_EVENT:
            anchor = event.data.sequence_start.anchor;
            tag = event.data.sequence_start.tag;
            n = new_node(ld, NODE_SEQUENCE, &event);
            break;
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT:
            depth--;
            break;
        default:
            break;
        }

        if (rc == 0 && anchor != NULL) {
            error_mark(ld, line, column, "anchors and aliases are not supported");
            rc = -1;
        } else if (rc == 0 && tag != NULL) {
            error_mark(ld, line, column, "tags are not supported");
            rc = -1;
        } else if (rc == 0 && n != NULL) {
            if (depth == 0)
                *root = n;
            else
                append_child(stack[depth - 1], n);
            if (n->type != NODE_SCALAR) {
                if (depth == CONFIG_DEPTH_MAX) {
                    error_mark(ld, line, column, "nesting too deep (more than %d levels)",
                               CONFIG_DEPTH_MAX);
                    rc = -1;
                } else {
                    stack[depth++] = n;
                }
            }
        }
        yaml_event_delete(&event);
        if (rc == -1)
            break;
    }
    yaml_parser_delete(&parser);
    return rc;
}


/* Reading nodes. */

static int
is_null(const struct node *n)
{
    if (n->type != NODE_SCALAR || !n->plain)
        return 0;
    return n->value[0] == '\0' || strcmp(n->value, "~") == 0
           || strcmp(n->value, "null") == 0 || strcmp(n->value, "Null") == 0
           || strcmp(n->value, "NULL") == 0;
}

static const char *
node_kind(const struct node *n)
{
    switch (n->type) {
    case NODE_MAPPING: return "a mapping";
    case NODE_SEQUENCE: return "a list";
    default: return "a scalar";
    }
}

/* Key paths for messages: cutting a hostile 64 KiB key short is fine. */
static void format_key(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
format_key(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
}

static void
join_key(char *buf, size_t size, const char *path, const char *key)
{
    if (path[0] == '\0')
        format_key(buf, size, "%s", key);
    else
        format_key(buf, size, "%s.%s", path, key);
}

static void
record_position(struct loader *ld, const char *path, const struct node *node)
{
    struct key_position *p = pool_alloc(ld->scratch, sizeof *p);

    p->path = pool_strdup(ld->scratch, path);
    p->node = node;
    p->next = ld->positions;
    ld->positions = p;
}

static const struct node *
find_position(const struct loader *ld, const char *path)
{
    const struct key_position *p;

    for (p = ld->positions; p != NULL; p = p->next)
        if (strcmp(p->path, path) == 0)
            return p->node;
    return NULL;
}

/* A single value: not a mapping, not a list, not missing. */
static const char *
scalar(struct loader *ld, const struct node *n, const char *path)
{
    if (n->type != NODE_SCALAR) {
        error_at(ld, n, path, "must be a scalar, got %s", node_kind(n));
        return NULL;
    }
    if (is_null(n)) {
        error_at(ld, n, path, "missing value");
        return NULL;
    }
    return n->value;
}

static int
get_bool(struct loader *ld, const struct node *n, const char *path, int *out)
{
    static const char *const yes[] = { "on", "true", "yes" };
    static const char *const no[] = { "off", "false", "no" };
    const char *s = scalar(ld, n, path);
    char buf[48];
    size_t i;

    if (s == NULL)
        return -1;
    for (i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    error_at(ld, n, path, "must be on or off, got %s", excerpt(s, buf, sizeof buf));
    return -1;
}

static int
get_uint(struct loader *ld, const struct node *n, const char *path, uint64_t min,
         uint64_t max, uint64_t *out)
{
    const char *s = scalar(ld, n, path);
    char buf[48];
    uint64_t v;

    if (s == NULL)
        return -1;
    if (parse_uint(s, &v) == 0 && v >= min && v <= max) {
        *out = v;
        return 0;
    }
    if (max == UINT64_MAX)
        error_at(ld, n, path, "must be an integer >= %llu, got %s",
                 (unsigned long long)min, excerpt(s, buf, sizeof buf));
    else
        error_at(ld, n, path, "must be an integer %llu..%llu, got %s",
                 (unsigned long long)min, (unsigned long long)max,
                 excerpt(s, buf, sizeof buf));
    return -1;
}

static int
get_duration(struct loader *ld, const struct node *n, const char *path, uint64_t min,
             uint64_t max, uint64_t *out)
{
    const char *s = scalar(ld, n, path);
    char buf[48], lo[32], hi[32];
    uint64_t v = 0;

    if (s == NULL)
        return -1;
    switch (parse_duration(s, &v)) {
    case PARSE_OK:
        if (v >= min && v <= max) {
            *out = v;
            return 0;
        }
        break;
    case PARSE_NO_UNIT:
        error_at(ld, n, path, "needs a unit: ms, s, m, h or d, got %s",
                 excerpt(s, buf, sizeof buf));
        return -1;
    case PARSE_SYNTAX:
        error_at(ld, n, path, "must be a duration such as 500ms, 30s, 5m, 1h or 7d, got %s",
                 excerpt(s, buf, sizeof buf));
        return -1;
    case PARSE_OVERFLOW:
        break;
    }
    if (max == UINT64_MAX)
        error_at(ld, n, path, "too large, got %s", excerpt(s, buf, sizeof buf));
    else
        error_at(ld, n, path, "must be %s..%s, got %s", format_duration(min, lo, sizeof lo),
                 format_duration(max, hi, sizeof hi), excerpt(s, buf, sizeof buf));
    return -1;
}

static int
get_size(struct loader *ld, const struct node *n, const char *path, uint64_t min,
         uint64_t max, uint64_t *out)
{
    const char *s = scalar(ld, n, path);
    char buf[48], lo[32], hi[32];
    uint64_t v = 0;

    if (s == NULL)
        return -1;
    switch (parse_size(s, &v)) {
    case PARSE_OK:
        if (v >= min && v <= max) {
            *out = v;
            return 0;
        }
        break;
    case PARSE_SYNTAX:
    case PARSE_NO_UNIT:
        error_at(ld, n, path, "must be a size in bytes or with KiB, MiB, GiB or TiB, got %s",
                 excerpt(s, buf, sizeof buf));
        return -1;
    case PARSE_OVERFLOW:
        break;
    }
    error_at(ld, n, path, "must be %s..%s, got %s", format_size(min, lo, sizeof lo),
             format_size(max, hi, sizeof hi), excerpt(s, buf, sizeof buf));
    return -1;
}

/* "a, b or c" */
static const char *
format_names(const char *const *names, char *buf, size_t size)
{
    size_t i, n = 0, count = 0;

    while (names[count] != NULL)
        count++;
    buf[0] = '\0';
    for (i = 0; i < count; i++) {
        const char *sep = i == 0 ? "" : i == count - 1 ? " or " : ", ";
        n = advance(n, snprintf(buf + n, size - n, "%s%s", sep, names[i]), size);
    }
    return buf;
}

static int
get_enum(struct loader *ld, const struct node *n, const char *path,
         const char *const *names, uint64_t *out)
{
    const char *s = scalar(ld, n, path);
    char buf[48], list[128];
    uint64_t i;

    if (s == NULL)
        return -1;
    for (i = 0; names[i] != NULL; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    error_at(ld, n, path, "must be %s, got %s", format_names(names, list, sizeof list),
             excerpt(s, buf, sizeof buf));
    return -1;
}

static int
get_path(struct loader *ld, const struct node *n, const char *path, char **out)
{
    const char *s = scalar(ld, n, path);
    char *resolved;

    if (s == NULL)
        return -1;
    if (s[0] == '\0') {
        error_at(ld, n, path, "must be a path, got an empty string");
        return -1;
    }
    resolved = resolve_path(ld, s);
    if (strlen(resolved) >= PATH_MAX) {
        error_at(ld, n, path, "path too long");
        return -1;
    }
    *out = resolved;
    return 0;
}

static int
is_off(const struct node *n)
{
    return n->type == NODE_SCALAR && strcmp(n->value, "off") == 0;
}

/* 1..64 characters of [A-Za-z0-9_.-]: kind and cluster names. */
static int
valid_name(const char *s)
{
    size_t len = strlen(s);

    if (len == 0 || len > CONFIG_NAME_MAX)
        return 0;
    for (; *s != '\0'; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9')
              || *s == '_' || *s == '.' || *s == '-'))
            return 0;
    }
    return 1;
}

static int
valid_env_name(const char *s)
{
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_'))
        return 0;
    for (s++; *s != '\0'; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9')
              || *s == '_'))
            return 0;
    }
    return 1;
}

static int
compare_keys(const void *a, const void *b)
{
    const struct node *x = *(struct node *const *)a;
    const struct node *y = *(struct node *const *)b;
    int c = strcmp(x->value, y->value);

    if (c != 0)
        return c;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Sorting, not pairwise comparing: a hostile file may hold 100k keys. */
static void
mark_duplicates(struct loader *ld, struct node *map)
{
    struct node **keys, *k;
    size_t n = 0, i, first = 0;

    if (map->count < 4)
        return;
    keys = pool_alloc(ld->scratch, map->count / 2 * sizeof *keys);
    for (k = map->first; k != NULL; k = k->next->next)
        if (k->type == NODE_SCALAR)
            keys[n++] = k;
    qsort(keys, n, sizeof *keys, compare_keys);
    for (i = 1; i < n; i++) {
        if (strcmp(keys[first]->value, keys[i]->value) == 0)
            keys[i]->duplicate_of = keys[first];
        else
            first = i;
    }
}

/*
 * Iterate over a mapping's pairs, reporting non-scalar and duplicate keys.
 * Returns the next usable key after *key (NULL at the end); its value is
 * key->next and sub holds its path.
 */
static struct node *
next_key(struct loader *ld, struct node *key, const char *path, char *sub, size_t size)
{
    for (; key != NULL; key = key->next->next) {
        if (key->type != NODE_SCALAR) {
            error_at(ld, key, path, "keys must be scalars, got %s", node_kind(key));
            continue;
        }
        join_key(sub, size, path, key->value);
        if (key->duplicate_of != NULL) {
            error_at(ld, key, sub, "duplicate key (first at line %zu)", key->duplicate_of->line);
            continue;
        }
        return key;
    }
    return NULL;
}

static void walk_mapping(struct loader *ld, struct node *map, const char *path,
                         const struct key_rule *rules, void *base);

static void
apply_rule(struct loader *ld, const struct key_rule *rule, struct node *value,
           const char *path, void *base)
{
    void *field = (char *)base + rule->offset;
    uint64_t v;
    int b;

    switch (rule->type) {
    case VALUE_BOOL:
        if (get_bool(ld, value, path, &b) == 0)
            store_uint(field, rule->width, (uint64_t)b);
        break;
    case VALUE_UINT:
        if (get_uint(ld, value, path, rule->min, rule->max, &v) == 0)
            store_uint(field, rule->width, v);
        break;
    case VALUE_SIZE:
        if (get_size(ld, value, path, rule->min, rule->max, &v) == 0)
            store_uint(field, rule->width, v);
        break;
    case VALUE_DURATION:
        if (get_duration(ld, value, path, rule->min, rule->max, &v) == 0)
            store_uint(field, rule->width, v);
        break;
    case VALUE_ENUM:
        if (get_enum(ld, value, path, rule->names, &v) == 0)
            store_uint(field, rule->width, v);
        break;
    case VALUE_STRING: {
        const char *s = scalar(ld, value, path);
        if (s != NULL)
            *(char **)field = pool_strdup(ld->config->pool, s);
        break;
    }
    case VALUE_PATH:
        get_path(ld, value, path, (char **)field);
        break;
    case VALUE_OFF_PATH:
        if (is_off(value))
            *(char **)field = NULL;
        else
            get_path(ld, value, path, (char **)field);
        break;
    case VALUE_OFF_DURATION:
        if (is_off(value))
            store_uint(field, rule->width, 0);
        else if (get_duration(ld, value, path, rule->min, rule->max, &v) == 0)
            store_uint(field, rule->width, v);
        break;
    case VALUE_OFF_SIZE:
        if (is_off(value))
            store_uint(field, rule->width, 0);
        else if (get_size(ld, value, path, rule->min, rule->max, &v) == 0)
            store_uint(field, rule->width, v);
        break;
    case VALUE_SECTION:
        walk_mapping(ld, value, path, rule->section, base);
        break;
    case VALUE_CUSTOM:
        rule->parse(ld, value, path, base);
        break;
    case VALUE_NONE:              /* only ever a shown_as */
        break;
    }
}

/* A mapping whose keys are RULES; a null value is an empty mapping. */
static void
walk_mapping(struct loader *ld, struct node *map, const char *path,
             const struct key_rule *rules, void *base)
{
    char sub[CONFIG_KEY_PATH_MAX];
    const struct key_rule *rule;
    unsigned long seen = 0;
    struct node *key;
    size_t i;

    if (!is_null(map)) {
        if (map->type != NODE_MAPPING) {
            error_at(ld, map, path, "must be a mapping, got %s", node_kind(map));
            return;
        }
        mark_duplicates(ld, map);
        for (key = next_key(ld, map->first, path, sub, sizeof sub); key != NULL;
             key = next_key(ld, key->next->next, path, sub, sizeof sub)) {
            for (rule = rules; rule->name != NULL; rule++)
                if (strcmp(rule->name, key->value) == 0)
                    break;
            if (rule->name == NULL) {
                error_at(ld, key, sub, "unknown key");
                continue;
            }
            seen |= 1ul << (rule - rules);
            record_position(ld, sub, key->next);
            apply_rule(ld, rule, key->next, sub, base);
        }
    }
    for (i = 0; rules[i].name != NULL; i++)
        if (rules[i].required && !(seen & (1ul << i)))
            error_at(ld, map, path, "%s is required", rules[i].name);
}


static void print_mapping(struct printer *p, const struct key_rule *rules, const void *base);

/*
 * RULE's key and its value in BASE, read back as apply_rule() stored it and
 * written as a user would write it (30s, 64MiB, off). A string or path that
 * is NULL was never set and is left out.
 */
static void
print_rule(struct printer *p, const struct key_rule *rule, const void *base)
{
    const void *field = (const char *)base + rule->offset;
    enum value_type type = rule->type == VALUE_CUSTOM ? rule->shown_as : rule->type;
    const char *s = NULL;
    char buf[32];
    uint64_t v = 0;

    if (type == VALUE_NONE && rule->print != NULL) {
        rule->print(p, rule, base);
        return;
    }
    if (type == VALUE_STRING || type == VALUE_PATH || type == VALUE_OFF_PATH)
        s = *(char *const *)field;
    else if (type != VALUE_SECTION && type != VALUE_NONE && type != VALUE_CUSTOM)
        v = load_uint(field, rule->width);
    if (s == NULL && (type == VALUE_STRING || type == VALUE_PATH))
        return;

    emit_plain(p, rule->name);
    switch (type) {
    case VALUE_BOOL:
        emit_plain(p, v ? "on" : "off");
        break;
    case VALUE_UINT:
        emit_uint(p, v);
        break;
    case VALUE_SIZE:
        emit_plain(p, format_size(v, buf, sizeof buf));
        break;
    case VALUE_DURATION:
        emit_plain(p, format_duration(v, buf, sizeof buf));
        break;
    case VALUE_OFF_DURATION:
        emit_plain(p, v == 0 ? "off" : format_duration(v, buf, sizeof buf));
        break;
    case VALUE_OFF_SIZE:
        emit_plain(p, v == 0 ? "off" : format_size(v, buf, sizeof buf));
        break;
    case VALUE_ENUM:
        emit_plain(p, rule->names[v]);
        break;
    case VALUE_STRING:
    case VALUE_PATH:
        emit_string(p, s);
        break;
    case VALUE_OFF_PATH:
        if (s == NULL)
            emit_plain(p, "off");
        else
            emit_string(p, s);
        break;
    case VALUE_SECTION:
        print_mapping(p, rule->section, base);
        break;
    case VALUE_CUSTOM:
    case VALUE_NONE:
        /* A key with no way to print it: see struct key_rule. */
        printer_fail(p, EINVAL);
        break;
    }
}

/* A mapping of RULES' keys, in the tables' order. */
static void
print_mapping(struct printer *p, const struct key_rule *rules, const void *base)
{
    const struct key_rule *rule;

    emit_mapping_start(p);
    for (rule = rules; rule->name != NULL; rule++)
        print_rule(p, rule, base);
    emit_mapping_end(p);
}


/* Keys that need more than a table entry. */

static uint32_t
cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    if (n < 1)
        return 1;
    return n > DS_WORKERS_MAX ? DS_WORKERS_MAX : (uint32_t)n;
}

static void
parse_log_file(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;

    if (value->type == NODE_SCALAR && strcmp(value->value, "stderr") == 0)
        c->log.file = pool_strdup(c->pool, "stderr");
    else
        get_path(ld, value, path, &c->log.file);
}

static void
parse_workers_count(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;
    const char *s = scalar(ld, value, path);
    char buf[48];
    uint64_t v;

    if (s == NULL)
        return;
    if (strcmp(s, "auto") == 0) {
        c->workers.count = cpu_count();
        c->workers.count_auto = 1;
        return;
    }
    if (parse_uint(s, &v) == -1 || v < 1 || v > DS_WORKERS_MAX) {
        error_at(ld, value, path, "must be auto or 1..%d, got %s", DS_WORKERS_MAX,
                 excerpt(s, buf, sizeof buf));
        return;
    }
    c->workers.count = (uint32_t)v;
    c->workers.count_auto = 0;
}

static void
print_workers_count(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_config *c = base;

    emit_plain(p, rule->name);
    if (c->workers.count_auto)
        emit_plain(p, "auto");
    else
        emit_uint(p, c->workers.count);
}

static void
parse_workers_nice(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;
    const char *s = scalar(ld, value, path);
    int negative = 0;
    char buf[48];
    uint64_t v;

    if (s == NULL)
        return;
    if (s[0] == '-' || s[0] == '+')
        negative = s[0] == '-';
    if (parse_uint(s + (s[0] == '-' || s[0] == '+'), &v) == -1
        || (negative && v > 20) || (!negative && v > 19)) {
        error_at(ld, value, path, "must be an integer -20..19, got %s",
                 excerpt(s, buf, sizeof buf));
        return;
    }
    c->workers.nice = negative ? -(int)v : (int)v;
}

static void
print_workers_nice(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_config *c = base;
    char buf[16];

    snprintf(buf, sizeof buf, "%d", c->workers.nice);
    emit_plain(p, rule->name);
    emit_plain(p, buf);
}

/* `inherit` is the default; it exists so that -T can print it. */
static void
parse_core_dumps(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;
    int b;

    if (value->type == NODE_SCALAR && strcmp(value->value, "inherit") == 0)
        c->workers.core_dumps = -1;
    else if (get_bool(ld, value, path, &b) == 0)
        c->workers.core_dumps = b;
}

static void
print_core_dumps(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_config *c = base;

    emit_plain(p, rule->name);
    emit_plain(p, c->workers.core_dumps == -1 ? "inherit" : c->workers.core_dumps ? "on" : "off");
}

/* "host:port", "[v6]:port", or (when allow_unix) "unix:PATH" made absolute. */
static char *
listen_address(struct loader *ld, const struct node *n, const char *path, int allow_unix)
{
    const char *s = scalar(ld, n, path), *host, *port, *end, *p;
    char buf[80], addr[INET6_ADDRSTRLEN];
    struct in6_addr in6;
    size_t host_len;
    uint64_t v;

    if (s == NULL)
        return NULL;
    if (strncmp(s, "unix:", 5) == 0 && !allow_unix) {
        error_at(ld, n, path, "must be host:port or [IPv6]:port, got %s",
                 excerpt(s, buf, sizeof buf));
        return NULL;
    }
    if (strncmp(s, "unix:", 5) == 0) {
        char *abs;
        if (s[5] == '\0') {
            error_at(ld, n, path, "unix: needs a socket path");
            return NULL;
        }
        abs = resolve_path(ld, s + 5);
        if (strlen(abs) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            error_at(ld, n, path, "socket path too long (at most %zu bytes), got %s",
                     sizeof(((struct sockaddr_un *)0)->sun_path) - 1,
                     excerpt(abs, buf, sizeof buf));
            return NULL;
        }
        return pool_join(ld->config->pool, "unix:", abs, "");
    }
    if (s[0] == '[') {
        end = strchr(s, ']');
        if (end == NULL || end[1] != ':') {
            error_at(ld, n, path, "must be [IPv6]:port, got %s", excerpt(s, buf, sizeof buf));
            return NULL;
        }
        host_len = (size_t)(end - s - 1);
        if (host_len == 0 || host_len >= sizeof addr) {
            error_at(ld, n, path, "not an IPv6 address: %s", excerpt(s, buf, sizeof buf));
            return NULL;
        }
        memcpy(addr, s + 1, host_len);
        addr[host_len] = '\0';
        if (inet_pton(AF_INET6, addr, &in6) != 1) {
            error_at(ld, n, path, "not an IPv6 address: %s", excerpt(addr, buf, sizeof buf));
            return NULL;
        }
        port = end + 2;
    } else {
        end = strrchr(s, ':');
        if (end == NULL) {
            error_at(ld, n, path, "must be %s, got %s",
                     allow_unix ? "host:port, [IPv6]:port or unix:/path"
                                : "host:port or [IPv6]:port", excerpt(s, buf, sizeof buf));
            return NULL;
        }
        host = s;
        host_len = (size_t)(end - s);
        if (memchr(host, ':', host_len) != NULL) {
            error_at(ld, n, path, "an IPv6 address needs brackets, as in [::1]:8080, got %s",
                     excerpt(s, buf, sizeof buf));
            return NULL;
        }
        for (p = host; p < end; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
                  || (*p >= '0' && *p <= '9') || *p == '.' || *p == '-' || *p == '_'))
                break;
        if (host_len == 0 || host_len > 253 || p < end) {
            error_at(ld, n, path, "bad host in %s", excerpt(s, buf, sizeof buf));
            return NULL;
        }
        port = end + 1;
    }
    if (parse_uint(port, &v) == -1 || v < 1 || v > 65535) {
        error_at(ld, n, path, "port must be 1..65535, got %s", excerpt(port, buf, sizeof buf));
        return NULL;
    }
    return pool_strdup(ld->config->pool, s);
}

static const char *const method_names[DS_METHOD_COUNT] = {
    "doSomething", "getUpdates", "getItems", "cancel", "retry",
};

const char *
config_method_name(unsigned index)
{
    return index < DS_METHOD_COUNT ? method_names[index] : "?";
}

/* A listen entry's `methods: [name, ...]`: the mask, or 0 (reported). */
static unsigned
listen_methods(struct loader *ld, const struct node *value, const char *path)
{
    char sub[CONFIG_KEY_PATH_MAX], buf[48];
    const struct node *item;
    unsigned mask = 0, bit, i;
    size_t k;
    int ok = 1;

    if (value->type != NODE_SEQUENCE) {
        error_at(ld, value, path, "must be a list of method names (doSomething, getUpdates, "
                 "getItems, cancel, retry), got %s", node_kind(value));
        return 0;
    }
    if (value->count == 0) {
        error_at(ld, value, path, "must name at least one method (leave methods out to "
                 "serve them all)");
        return 0;
    }
    for (item = value->first, k = 0; item != NULL; item = item->next, k++) {
        format_key(sub, sizeof sub, "%s[%zu]", path, k);
        const char *name = scalar(ld, item, sub);
        if (name == NULL) {
            ok = 0;
            continue;
        }
        for (i = 0; i < DS_METHOD_COUNT; i++)
            if (strcmp(name, method_names[i]) == 0)
                break;
        if (i == DS_METHOD_COUNT) {
            error_at(ld, item, sub, "unknown method \"%s\" (doSomething, getUpdates, getItems, "
                     "cancel, retry)", excerpt(name, buf, sizeof buf));
            ok = 0;
            continue;
        }
        bit = 1u << i;
        if (mask & bit) {
            error_at(ld, item, sub, "duplicate method %s", name);
            ok = 0;
            continue;
        }
        mask |= bit;
    }
    return ok ? mask : 0;
}

/* One grpc.listen entry: an address, or {address: ADDR, methods: [...]}.
 * Returns the address (NULL: reported) and sets *methods. */
static char *
listen_entry(struct loader *ld, struct node *item, const char *path, unsigned *methods)
{
    char sub[CONFIG_KEY_PATH_MAX], buf[48];
    struct node *key, *address = NULL;
    char *addr = NULL;
    int ok = 1;

    *methods = DS_METHODS_ALL;
    if (item->type != NODE_MAPPING)
        return listen_address(ld, item, path, 1);
    mark_duplicates(ld, item);
    for (key = next_key(ld, item->first, path, sub, sizeof sub); key != NULL;
         key = next_key(ld, key->next->next, path, sub, sizeof sub)) {
        if (strcmp(key->value, "address") == 0) {
            address = key->next;
            addr = listen_address(ld, address, sub, 1);
            ok &= addr != NULL;
        } else if (strcmp(key->value, "methods") == 0) {
            *methods = listen_methods(ld, key->next, sub);
            ok &= *methods != 0;
        } else {
            error_at(ld, key, sub, "unknown key \"%s\" in a listen entry (address, methods)",
                     excerpt(key->value, buf, sizeof buf));
            ok = 0;
        }
    }
    if (address == NULL) {
        error_at(ld, item, path, "a listen entry written as a mapping needs an address");
        ok = 0;
    }
    return ok ? addr : NULL;
}

static void
parse_grpc_listen(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;
    char sub[CONFIG_KEY_PATH_MAX];
    size_t count, n = 0, i, j;
    struct node *item;
    char **list, *addr;
    unsigned *methods;
    int ok = 1;

    if (value->type == NODE_MAPPING) {
        error_at(ld, value, path, "must be an address or a list of addresses, got a mapping");
        return;
    }
    count = value->type == NODE_SEQUENCE ? value->count : 1;
    if (count == 0 || count > CONFIG_LISTEN_MAX) {
        error_at(ld, value, path, "must have 1..%d addresses, got %zu", CONFIG_LISTEN_MAX,
                 count);
        return;
    }
    list = pool_alloc(c->pool, (count + 1) * sizeof *list);
    methods = pool_alloc(c->pool, (count + 1) * sizeof *methods);
    item = value->type == NODE_SEQUENCE ? value->first : value;
    for (i = 0; i < count; i++, item = item->next) {
        if (value->type == NODE_SEQUENCE)
            format_key(sub, sizeof sub, "%s[%zu]", path, i);
        else
            format_key(sub, sizeof sub, "%s", path);
        addr = listen_entry(ld, item, sub, &methods[n]);
        if (addr == NULL) {
            ok = 0;
            continue;
        }
        for (j = 0; j < n; j++)
            if (strcmp(list[j], addr) == 0)
                break;
        if (j < n) {
            error_at(ld, item, sub, "duplicate address %s", addr);
            ok = 0;
            continue;
        }
        list[n++] = addr;
    }
    if (ok) {
        c->grpc.listen = list;
        c->grpc.listen_methods = methods;
        c->grpc.listen_count = n;
    }
}

/* Plain addresses when every entry serves every method (as before methods
 * existed); else a block list in which the entries that serve fewer are
 * {address, methods} mappings. */
static void
print_grpc_listen(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_config *c = base;
    yaml_event_t event;
    size_t i;
    unsigned m;
    int restricted = 0;

    emit_plain(p, rule->name);
    for (i = 0; i < c->grpc.listen_count; i++)
        restricted |= c->grpc.listen_methods[i] != DS_METHODS_ALL;
    if (!restricted) {
        emit_string_list(p, c->grpc.listen, c->grpc.listen_count);
        return;
    }
    if (p->failed)
        return;
    yaml_sequence_start_event_initialize(&event, NULL, NULL, 1, YAML_BLOCK_SEQUENCE_STYLE);
    emit(p, &event);
    for (i = 0; i < c->grpc.listen_count; i++) {
        if (c->grpc.listen_methods[i] == DS_METHODS_ALL) {
            emit_string(p, c->grpc.listen[i]);
            continue;
        }
        emit_mapping_start(p);
        emit_plain(p, "address");
        emit_string(p, c->grpc.listen[i]);
        emit_plain(p, "methods");
        if (!p->failed) {
            yaml_sequence_start_event_initialize(&event, NULL, NULL, 1,
                                                 YAML_FLOW_SEQUENCE_STYLE);
            emit(p, &event);
        }
        for (m = 0; m < DS_METHOD_COUNT; m++)
            if (c->grpc.listen_methods[i] & (1u << m))
                emit_plain(p, method_names[m]);
        if (!p->failed) {
            yaml_sequence_end_event_initialize(&event);
            emit(p, &event);
        }
        emit_mapping_end(p);
    }
    if (!p->failed) {
        yaml_sequence_end_event_initialize(&event);
        emit(p, &event);
    }
}

static void
parse_journal_sync(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;
    char buf[48];
    uint64_t ms;

    if (value->type == NODE_SCALAR && strcmp(value->value, "always") == 0) {
        c->queue.journal_sync = DS_JOURNAL_SYNC_ALWAYS;
    } else if (value->type == NODE_SCALAR && strcmp(value->value, "never") == 0) {
        c->queue.journal_sync = DS_JOURNAL_SYNC_NEVER;
    } else if (value->type == NODE_SCALAR && !is_null(value)
               && parse_duration(value->value, &ms) == PARSE_OK) {
        if (ms < 1 || ms > MS_HOUR) {
            error_at(ld, value, path, "must be 1ms..1h, got %s",
                     excerpt(value->value, buf, sizeof buf));
            return;
        }
        c->queue.journal_sync = DS_JOURNAL_SYNC_INTERVAL;
        c->queue.journal_sync_interval_ms = ms;
    } else if (scalar(ld, value, path) != NULL) {
        error_at(ld, value, path, "must be always, never or a duration such as 50ms, got %s",
                 excerpt(value->value, buf, sizeof buf));
    }
}

static void
print_journal_sync(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_config *c = base;
    char buf[32];

    emit_plain(p, rule->name);
    if (c->queue.journal_sync == DS_JOURNAL_SYNC_ALWAYS)
        emit_plain(p, "always");
    else if (c->queue.journal_sync == DS_JOURNAL_SYNC_NEVER)
        emit_plain(p, "never");
    else
        emit_plain(p, format_duration(c->queue.journal_sync_interval_ms, buf, sizeof buf));
}

/* queue.retry_backoff: off, or {min: DURATION, max: DURATION}. */
static const struct key_rule retry_backoff_rules[] = {
    { .name = "min", .type = VALUE_DURATION, CONFIG_FIELD(queue.retry_backoff_min_ms),
      .min = 1, .max = MS_HOUR },
    { .name = "max", .type = VALUE_DURATION, CONFIG_FIELD(queue.retry_backoff_max_ms),
      .min = 1, .max = 24 * MS_HOUR },
    { .name = NULL }
};

static void
parse_retry_backoff(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;
    char buf[48], buf2[48];

    if (is_off(value)) {
        c->queue.retry_backoff_min_ms = c->queue.retry_backoff_max_ms = 0;
        return;
    }
    if (value->type != NODE_MAPPING) {
        error_at(ld, value, path, "must be off or a mapping {min: DURATION, max: DURATION}, "
                 "got %s", is_null(value) ? "nothing" : node_kind(value));
        return;
    }
    c->queue.retry_backoff_min_ms = CONFIG_RETRY_BACKOFF_MIN_MS;
    c->queue.retry_backoff_max_ms = CONFIG_RETRY_BACKOFF_MAX_MS;
    walk_mapping(ld, value, path, retry_backoff_rules, base);
    if (c->queue.retry_backoff_min_ms > c->queue.retry_backoff_max_ms)
        error_at(ld, value, path, "min (%s) is more than max (%s)",
                 format_duration(c->queue.retry_backoff_min_ms, buf, sizeof buf),
                 format_duration(c->queue.retry_backoff_max_ms, buf2, sizeof buf2));
}

static void
print_retry_backoff(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_config *c = base;

    emit_plain(p, rule->name);
    if (c->queue.retry_backoff_min_ms != 0)
        print_mapping(p, retry_backoff_rules, base);
    else
        emit_plain(p, "off");
}

/* grpc.unix_mode: off, or permission bits in octal ("0660"). */
static void
parse_unix_mode(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;
    const char *s, *p;
    unsigned long v = 0;
    char buf[48];

    if (is_off(value)) {
        c->grpc.unix_mode = -1;
        return;
    }
    s = scalar(ld, value, path);
    if (s == NULL)
        return;
    for (p = s; *p >= '0' && *p <= '7' && p - s < 5; p++)
        v = v * 8 + (unsigned long)(*p - '0');
    if (p == s || *p != '\0' || v > 0777) {
        error_at(ld, value, path, "must be off or an octal mode 0000..0777 such as 0660, "
                 "got %s", excerpt(s, buf, sizeof buf));
        return;
    }
    c->grpc.unix_mode = (int)v;
}

/* Quoted: a plain 0660 would read as a number to other YAML tools. */
static void
print_unix_mode(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_config *c = base;
    char buf[16];

    emit_plain(p, rule->name);
    if (c->grpc.unix_mode < 0) {
        emit_plain(p, "off");
        return;
    }
    snprintf(buf, sizeof buf, "0%03o", (unsigned)c->grpc.unix_mode);
    emit_string(p, buf);
}

/* grpc.unix_owner: off, "user" or "user:group" (names; that they exist is
 * check_system()'s business). */
static void
parse_unix_owner(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;
    const char *s, *colon;
    char buf[48];

    if (is_off(value)) {
        c->grpc.unix_owner = NULL;
        return;
    }
    s = scalar(ld, value, path);
    if (s == NULL)
        return;
    colon = strchr(s, ':');
    if (s[0] == '\0' || s[0] == ':' || strlen(s) > 256
        || (colon != NULL && (colon[1] == '\0' || strchr(colon + 1, ':') != NULL))) {
        error_at(ld, value, path, "must be off, user or user:group, got %s",
                 excerpt(s, buf, sizeof buf));
        return;
    }
    c->grpc.unix_owner = pool_strdup(c->pool, s);
}

int
config_unix_owner(const char *owner, uid_t *uid, gid_t *gid, char *err, size_t err_size)
{
    char user[257];
    const char *colon = strchr(owner, ':');
    size_t len = colon != NULL ? (size_t)(colon - owner) : strlen(owner);
    struct passwd *pw;
    struct group *gr;

    if (len >= sizeof user) {
        snprintf(err, err_size, "user name too long");
        return -1;
    }
    memcpy(user, owner, len);
    user[len] = '\0';
    errno = 0;
    pw = getpwnam(user);
    if (pw == NULL) {
        if (errno != 0 && errno != ENOENT && errno != ESRCH)
            snprintf(err, err_size, "cannot look up user \"%.64s\": %s", user, strerror(errno));
        else
            snprintf(err, err_size, "no such user \"%.64s\"", user);
        return -1;
    }
    *uid = pw->pw_uid;
    *gid = (gid_t)-1;
    if (colon == NULL)
        return 0;
    errno = 0;
    gr = getgrnam(colon + 1);
    if (gr == NULL) {
        if (errno != 0 && errno != ENOENT && errno != ESRCH)
            snprintf(err, err_size, "cannot look up group \"%.64s\": %s", colon + 1,
                     strerror(errno));
        else
            snprintf(err, err_size, "no such group \"%.64s\"", colon + 1);
        return -1;
    }
    *gid = gr->gr_gid;
    return 0;
}

static const struct key_rule tls_rules[] = {
    { .name = "cert", .type = VALUE_PATH, CONFIG_FIELD(grpc.tls_cert), .required = 1 },
    { .name = "key", .type = VALUE_PATH, CONFIG_FIELD(grpc.tls_key), .required = 1 },
    { .name = "client_ca", .type = VALUE_PATH, CONFIG_FIELD(grpc.tls_client_ca) },
    { .name = "scope_ids", .type = VALUE_BOOL, CONFIG_FIELD(grpc.tls_scope_ids) },
    { .name = NULL }
};

static void
parse_tls(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;

    if (is_off(value)) {
        c->grpc.tls = 0;
        c->grpc.tls_cert = c->grpc.tls_key = c->grpc.tls_client_ca = NULL;
        c->grpc.tls_scope_ids = 0;
        return;
    }
    if (value->type != NODE_MAPPING) {
        error_at(ld, value, path, "must be off or a mapping {cert: PATH, key: PATH}, got %s",
                 is_null(value) ? "nothing" : node_kind(value));
        return;
    }
    c->grpc.tls = 1;
    walk_mapping(ld, value, path, tls_rules, base);
    /* Ids are scoped to the identity of the client's certificate. */
    if (c->grpc.tls_scope_ids && c->grpc.tls_client_ca == NULL)
        error_at(ld, value, path, "scope_ids: on needs client_ca (client certificates)");
}

static void
print_tls(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_config *c = base;

    emit_plain(p, rule->name);
    if (c->grpc.tls)
        print_mapping(p, tls_rules, base);
    else
        emit_plain(p, "off");
}

static void
parse_status_listen(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;

    if (is_off(value))
        c->status.listen = NULL;
    else
        c->status.listen = listen_address(ld, value, path, 0);
}

static const struct key_rule status_rules[] = {
    { .name = "listen", .type = VALUE_CUSTOM, .parse = parse_status_listen,
      .shown_as = VALUE_OFF_PATH, CONFIG_FIELD(status.listen) },
    { .name = "auth", .type = VALUE_OFF_PATH, CONFIG_FIELD(status.auth) },
    { .name = NULL }
};

static void
parse_status(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;

    if (is_off(value)) {
        c->status.listen = NULL;
        c->status.auth = NULL;
        return;
    }
    if (value->type == NODE_SCALAR && !is_null(value)) {
        error_at(ld, value, path, "must be off or a mapping, got a scalar");
        return;
    }
    walk_mapping(ld, value, path, status_rules, base);
}

/*
 * HOST[:PORT] at S, the host ending at ':' or at one of STOP: HOST a name,
 * an IPv4 address or [IPv6]. *HOST and *LEN get the host (without
 * brackets), *PORT the port if one is given (1..65535; else left alone).
 * Returns what follows, or NULL if it is malformed.
 */
static const char *
host_port(const char *s, const char *stop, const char **host, size_t *len, unsigned long *port)
{
    const char *end, *rest;

    if (*s == '[') {
        s++;
        end = strchr(s, ']');
        if (end == NULL || end == s)
            return NULL;
        rest = end + 1;
    } else {
        end = s;
        while (*end != '\0' && *end != ':' && strchr(stop, *end) == NULL)
            end++;
        rest = end;
    }
    if (end == s || end - s > 255)
        return NULL;
    if (*rest == ':') {
        char *after;
        errno = 0;
        if (rest[1] < '0' || rest[1] > '9')
            return NULL;
        *port = strtoul(rest + 1, &after, 10);
        if (errno != 0 || *port == 0 || *port > 65535)
            return NULL;
        rest = after;
    }
    *host = s;
    *len = (size_t)(end - s);
    return rest;
}

/*
 * sentinel://H1[:P1],H2[:P2],.../MASTER (after "sentinel://" at S): at most
 * CONFIG_SENTINELS_MAX sentinels, each port 26379 when left out; MASTER the
 * name the sentinels monitor the master under. -1 (reported) if malformed.
 */
static int
parse_sentinels(struct loader *ld, struct node *value, const char *path, struct ds_config *c,
                const char *s)
{
    struct ds_address found[CONFIG_SENTINELS_MAX];
    size_t n = 0;
    char buf[48];
    const char *p = s;

    for (;;) {
        const char *host;
        size_t len;
        unsigned long port = 26379;
        const char *rest = host_port(p, ",/", &host, &len, &port);
        if (rest == NULL || (*rest != ',' && *rest != '/')) {
            error_at(ld, value, path, "sentinel %zu: must be HOST[:PORT] with a port 1..65535, "
                     "got %s (the form is sentinel://HOST[:PORT],HOST[:PORT]/MASTER)", n + 1,
                     excerpt(p, buf, sizeof buf));
            return -1;
        }
        if (n == CONFIG_SENTINELS_MAX) {
            error_at(ld, value, path, "names more than %d sentinels", CONFIG_SENTINELS_MAX);
            return -1;
        }
        found[n].host = pool_strndup(c->pool, host, len);
        found[n].port = (int)port;
        n++;
        p = rest + 1;
        if (*rest == '/')
            break;
    }
    if (!valid_name(p)) {
        error_at(ld, value, path, "the master's name after the last / must be 1..%d characters "
                 "of A-Z a-z 0-9 _ . -, got %s", CONFIG_NAME_MAX,
                 *p ? excerpt(p, buf, sizeof buf) : "nothing");
        return -1;
    }
    c->cluster.sentinels = pool_alloc(c->pool, n * sizeof *c->cluster.sentinels);
    memcpy(c->cluster.sentinels, found, n * sizeof *found);
    c->cluster.sentinel_count = n;
    c->cluster.master_name = pool_strdup(c->pool, p);
    c->cluster.host = NULL;
    return 0;
}

/* redis://HOST[:PORT][/]: HOST a name, an IPv4 address or [IPv6]; PORT 6379
 * when left out. Or sentinel://...: parse_sentinels(). */
static void
parse_cluster_redis(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;
    const char *s = scalar(ld, value, path), *host, *rest;
    size_t len;
    char buf[48];
    unsigned long port = 6379;

    if (s == NULL)
        return;
    if (strncmp(s, "sentinel://", 11) == 0) {
        if (parse_sentinels(ld, value, path, c, s + 11) == 0)
            c->cluster.redis = pool_strdup(c->pool, s);
        return;
    }
    if (strncmp(s, "redis://", 8) != 0 || s[8] == '\0')
        goto bad;
    rest = host_port(s + 8, "/", &host, &len, &port);
    if (rest == NULL || (strcmp(rest, "") != 0 && strcmp(rest, "/") != 0))
        goto bad;
    c->cluster.redis = pool_strdup(c->pool, s);
    c->cluster.host = pool_strndup(c->pool, host, len);
    c->cluster.port = (int)port;
    c->cluster.sentinel_count = 0;
    return;
bad:
    error_at(ld, value, path, "must be redis://HOST[:PORT] or "
             "sentinel://HOST[:PORT],HOST[:PORT]/MASTER, got %s", excerpt(s, buf, sizeof buf));
}

static void
parse_cluster_name(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;
    const char *s = scalar(ld, value, path);
    char buf[48];

    if (s == NULL)
        return;
    if (!valid_name(s)) {
        error_at(ld, value, path, "must be 1..%d characters of A-Z a-z 0-9 _ . -, got %s",
                 CONFIG_NAME_MAX, excerpt(s, buf, sizeof buf));
        return;
    }
    c->cluster.name = pool_strdup(c->pool, s);
}

static const struct key_rule cluster_rules[] = {
    { .name = "redis", .type = VALUE_CUSTOM, .parse = parse_cluster_redis, .required = 1,
      .shown_as = VALUE_STRING, CONFIG_FIELD(cluster.redis) },
    { .name = "name", .type = VALUE_CUSTOM, .parse = parse_cluster_name,
      .shown_as = VALUE_STRING, CONFIG_FIELD(cluster.name) },
    { .name = "lease", .type = VALUE_DURATION, CONFIG_FIELD(cluster.lease_ms), .min = 300,
      .max = 3600 * MS_SECOND },
    { .name = "min_replicas_ack", .type = VALUE_UINT, CONFIG_FIELD(cluster.min_replicas_ack),
      .min = 0, .max = 64 },
    { .name = "replicas_ack_timeout", .type = VALUE_DURATION,
      CONFIG_FIELD(cluster.replicas_ack_timeout_ms), .min = 10, .max = 60 * MS_SECOND },
    { .name = NULL }
};

static void
parse_cluster(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;

    if (is_off(value)) {
        c->cluster.redis = NULL;
        return;
    }
    if (value->type != NODE_MAPPING) {
        error_at(ld, value, path, "must be off or a mapping {redis: URL, name: NAME}, got %s",
                 is_null(value) ? "nothing" : node_kind(value));
        return;
    }
    walk_mapping(ld, value, path, cluster_rules, base);
}

static void
print_cluster(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_config *c = base;

    emit_plain(p, rule->name);
    if (c->cluster.redis != NULL)
        print_mapping(p, cluster_rules, base);
    else
        emit_plain(p, "off");
}


/* Handlers. */

/* builtin, exec and module are one choice. */
static int
handler_type_key(struct loader *ld, const struct node *value, const char *path)
{
    if (ld->handler_types++ > 0) {
        error_at(ld, value, path, "only one of builtin, exec or module may be given");
        return -1;
    }
    return 0;
}

static void
parse_builtin(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_handler_config *h = base;
    const char *s;
    char buf[48], list[64];
    size_t i;

    if (handler_type_key(ld, value, path) == -1)
        return;
    s = scalar(ld, value, path);
    if (s == NULL)
        return;
    for (i = 0; builtin_names[i] != NULL; i++) {
        if (strcmp(s, builtin_names[i]) == 0) {
            h->type = (enum ds_handler_type)i;
            return;
        }
    }
    error_at(ld, value, path, "unknown builtin %s (there are %s)", excerpt(s, buf, sizeof buf),
             format_names(builtin_names, list, sizeof list));
}

static void
print_builtin(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_handler_config *h = base;

    if (h->type == DS_HANDLER_EXEC || h->type == DS_HANDLER_MODULE)
        return;
    emit_plain(p, rule->name);
    emit_plain(p, builtin_names[h->type]);
}

static void
parse_exec(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_handler_config *h = base;
    char sub[CONFIG_KEY_PATH_MAX];
    size_t count, i;
    struct node *item;
    const char *s;
    char **argv;
    int ok = 1;

    if (handler_type_key(ld, value, path) == -1)
        return;
    h->type = DS_HANDLER_EXEC;
    if (value->type == NODE_MAPPING) {
        error_at(ld, value, path, "must be a list [PROGRAM, ARG...], got a mapping");
        return;
    }
    count = value->type == NODE_SEQUENCE ? value->count : 1;
    if (count == 0) {
        error_at(ld, value, path, "must be a non-empty list [PROGRAM, ARG...]");
        return;
    }
    argv = pool_alloc(ld->config->pool, (count + 1) * sizeof *argv);
    item = value->type == NODE_SEQUENCE ? value->first : value;
    for (i = 0; i < count; i++, item = item->next) {
        if (value->type == NODE_SEQUENCE)
            format_key(sub, sizeof sub, "%s[%zu]", path, i);
        else
            format_key(sub, sizeof sub, "%s", path);
        s = scalar(ld, item, sub);
        if (s == NULL) {
            ok = 0;
        } else if (i > 0) {
            argv[i] = pool_strdup(ld->config->pool, s);
        } else if (s[0] == '\0') {
            error_at(ld, item, sub, "the program must not be empty");
            ok = 0;
        } else if (s[0] != '/' && strchr(s, '/') != NULL) {
            /* "bin/x" is the config's; a bare "cat" is PATH's. */
            argv[i] = resolve_path(ld, s);
        } else {
            argv[i] = pool_strdup(ld->config->pool, s);
        }
    }
    if (ok) {
        h->argv = argv;
        h->argc = count;
    }
}

static void
print_exec(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_handler_config *h = base;

    if (h->type != DS_HANDLER_EXEC)
        return;
    emit_plain(p, rule->name);
    emit_string_list(p, h->argv, h->argc);
}

static void
parse_module(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_handler_config *h = base;

    if (handler_type_key(ld, value, path) == -1)
        return;
    h->type = DS_HANDLER_MODULE;
    get_path(ld, value, path, &h->module_path);
}

/* A mapping of strings to scalars, kept as written and in order. */
static void
parse_string_map(struct loader *ld, struct node *map, const char *path, int env,
                 struct ds_env_var **out, size_t *out_count)
{
    char sub[CONFIG_KEY_PATH_MAX], buf[48];
    struct ds_env_var *vars;
    struct node *key;
    size_t n = 0;

    if (is_null(map))
        return;
    if (map->type != NODE_MAPPING) {
        error_at(ld, map, path, "must be a mapping, got %s", node_kind(map));
        return;
    }
    mark_duplicates(ld, map);
    vars = pool_alloc(ld->config->pool, (map->count / 2 + 1) * sizeof *vars);
    for (key = next_key(ld, map->first, path, sub, sizeof sub); key != NULL;
         key = next_key(ld, key->next->next, path, sub, sizeof sub)) {
        if (env ? !valid_env_name(key->value) : key->value[0] == '\0') {
            error_at(ld, key, path, "%s, got \"%s\"",
                     env ? "not an environment variable name" : "option names must not be empty",
                     excerpt(key->value, buf, sizeof buf));
            continue;
        }
        if (env && strncmp(key->value, "DS_", 3) == 0) {
            error_at(ld, key, path, "names starting with DS_ are the item's (DS_ITEM_ID, "
                     "DS_PARAM_...), got \"%s\"", excerpt(key->value, buf, sizeof buf));
            continue;
        }
        if (key->next->type != NODE_SCALAR) {
            error_at(ld, key->next, sub, "must be a scalar, got %s", node_kind(key->next));
            continue;
        }
        vars[n].name = pool_strdup(ld->config->pool, key->value);
        vars[n].value = pool_strdup(ld->config->pool, key->next->value);
        n++;
    }
    *out = vars;
    *out_count = n;
}

static void
parse_env(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_handler_config *h = base;

    parse_string_map(ld, value, path, 1, &h->env, &h->env_count);
}

static void
parse_options(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_handler_config *h = base;

    parse_string_map(ld, value, path, 0, &h->options, &h->option_count);
}

/* Left out when empty, as when never given. */
static void
print_string_map(struct printer *p, const char *key, const struct ds_env_var *vars,
                 size_t count)
{
    size_t i;

    if (count == 0)
        return;
    emit_plain(p, key);
    emit_mapping_start(p);
    for (i = 0; i < count; i++) {
        emit_string(p, vars[i].name);
        emit_string(p, vars[i].value);
    }
    emit_mapping_end(p);
}

static void
print_env(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_handler_config *h = base;

    print_string_map(p, rule->name, h->env, h->env_count);
}

static void
print_options(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_handler_config *h = base;

    print_string_map(p, rule->name, h->options, h->option_count);
}

/* handlers.<kind>.rate: off, or COUNT/UNIT with UNIT s, m or h. */
static const struct {
    char unit;
    uint64_t ms;
} rate_units[] = { { 's', MS_SECOND }, { 'm', 60 * MS_SECOND }, { 'h', 3600 * MS_SECOND } };

static void
parse_rate(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_handler_config *h = base;
    const char *s = scalar(ld, value, path), *slash;
    char buf[48], digits[24];
    uint64_t count;
    size_t i, n;

    if (s == NULL)
        return;
    if (is_off(value)) {
        h->rate_count = 0;
        h->rate_interval_ms = 0;
        return;
    }
    slash = strchr(s, '/');
    if (slash == NULL) {
        error_at(ld, value, path, "must be off or COUNT/s, COUNT/m or COUNT/h (such as 100/s), "
                 "got %s: no '/'", excerpt(s, buf, sizeof buf));
        return;
    }
    n = (size_t)(slash - s);
    if (n == 0 || n >= sizeof digits) {
        error_at(ld, value, path, "must be COUNT/s, COUNT/m or COUNT/h (such as 100/s), got %s: "
                 "the count before '/' must be an integer 1..%u", excerpt(s, buf, sizeof buf),
                 CONFIG_RATE_COUNT_MAX);
        return;
    }
    memcpy(digits, s, n);
    digits[n] = '\0';
    if (parse_uint(digits, &count) == -1 || count < 1 || count > CONFIG_RATE_COUNT_MAX) {
        error_at(ld, value, path, "must be COUNT/s, COUNT/m or COUNT/h (such as 100/s), got %s: "
                 "the count before '/' must be an integer 1..%u", excerpt(s, buf, sizeof buf),
                 CONFIG_RATE_COUNT_MAX);
        return;
    }
    for (i = 0; i < sizeof rate_units / sizeof rate_units[0]; i++) {
        if (slash[1] == rate_units[i].unit && slash[2] == '\0') {
            h->rate_count = (uint32_t)count;
            h->rate_interval_ms = rate_units[i].ms;
            return;
        }
    }
    error_at(ld, value, path, "must be COUNT/s, COUNT/m or COUNT/h (such as 100/s), got %s: "
             "the unit after '/' must be s, m or h", excerpt(s, buf, sizeof buf));
}

static void
print_rate(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_handler_config *h = base;
    char buf[32];
    size_t i;

    emit_plain(p, rule->name);
    for (i = 0; h->rate_count > 0 && i < sizeof rate_units / sizeof rate_units[0]; i++) {
        if (rate_units[i].ms == h->rate_interval_ms) {
            snprintf(buf, sizeof buf, "%u/%c", h->rate_count, rate_units[i].unit);
            emit_plain(p, buf);
            return;
        }
    }
    emit_plain(p, "off");
}

static void
retry_exit_codes_default(struct ds_handler_config *h)
{
    memset(h->retry_exit_codes, 0, sizeof h->retry_exit_codes);
    h->retry_exit_codes[CONFIG_RETRY_EXIT_DEFAULT / 8] |= 1u << (CONFIG_RETRY_EXIT_DEFAULT % 8);
}

int
config_retry_exit_code(const struct ds_handler_config *handler, int status)
{
    if (status < 1 || status > 255)
        return 0;
    return (handler->retry_exit_codes[status / 8] >> (status % 8)) & 1;
}

/* `retry_exit_codes: [75, ...]`: exit statuses 1..255, each once; [] is none. */
static void
parse_retry_exit_codes(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_handler_config *h = base;
    char sub[CONFIG_KEY_PATH_MAX], buf[48];
    uint8_t codes[sizeof h->retry_exit_codes] = { 0 };
    const struct node *item;
    uint64_t v;
    size_t k;
    int ok = 1;

    if (value->type != NODE_SEQUENCE) {
        error_at(ld, value, path, "must be a list of exit statuses 1..255 such as [75] "
                 "([] for none), got %s", is_null(value) ? "nothing" : node_kind(value));
        return;
    }
    for (item = value->first, k = 0; item != NULL; item = item->next, k++) {
        format_key(sub, sizeof sub, "%s[%zu]", path, k);
        const char *s = scalar(ld, item, sub);
        if (s == NULL) {
            ok = 0;
            continue;
        }
        if (parse_uint(s, &v) == -1 || v < 1 || v > 255) {
            error_at(ld, item, sub, "must be an exit status 1..255, got %s",
                     excerpt(s, buf, sizeof buf));
            ok = 0;
            continue;
        }
        if (codes[v / 8] & (1u << (v % 8))) {
            error_at(ld, item, sub, "duplicate exit status %u", (unsigned)v);
            ok = 0;
            continue;
        }
        codes[v / 8] |= (uint8_t)(1u << (v % 8));
    }
    if (ok)
        memcpy(h->retry_exit_codes, codes, sizeof codes);
}

/* Exec handlers only, where it means something: [75], [], [3, 75]. */
static void
print_retry_exit_codes(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_handler_config *h = base;
    char text[255][12], *values[255];
    size_t n = 0;

    if (h->type != DS_HANDLER_EXEC)
        return;
    for (int s = 1; s <= 255; s++) {
        if (config_retry_exit_code(h, s)) {
            snprintf(text[n], sizeof text[n], "%d", s);
            values[n] = text[n];
            n++;
        }
    }
    emit_plain(p, rule->name);
    emit_int_list(p, values, n);
}

/* handlers.<kind>.cache: off, or {size: SIZE, ttl: DURATION}, both required. */
static const struct key_rule cache_rules[] = {
    { .name = "size", .type = VALUE_SIZE, HANDLER_FIELD(cache_size), .min = 1,
      .max = CONFIG_CACHE_SIZE_MAX, .required = 1 },
    { .name = "ttl", .type = VALUE_DURATION, HANDLER_FIELD(cache_ttl_ms),
      .min = CONFIG_CACHE_TTL_MIN_MS, .max = CONFIG_CACHE_TTL_MAX_MS, .required = 1 },
    { .name = NULL }
};

static void
parse_cache(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_handler_config *h = base;

    if (is_off(value)) {
        h->cache_size = h->cache_ttl_ms = 0;
        return;
    }
    if (value->type != NODE_MAPPING) {
        error_at(ld, value, path, "must be off or a mapping {size: SIZE, ttl: DURATION} such "
                 "as {size: 256MiB, ttl: 1h}, got %s", is_null(value) ? "nothing"
                 : node_kind(value));
        return;
    }
    walk_mapping(ld, value, path, cache_rules, base);
}

static void
print_cache(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_handler_config *h = base;

    emit_plain(p, rule->name);
    if (h->cache_size != 0)
        print_mapping(p, cache_rules, base);
    else
        emit_plain(p, "off");
}

static const struct key_rule handler_rules[] = {
    { .name = "builtin", .type = VALUE_CUSTOM, .parse = parse_builtin, .print = print_builtin },
    { .name = "exec", .type = VALUE_CUSTOM, .parse = parse_exec, .print = print_exec },
    { .name = "module", .type = VALUE_CUSTOM, .parse = parse_module, .shown_as = VALUE_PATH,
      HANDLER_FIELD(module_path) },
    { .name = "timeout", .type = VALUE_DURATION, HANDLER_FIELD(timeout_ms), .min = 0,
      .max = UINT64_MAX },
    { .name = "cancel_grace", .type = VALUE_DURATION, HANDLER_FIELD(cancel_grace_ms),
      .min = 0, .max = CONFIG_CANCEL_GRACE_MAX_MS },
    { .name = "retry_exit_codes", .type = VALUE_CUSTOM, .parse = parse_retry_exit_codes,
      .print = print_retry_exit_codes },
    { .name = "env", .type = VALUE_CUSTOM, .parse = parse_env, .print = print_env },
    { .name = "options", .type = VALUE_CUSTOM, .parse = parse_options, .print = print_options },
    { .name = "concurrency", .type = VALUE_UINT, HANDLER_FIELD(concurrency), .min = 0,
      .max = CONFIG_CONCURRENCY_MAX },
    { .name = "rate", .type = VALUE_CUSTOM, .parse = parse_rate, .print = print_rate },
    { .name = "paused", .type = VALUE_BOOL, HANDLER_FIELD(paused) },
    { .name = "memory_limit", .type = VALUE_OFF_SIZE, HANDLER_FIELD(memory_limit),
      .min = CONFIG_MEMORY_LIMIT_MIN, .max = CONFIG_MEMORY_LIMIT_MAX },
    { .name = "cpu_limit", .type = VALUE_OFF_DURATION, HANDLER_FIELD(cpu_limit_ms),
      .min = 1000, .max = CONFIG_CPU_LIMIT_MAX_MS },
    { .name = "cache", .type = VALUE_CUSTOM, .parse = parse_cache, .print = print_cache },
    { .name = NULL }
};

static void
parse_handler(struct loader *ld, struct node *value, const char *path,
              struct ds_handler_config *h)
{
    char sub[CONFIG_KEY_PATH_MAX];
    const struct node *n;

    if (value->type != NODE_MAPPING) {
        error_at(ld, value, path, "must be a mapping such as {builtin: echo}, got %s",
                 is_null(value) ? "nothing" : node_kind(value));
        return;
    }
    ld->handler_types = 0;
    walk_mapping(ld, value, path, handler_rules, h);
    if (ld->handler_types == 0)
        error_at(ld, value, path, "needs one of builtin, exec or module");

    join_key(sub, sizeof sub, path, "env");
    n = find_position(ld, sub);
    if (n != NULL && h->type != DS_HANDLER_EXEC)
        error_at(ld, n, sub, "only for exec handlers");
    join_key(sub, sizeof sub, path, "retry_exit_codes");
    n = find_position(ld, sub);
    if (n != NULL && h->type != DS_HANDLER_EXEC)
        error_at(ld, n, sub, "only for exec handlers (a module returns DS_MODULE_RETRY)");
    join_key(sub, sizeof sub, path, "options");
    n = find_position(ld, sub);
    if (n != NULL && h->type != DS_HANDLER_MODULE)
        error_at(ld, n, sub, "only for module handlers");
}

/* `handlers.default`: a kind, so read once every kind is. */
static void
parse_default_handler(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;
    const struct ds_handler_config *found;
    const char *s = scalar(ld, value, path);
    char buf[48];

    if (s == NULL)
        return;
    found = config_handler(c, s);
    if (found == NULL) {
        error_at(ld, value, path, "kind %s is not defined in handlers",
                 excerpt(s, buf, sizeof buf));
        return;
    }
    c->default_handler = found->kind;
}

/* The keys of `handlers:` beside the kinds. */
static const struct key_rule handlers_rules[] = {
    { .name = "default", .type = VALUE_CUSTOM, .parse = parse_default_handler,
      .shown_as = VALUE_STRING, CONFIG_FIELD(default_handler) },
    { .name = "max_result_size", .type = VALUE_SIZE, CONFIG_FIELD(max_result_size), .min = 0,
      .max = DS_RESULT_SIZE_MAX },
    { .name = NULL }
};

/* Given, `handlers:` replaces the default set whole. Besides kinds it holds
 * the keys of handlers_rules. */
static void
parse_handlers(struct loader *ld, struct node *value, const char *path, void *base)
{
    struct ds_config *c = base;
    char sub[CONFIG_KEY_PATH_MAX], buf[48];
    const struct key_rule *rule;
    struct ds_handler_config *list;
    struct node *key, *default_node = NULL;
    size_t n = 0, max;
    int too_many = 0;

    if (is_null(value))
        return;
    if (value->type != NODE_MAPPING) {
        error_at(ld, value, path, "must be a mapping of kinds to handlers, got %s",
                 node_kind(value));
        return;
    }
    mark_duplicates(ld, value);
    max = value->count / 2 < CONFIG_KINDS_MAX ? value->count / 2 : CONFIG_KINDS_MAX;
    list = pool_alloc(c->pool, (max + 1) * sizeof *list);
    c->handlers = list;
    c->handler_count = 0;
    c->default_handler = NULL;

    for (key = next_key(ld, value->first, path, sub, sizeof sub); key != NULL;
         key = next_key(ld, key->next->next, path, sub, sizeof sub)) {
        record_position(ld, sub, key->next);
        for (rule = handlers_rules; rule->name != NULL; rule++)
            if (strcmp(rule->name, key->value) == 0)
                break;
        if (rule->parse == parse_default_handler) {
            default_node = key->next;
            continue;
        }
        if (rule->name != NULL) {
            apply_rule(ld, rule, key->next, sub, c);
            continue;
        }
        if (!valid_name(key->value)) {
            error_at(ld, key, path, "a kind name must be 1..%d characters of "
                     "A-Z a-z 0-9 _ . -, got \"%s\"", CONFIG_NAME_MAX,
                     excerpt(key->value, buf, sizeof buf));
            continue;
        }
        if (n == CONFIG_KINDS_MAX) {
            if (!too_many)
                error_at(ld, key, path, "more than %d kinds", CONFIG_KINDS_MAX);
            too_many = 1;
            continue;
        }
        list[n].kind = pool_strdup(c->pool, key->value);
        list[n].cancel_grace_ms = CONFIG_CANCEL_GRACE_DEFAULT_MS;
        retry_exit_codes_default(&list[n]);
        c->handler_count = ++n;
        parse_handler(ld, key->next, sub, &list[n - 1]);
    }

    join_key(sub, sizeof sub, path, "default");
    if (default_node != NULL)
        parse_default_handler(ld, default_node, sub, c);
    else if (config_handler(c, "echo") != NULL)
        c->default_handler = config_handler(c, "echo")->kind;
    else
        error_at(ld, value, sub, "missing, and there is no kind echo to default to");
}

/* The keys of handlers_rules, then each kind: the kinds are keys of the same
 * mapping. */
static void
print_handlers(struct printer *p, const struct key_rule *rule, const void *base)
{
    const struct ds_config *c = base;
    const struct key_rule *r;
    size_t i;

    emit_plain(p, rule->name);
    emit_mapping_start(p);
    for (r = handlers_rules; r->name != NULL; r++)
        print_rule(p, r, base);
    for (i = 0; i < c->handler_count; i++) {
        emit_string(p, c->handlers[i].kind);
        print_mapping(p, handler_rules, &c->handlers[i]);
    }
    emit_mapping_end(p);
}

/* The whole file. */

static const struct key_rule log_rules[] = {
    { .name = "level", .type = VALUE_ENUM, CONFIG_FIELD(log.level), .names = level_names },
    { .name = "file", .type = VALUE_CUSTOM, .parse = parse_log_file, .shown_as = VALUE_STRING,
      CONFIG_FIELD(log.file) },
    { .name = "access", .type = VALUE_OFF_PATH, CONFIG_FIELD(log.access) },
    { .name = NULL }
};

static const struct key_rule workers_rules[] = {
    { .name = "count", .type = VALUE_CUSTOM, .parse = parse_workers_count,
      .print = print_workers_count },
    { .name = "prefetch", .type = VALUE_UINT, CONFIG_FIELD(workers.prefetch), .min = 1,
      .max = 1024 },
    { .name = "max_items", .type = VALUE_UINT, CONFIG_FIELD(workers.max_items), .min = 0,
      .max = UINT64_MAX },
    { .name = "cpu_affinity", .type = VALUE_ENUM, CONFIG_FIELD(workers.cpu_affinity),
      .names = affinity_names },
    { .name = "nice", .type = VALUE_CUSTOM, .parse = parse_workers_nice,
      .print = print_workers_nice },
    { .name = "rlimit_nofile", .type = VALUE_UINT, CONFIG_FIELD(workers.rlimit_nofile),
      .min = 0, .max = UINT64_MAX },
    { .name = "core_dumps", .type = VALUE_CUSTOM, .parse = parse_core_dumps,
      .print = print_core_dumps },
    { .name = NULL }
};

static const struct key_rule keepalive_rules[] = {
    { .name = "time", .type = VALUE_OFF_DURATION, CONFIG_FIELD(grpc.keepalive.time_ms),
      .min = 100, .max = 24 * MS_HOUR },
    { .name = "timeout", .type = VALUE_DURATION, CONFIG_FIELD(grpc.keepalive.timeout_ms),
      .min = 100, .max = MS_HOUR },
    { .name = "min_ping_interval", .type = VALUE_DURATION,
      CONFIG_FIELD(grpc.keepalive.min_ping_interval_ms), .min = 100, .max = 24 * MS_HOUR },
    { .name = "permit_without_calls", .type = VALUE_BOOL,
      CONFIG_FIELD(grpc.keepalive.permit_without_calls) },
    { .name = NULL }
};

static const struct key_rule grpc_rules[] = {
    { .name = "listen", .type = VALUE_CUSTOM, .parse = parse_grpc_listen,
      .print = print_grpc_listen },
    { .name = "max_message_size", .type = VALUE_SIZE, CONFIG_FIELD(grpc.max_message_size),
      .min = DS_MESSAGE_SIZE_MIN, .max = DS_MESSAGE_SIZE_MAX },
    { .name = "tls", .type = VALUE_CUSTOM, .parse = parse_tls, .print = print_tls },
    { .name = "max_concurrent_streams", .type = VALUE_UINT,
      CONFIG_FIELD(grpc.max_concurrent_streams), .min = 1, .max = 100000 },
    { .name = "unix_mode", .type = VALUE_CUSTOM, .parse = parse_unix_mode,
      .print = print_unix_mode },
    { .name = "unix_owner", .type = VALUE_CUSTOM, .parse = parse_unix_owner,
      .shown_as = VALUE_OFF_PATH, CONFIG_FIELD(grpc.unix_owner) },
    { .name = "max_connection_age", .type = VALUE_OFF_DURATION,
      CONFIG_FIELD(grpc.max_connection_age_ms), .min = 100, .max = 24 * MS_HOUR },
    { .name = "max_connection_age_grace", .type = VALUE_OFF_DURATION,
      CONFIG_FIELD(grpc.max_connection_age_grace_ms), .min = 1, .max = 24 * MS_HOUR },
    { .name = "keepalive", .type = VALUE_SECTION, .section = keepalive_rules },
    { .name = NULL }
};

static const struct key_rule queue_rules[] = {
    { .name = "capacity", .type = VALUE_UINT, CONFIG_FIELD(queue.capacity), .min = 1,
      .max = 100000000 },
    { .name = "on_full", .type = VALUE_ENUM, CONFIG_FIELD(queue.on_full),
      .names = on_full_names },
    { .name = "max_attempts", .type = VALUE_UINT, CONFIG_FIELD(queue.max_attempts), .min = 1,
      .max = 1000 },
    { .name = "max_params", .type = VALUE_UINT, CONFIG_FIELD(queue.max_params), .min = 0,
      .max = 4096 },
    { .name = "journal", .type = VALUE_OFF_PATH, CONFIG_FIELD(queue.journal) },
    { .name = "journal_sync", .type = VALUE_CUSTOM, .parse = parse_journal_sync,
      .print = print_journal_sync },
    { .name = "retry_backoff", .type = VALUE_CUSTOM, .parse = parse_retry_backoff,
      .print = print_retry_backoff },
    { .name = NULL }
};

static const struct key_rule updates_rules[] = {
    { .name = "history", .type = VALUE_UINT, CONFIG_FIELD(updates.history), .min = 1,
      .max = 100000000 },
    { .name = "subscriber_buffer", .type = VALUE_UINT, CONFIG_FIELD(updates.subscriber_buffer),
      .min = 1, .max = 100000000 },
    { .name = "history_bytes", .type = VALUE_SIZE, CONFIG_FIELD(updates.history_bytes),
      .min = 1u << 20, .max = 1ull << 40 },
    { .name = "max_subscribers", .type = VALUE_UINT, CONFIG_FIELD(updates.max_subscribers),
      .min = 1, .max = 1000000 },
    { .name = "subscribers_bytes", .type = VALUE_SIZE, CONFIG_FIELD(updates.subscribers_bytes),
      .min = 1u << 20, .max = 1ull << 40 },
    { .name = NULL }
};

static const struct key_rule retention_rules[] = {
    { .name = "age", .type = VALUE_DURATION, CONFIG_FIELD(items.retention_age_ms), .min = 1,
      .max = 3650 * 24 * MS_HOUR },
    { .name = "count", .type = VALUE_UINT, CONFIG_FIELD(items.retention_count), .min = 0,
      .max = 1000000000 },
    { .name = "bytes", .type = VALUE_SIZE, CONFIG_FIELD(items.retention_bytes), .min = 0,
      .max = 1ull << 40 },
    { .name = NULL }
};

static const struct key_rule items_rules[] = {
    { .name = "retention", .type = VALUE_SECTION, .section = retention_rules },
    { .name = NULL }
};

static const struct key_rule respawn_rules[] = {
    { .name = "backoff_min", .type = VALUE_DURATION, CONFIG_FIELD(respawn.backoff_min_ms),
      .min = 1, .max = MS_HOUR },
    { .name = "backoff_max", .type = VALUE_DURATION, CONFIG_FIELD(respawn.backoff_max_ms),
      .min = 1, .max = MS_HOUR },
    { .name = "stable_after", .type = VALUE_DURATION, CONFIG_FIELD(respawn.stable_after_ms),
      .min = 1, .max = MS_HOUR },
    { .name = "crash_limit", .type = VALUE_UINT, CONFIG_FIELD(respawn.crash_limit), .min = 1,
      .max = 1000 },
    { .name = NULL }
};

static const struct key_rule top_rules[] = {
    { .name = "daemon", .type = VALUE_BOOL, CONFIG_FIELD(daemon) },
    { .name = "pid_file", .type = VALUE_PATH, CONFIG_FIELD(pid_file) },
    { .name = "user", .type = VALUE_STRING, CONFIG_FIELD(user) },
    { .name = "log", .type = VALUE_SECTION, .section = log_rules },
    { .name = "workers", .type = VALUE_SECTION, .section = workers_rules },
    { .name = "grpc", .type = VALUE_SECTION, .section = grpc_rules },
    { .name = "queue", .type = VALUE_SECTION, .section = queue_rules },
    { .name = "updates", .type = VALUE_SECTION, .section = updates_rules },
    { .name = "items", .type = VALUE_SECTION, .section = items_rules },
    { .name = "handlers", .type = VALUE_CUSTOM, .parse = parse_handlers,
      .print = print_handlers },
    { .name = "status", .type = VALUE_CUSTOM, .parse = parse_status,
      .shown_as = VALUE_SECTION, .section = status_rules },
    { .name = "cluster", .type = VALUE_CUSTOM, .parse = parse_cluster, .print = print_cluster },
    { .name = "respawn", .type = VALUE_SECTION, .section = respawn_rules },
    { .name = "shutdown_timeout", .type = VALUE_DURATION, CONFIG_FIELD(shutdown_timeout_ms),
      .min = 0, .max = MS_HOUR },
    { .name = NULL }
};

static void
set_defaults(struct loader *ld)
{
    struct ds_config *c = ld->config;
    size_t i, n = sizeof default_handlers / sizeof default_handlers[0];

    c->daemon = 0;
    c->pid_file = resolve_path(ld, "dosomething.pid");
    c->user = pool_strdup(c->pool, "");

    c->log.level = DS_LOG_INFO;
    c->log.file = pool_strdup(c->pool, "stderr");
    c->log.access = NULL;

    c->workers.count = cpu_count();
    c->workers.count_auto = 1;
    c->workers.prefetch = 2;
    c->workers.max_items = 0;
    c->workers.cpu_affinity = 0;
    c->workers.nice = 0;
    c->workers.rlimit_nofile = 0;
    c->workers.core_dumps = -1;

    c->grpc.listen = pool_alloc(c->pool, 2 * sizeof(char *));
    c->grpc.listen[0] = pool_strdup(c->pool, "127.0.0.1:8080");
    c->grpc.listen_methods = pool_alloc(c->pool, 2 * sizeof(unsigned));
    c->grpc.listen_methods[0] = DS_METHODS_ALL;
    c->grpc.listen_count = 1;
    c->grpc.max_message_size = 4u << 20;
    c->grpc.tls = 0;
    c->grpc.max_concurrent_streams = 100;
    c->grpc.unix_mode = -1;
    c->grpc.unix_owner = NULL;
    c->grpc.max_connection_age_ms = 0;
    c->grpc.max_connection_age_grace_ms = 0;
    c->grpc.keepalive.time_ms = 2 * MS_MINUTE;
    c->grpc.keepalive.timeout_ms = 20 * MS_SECOND;
    c->grpc.keepalive.min_ping_interval_ms = 10 * MS_SECOND;
    c->grpc.keepalive.permit_without_calls = 1;

    c->queue.capacity = 10000;
    c->queue.on_full = DS_ON_FULL_BLOCK;
    c->queue.max_attempts = 3;
    c->queue.max_params = 64;
    c->queue.journal = NULL;
    c->queue.journal_sync = DS_JOURNAL_SYNC_INTERVAL;
    c->queue.journal_sync_interval_ms = 50;
    c->queue.retry_backoff_min_ms = 0;
    c->queue.retry_backoff_max_ms = 0;

    c->updates.history = 65536;
    c->updates.subscriber_buffer = 1000000;
    c->updates.history_bytes = 256u << 20;
    c->items.retention_age_ms = 24 * MS_HOUR;
    c->items.retention_count = 1000000;
    c->items.retention_bytes = 256u << 20;
    c->updates.max_subscribers = 1000;
    c->updates.subscribers_bytes = 512u << 20;

    c->handlers = pool_alloc(c->pool, n * sizeof *c->handlers);
    for (i = 0; i < n; i++) {
        c->handlers[i].kind = pool_strdup(c->pool, default_handlers[i].kind);
        c->handlers[i].type = default_handlers[i].type;
        c->handlers[i].timeout_ms = default_handlers[i].timeout_ms;
        c->handlers[i].cancel_grace_ms = CONFIG_CANCEL_GRACE_DEFAULT_MS;
        retry_exit_codes_default(&c->handlers[i]);
    }
    c->handler_count = n;
    c->default_handler = c->handlers[0].kind;
    c->max_result_size = DS_RESULT_SIZE_MAX;

    c->status.listen = NULL;
    c->status.auth = NULL;
    c->cluster.redis = NULL;
    c->cluster.name = pool_strdup(c->pool, "dosomething");
    c->cluster.host = NULL;
    c->cluster.port = 6379;
    c->cluster.lease_ms = 10 * MS_SECOND;
    c->cluster.sentinels = NULL;
    c->cluster.sentinel_count = 0;
    c->cluster.master_name = NULL;
    c->cluster.min_replicas_ack = 0;
    c->cluster.replicas_ack_timeout_ms = MS_SECOND;

    c->respawn.backoff_min_ms = 100;
    c->respawn.backoff_max_ms = 10 * MS_SECOND;
    c->respawn.stable_after_ms = 10 * MS_SECOND;
    c->respawn.crash_limit = 10;

    c->shutdown_timeout_ms = 30 * MS_SECOND;
}

/* Rules between keys, once every key is read. */
static void
check_config(struct loader *ld)
{
    const struct ds_config *c = ld->config;
    char a[32], b[32];

    if (c->respawn.backoff_max_ms < c->respawn.backoff_min_ms) {
        const struct node *n = find_position(ld, "respawn.backoff_max");
        if (n == NULL)
            n = find_position(ld, "respawn.backoff_min");
        error_at(ld, n, "respawn.backoff_max", "must be >= respawn.backoff_min (%s), got %s",
                 format_duration(c->respawn.backoff_min_ms, a, sizeof a),
                 format_duration(c->respawn.backoff_max_ms, b, sizeof b));
    }
    /* Two homes for one queue would be one too many. */
    if (c->cluster.redis != NULL && c->queue.journal != NULL)
        error_at(ld, find_position(ld, "cluster"), "cluster", "cannot be used with "
                 "queue.journal: in cluster mode the queue lives in Redis; set one of them off");
}

/*
 * ---- Features parsed but not built yet. ----
 *
 * Setting one is an error rather than silently nothing: nobody should believe
 * a feature works when there is none. None is left at the moment; a feature
 * parsed ahead of its code gets a line here, deleted when the code lands.
 */
static void
check_unsupported(struct loader *ld)
{
    (void)ld;
}

/*
 * ---- What only the system can tell. ----
 *
 * config_load() (the master: -t, start, reload) also checks the config
 * against this machine: the user exists, each module loads and speaks our
 * handler ABI. config_load_text() (a child applying what the master
 * validated) does not: the grpc process must never dlopen a module.
 */
static void
check_user(struct loader *ld)
{
    const struct ds_config *c = ld->config;
    char buf[48];

    if (c->user[0] == '\0')
        return;
    errno = 0;
    if (getpwnam(c->user) != NULL)
        return;
    if (errno != 0 && errno != ENOENT && errno != ESRCH)
        error_at(ld, find_position(ld, "user"), "user", "cannot look up \"%s\": %s",
                 excerpt(c->user, buf, sizeof buf), strerror(errno));
    else
        error_at(ld, find_position(ld, "user"), "user", "no such user \"%s\"",
                 excerpt(c->user, buf, sizeof buf));
}

static void
check_unix_owner(struct loader *ld)
{
    const struct ds_config *c = ld->config;
    char why[160];
    uid_t uid;
    gid_t gid;

    if (c->grpc.unix_owner != NULL
        && config_unix_owner(c->grpc.unix_owner, &uid, &gid, why, sizeof why) == -1)
        error_at(ld, find_position(ld, "grpc.unix_owner"), "grpc.unix_owner", "%s", why);
}

/* dlopen it, find DS_MODULE_SYMBOL, check it, keep its flags, dlclose: the
 * worker does the same for real (src/workers/module.c). */
static void
check_module(struct loader *ld, struct ds_handler_config *h)
{
    char key[CONFIG_KEY_PATH_MAX];
    const struct ds_module *m;
    const struct node *n;
    const char *why;
    void *dl;

    format_key(key, sizeof key, "handlers.%s.module", h->kind);
    n = find_position(ld, key);
    if (h->module_path == NULL)
        return;
    dl = dlopen(h->module_path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        why = dlerror();
        error_at(ld, n, key, "cannot load: %s", why != NULL ? why : "unknown error");
        return;
    }
    m = dlsym(dl, DS_MODULE_SYMBOL);
    if (m == NULL)
        error_at(ld, n, key, "%s does not export " DS_MODULE_SYMBOL " (not a dosomething "
                 "module?)", h->module_path);
    else if (m->abi_version != DS_HANDLER_ABI_VERSION)
        error_at(ld, n, key, "%s was built for handler ABI version %u; this dosomethingd "
                 "loads version %d", h->module_path, (unsigned)m->abi_version,
                 DS_HANDLER_ABI_VERSION);
    else if (m->process == NULL)
        error_at(ld, n, key, "%s: " DS_MODULE_SYMBOL ".process is NULL", h->module_path);
    else
        h->module_flags = m->flags;
    dlclose(dl);
}

/* The descriptors the config needs against the hard RLIMIT_NOFILE (the
 * master raises the soft one to it before forking). */
static void
check_descriptors(struct loader *ld)
{
    const struct ds_config *c = ld->config;
    uint64_t needed = descriptors_needed(c), limit = descriptors_hard_limit();

    if (needed <= limit)
        return;
    error_at(ld, find_position(ld, "workers.count"), "workers.count",
             "%u workers need at least %llu descriptors per process (%d per worker, %d for "
             "the process, %llu listeners, %d in reserve, %d for clients), but the hard "
             "RLIMIT_NOFILE is %llu: lower workers.count or raise the limit (ulimit -Hn, "
             "systemd LimitNOFILE=)", c->workers.count, (unsigned long long)needed,
             DESCRIPTORS_PER_WORKER, DESCRIPTORS_BASE,
             (unsigned long long)(c->grpc.listen_count + (c->status.listen != NULL)),
             DESCRIPTORS_RESERVE, DESCRIPTORS_MIN_CLIENTS, (unsigned long long)limit);
}

/* status.auth: the user file reads, and every line of it is one we verify. */
static void
check_status_auth(struct loader *ld)
{
    const struct ds_config *c = ld->config;
    struct auth_file f = { NULL, 0 };
    char why[600];

    if (c->status.auth == NULL)
        return;
    if (auth_file_load(c->status.auth, &f, why, sizeof why) == -1)
        error_at(ld, find_position(ld, "status.auth"), "status.auth", "%s", why);
    auth_file_free(&f);
}

/* A grpc.tls file: readable now (the grpc process reads them before it
 * drops privileges, as whoever starts the daemon) and PEM, so that -t and a
 * reload catch what the start would fail on. */
static void
check_pem(struct loader *ld, const char *key, const char *path)
{
    char buf[4096];
    int fd;
    ssize_t n;

    if (path == NULL)
        return;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd == -1) {
        error_at(ld, find_position(ld, key), key, "cannot open %s: %s", path, strerror(errno));
        return;
    }
    /* The first block names what it is: "-----BEGIN ..." near the top. */
    n = read(fd, buf, sizeof buf - 1);
    if (n == -1)
        error_at(ld, find_position(ld, key), key, "cannot read %s: %s", path, strerror(errno));
    else if (buf[n] = '\0', memmem(buf, (size_t)n, "-----BEGIN ", 11) == NULL)
        error_at(ld, find_position(ld, key), key,
                 "%s is not a PEM file (no \"-----BEGIN \" in its first %zu bytes)", path,
                 sizeof buf - 1);
    close(fd);
}

static void
check_system(struct loader *ld)
{
    const struct ds_config *c = ld->config;
    size_t i;

    check_user(ld);
    check_status_auth(ld);
    if (c->grpc.tls) {
        check_pem(ld, "grpc.tls.cert", c->grpc.tls_cert);
        check_pem(ld, "grpc.tls.key", c->grpc.tls_key);
        check_pem(ld, "grpc.tls.client_ca", c->grpc.tls_client_ca);
    }
    check_unix_owner(ld);
    check_descriptors(ld);
    for (i = 0; i < c->handler_count; i++)
        if (c->handlers[i].type == DS_HANDLER_MODULE)
            check_module(ld, &c->handlers[i]);
}

static void
walk_root(struct loader *ld, struct node *root)
{
    if (root == NULL || is_null(root))
        return;
    if (root->type != NODE_MAPPING) {
        error_at(ld, root, NULL, "the top level must be a mapping, got %s", node_kind(root));
        return;
    }
    walk_mapping(ld, root, "", top_rules, ld->config);
}

static void
reset_errors(char *errors, size_t errors_size)
{
    if (errors != NULL && errors_size > 0)
        errors[0] = '\0';
}

/* What load() checks beyond the file itself. */
enum load_checks {
    LOAD_UNCHECKED,               /* for tests: unsupported features pass */
    LOAD_CHECKED,                 /* unsupported features are errors */
    LOAD_CHECKED_SYSTEM,          /* and check_system() */
};

static struct ds_config *
load(const char *file, const char *text, size_t len, char *errors, size_t errors_size,
     enum load_checks check)
{
    struct ds_config *c;
    struct ds_pool *pool;
    struct node *root;
    struct loader ld;

    memset(&ld, 0, sizeof ld);
    ld.file = file;
    ld.errors = errors;
    ld.errors_size = errors_size;
    reset_errors(errors, errors_size);

    if (len > CONFIG_FILE_MAX) {
        error_mark(&ld, 0, 0, "too large (more than %d MiB)", CONFIG_FILE_MAX >> 20);
        return NULL;
    }

    pool = pool_create();
    c = pool_alloc(pool, sizeof *c);
    c->pool = pool;
    ld.config = c;
    if (set_paths(&ld, file) == -1) {
        pool_destroy(pool);
        return NULL;
    }
    set_defaults(&ld);

    ld.scratch = pool_create();
    if (parse_tree(&ld, text, len, &root) == 0) {
        c->empty = root == NULL;
        walk_root(&ld, root);
        check_config(&ld);
        if (check != LOAD_UNCHECKED)
            check_unsupported(&ld);
        if (check == LOAD_CHECKED_SYSTEM)
            check_system(&ld);
    }
    pool_destroy(ld.scratch);

    if (ld.error_count > 0) {
        pool_destroy(pool);
        return NULL;
    }
    c->source = pool_strndup(pool, text, len);
    c->source_len = len;
    return c;
}

/* At most CONFIG_FILE_MAX bytes; a larger file is an error, not cut short.
 * REGULAR_ONLY (a reload): nothing but a regular file, opened without
 * blocking; otherwise (start, -t) a pipe or a device is read too
 * (`-c /dev/stdin`, `-c <(...)`, `-c /dev/null`). */
static char *
read_file(struct loader *ld, size_t *len, int regular_only)
{
    size_t n = 0;
    ssize_t r;
    char *text;
    int fd;

    /* O_NONBLOCK at a reload: a FIFO put at the config's path would block
     * open() until a writer came, forever perhaps, and the master with it
     * (a reload runs on its loop). At start or -t, waiting for the writer
     * is what the operator asked for. */
    fd = open(ld->file, O_RDONLY | O_CLOEXEC | (regular_only ? O_NONBLOCK : 0));
    if (fd == -1) {
        error_mark(ld, 0, 0, "cannot open: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) == -1) {
        error_mark(ld, 0, 0, "cannot read: %s", strerror(errno));
        close(fd);
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) {
        error_mark(ld, 0, 0, "cannot read: %s", strerror(EISDIR));
        close(fd);
        return NULL;
    }
    if (regular_only && !S_ISREG(st.st_mode)) {
        error_mark(ld, 0, 0, "cannot read: not a regular file (%s); a reload reads only a "
                   "regular file", S_ISFIFO(st.st_mode) ? "a FIFO" : S_ISSOCK(st.st_mode)
                   ? "a socket" : S_ISCHR(st.st_mode) ? "a character device" : "a block device");
        close(fd);
        return NULL;
    }
    text = ds_malloc(CONFIG_FILE_MAX + 1);
    while (n < CONFIG_FILE_MAX + 1) {
        r = read(fd, text + n, CONFIG_FILE_MAX + 1 - n);
        if (r == -1 && errno == EINTR)
            continue;
        if (r == -1) {
            error_mark(ld, 0, 0, "cannot read: %s", strerror(errno));
            close(fd);
            free(text);
            return NULL;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    if (n > CONFIG_FILE_MAX) {
        error_mark(ld, 0, 0, "too large (more than %d MiB)", CONFIG_FILE_MAX >> 20);
        free(text);
        return NULL;
    }
    *len = n;
    return text;
}

static struct ds_config *
load_file(const char *file, char *errors, size_t errors_size, int regular_only)
{
    struct ds_config *c;
    struct loader ld;
    size_t len = 0;
    char *text;

    memset(&ld, 0, sizeof ld);
    ld.file = file;
    ld.errors = errors;
    ld.errors_size = errors_size;
    reset_errors(errors, errors_size);

    text = read_file(&ld, &len, regular_only);
    if (text == NULL)
        return NULL;
    c = load(file, text, len, errors, errors_size, LOAD_CHECKED_SYSTEM);
    free(text);
    return c;
}

struct ds_config *
config_load(const char *file, char *errors, size_t errors_size)
{
    return load_file(file, errors, errors_size, 0);
}

struct ds_config *
config_load_for_reload(const char *file, char *errors, size_t errors_size)
{
    return load_file(file, errors, errors_size, 1);
}

struct ds_config *
config_load_text(const char *file, const char *text, size_t len, char *errors,
                 size_t errors_size)
{
    return load(file, text, len, errors, errors_size, LOAD_CHECKED);
}

struct ds_config *
config_load_text_unchecked(const char *file, const char *text, size_t len, char *errors,
                           size_t errors_size)
{
    return load(file, text, len, errors, errors_size, LOAD_UNCHECKED);
}

void
config_free(struct ds_config *config)
{
    if (config != NULL)
        pool_destroy(config->pool);
}

const struct ds_handler_config *
config_handler(const struct ds_config *config, const char *kind)
{
    size_t i;

    for (i = 0; i < config->handler_count; i++)
        if (strcmp(config->handlers[i].kind, kind) == 0)
            return &config->handlers[i];
    return NULL;
}


/*
 * -T: the tables that read the file, walked again to write it. The first
 * line, a comment, names the file; libyaml writes no comments, so a second
 * emitter quotes the path into it.
 */
int
config_print(const struct ds_config *c, FILE *out)
{
    struct printer p;

    if (fputs("# effective configuration of ", out) == EOF)
        return -1;
    printer_init(&p, out);
    emit_document_start(&p);
    emit_string(&p, c->path);
    emit_document_end(&p);
    if (printer_finish(&p) == -1)
        return -1;

    printer_init(&p, out);
    emit_document_start(&p);
    print_mapping(&p, top_rules, c);
    emit_document_end(&p);
    if (printer_finish(&p) == -1)
        return -1;
    return fflush(out) == EOF || ferror(out) ? -1 : 0;
}
