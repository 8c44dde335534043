/*
 * Fuzz target: the config loader.
 *
 * The input is the text of "fuzz.yaml". It goes through config_load_text()
 * (what a child does with the text the master validated) and, when that
 * refuses it, config_load_text_unchecked() (which also lets through the keys
 * this build parses but does not implement, so their printing is covered).
 *
 * Checked beyond "no crash, no leak, no UB":
 *   - a refused config leaves at least one error, every error line names
 *     the file, and the buffer is NUL-terminated within its size with no
 *     control characters but the newlines between lines;
 *   - a loaded config prints (config_print) as YAML that loads back and
 *     prints the same again, as config.h promises.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/log.h"

#define FUZZ_FILE "fuzz.yaml"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    log_open("stderr", DS_LOG_ERROR);
    return 0;
}

static void
check_errors(const char *errors, size_t size, const char *what)
{
    size_t len = strnlen(errors, size);
    if (len == size) {
        fprintf(stderr, "%s: error buffer not NUL-terminated\n", what);
        abort();
    }
    if (size > 1 && len == 0) {
        fprintf(stderr, "%s: refused without an error message\n", what);
        abort();
    }
    const char *line = errors;
    while (*line != '\0') {
        const char *end = strchr(line, '\n');
        size_t n = end != NULL ? (size_t)(end - line) : strlen(line);
        size_t prefix = sizeof FUZZ_FILE - 1;
        /* The last line may be cut short by the buffer. */
        size_t want = n < prefix ? n : prefix;
        if (memcmp(line, FUZZ_FILE, want) != 0 || (n > prefix && line[prefix] != ':')) {
            fprintf(stderr, "%s: error line does not name the file: %.*s\n", what, (int)n, line);
            abort();
        }
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)line[i];
            if (c < 0x20 || c == 0x7f) {
                fprintf(stderr, "%s: control character 0x%02x in an error line\n", what, c);
                abort();
            }
        }
        if (end == NULL)
            break;
        line = end + 1;
    }
}

static char *
print_to_memory(const struct ds_config *config, size_t *len)
{
    char *text = NULL;
    FILE *out = open_memstream(&text, len);
    if (out == NULL)
        abort();
    if (config_print(config, out) != 0) {
        fprintf(stderr, "config_print failed\n");
        abort();
    }
    fclose(out);
    return text;
}

/* config_print's output loads back to a config that prints the same. */
static void
check_round_trip(const struct ds_config *config,
                 struct ds_config *(*load)(const char *, const char *, size_t, char *, size_t))
{
    size_t len1 = 0, len2 = 0;
    char *text1 = print_to_memory(config, &len1);
    char errors[4096];
    struct ds_config *again = load(FUZZ_FILE, text1, len1, errors, sizeof errors);
    if (again == NULL) {
        fprintf(stderr, "printed config does not load back:\n%s\n--- printed:\n%s\n",
                errors, text1);
        abort();
    }
    char *text2 = print_to_memory(again, &len2);
    if (len1 != len2 || memcmp(text1, text2, len1) != 0) {
        fprintf(stderr, "printed config changes when loaded back:\n--- first:\n%s\n"
                "--- second:\n%s\n", text1, text2);
        abort();
    }
    FILE *null = fopen("/dev/null", "w");
    if (null != NULL) {
        config_print(config, null);
        fclose(null);
    }
    free(text2);
    config_free(again);
    free(text1);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size heap buffer, so ASan sees a write past it; small on odd
     * sizes so the truncation path runs too. */
    size_t errors_size = (size & 1) ? 64 : 4096;
    char *errors = malloc(errors_size);
    if (errors == NULL)
        return 0;
    memset(errors, 'X', errors_size);

    struct ds_config *config = config_load_text(FUZZ_FILE, (const char *)data, size,
                                                errors, errors_size);
    if (config != NULL) {
        check_round_trip(config, config_load_text);
        config_free(config);
    } else {
        check_errors(errors, errors_size, "config_load_text");
        memset(errors, 'X', errors_size);
        config = config_load_text_unchecked(FUZZ_FILE, (const char *)data, size, errors,
                                            errors_size);
        if (config != NULL) {
            check_round_trip(config, config_load_text_unchecked);
            config_free(config);
        } else {
            check_errors(errors, errors_size, "config_load_text_unchecked");
        }
    }
    free(errors);
    return 0;
}
