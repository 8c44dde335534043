# Fuzzing with libFuzzer (clang -fsanitize=fuzzer,address,undefined).
#
#   make fuzz               each target for FUZZ_SECONDS (default 60) from its seed
#                           corpus (tests/fuzz/corpus/TARGET); what it learns stays
#                           in $(BUILD)/fuzz/corpus/TARGET, crashes go to
#                           $(BUILD)/fuzz/artifacts/TARGET/
#   make fuzz-regressions   every file under tests/fuzz/regressions/ and
#                           tests/fuzz/corpus/ through every target once (CI)
#   make fuzz-build         just the binaries: $(BUILD)/fuzz/fuzz_TARGET
#
# FUZZ_TARGETS="config ipc items journal cli" picks targets, FUZZ_FLAGS adds libFuzzer
# options (e.g. -jobs=2). tests/fuzz/README.md says what each target checks.
#
# The targets (tests/fuzz/fuzz_*.c) are linked against the few sources they
# exercise, compiled here with clang and the sanitizers; never gRPC.
# Needs clang and libFuzzer: Debian 12's clang-14 (with libclang-rt-14-dev).

FUZZ_CC       ?= clang
FUZZ_SECONDS  ?= 60
FUZZ_FLAGS    ?=
FUZZ_DIR       = $(BUILD)/fuzz
FUZZ_TARGETS   = config ipc items journal cli
FUZZ_BINS      = $(patsubst %,$(FUZZ_DIR)/fuzz_%,$(FUZZ_TARGETS))
FUZZ_PKGS      = yaml-0.1 libprotobuf-c libevent libcrypto
FUZZ_SANFLAGS  = -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS    = -std=gnu11 -O1 -g -fno-omit-frame-pointer $(FUZZ_SANFLAGS) \
                 -D_GNU_SOURCE -iquote src -Iinclude -I$(BUILD)/gen \
                 $(shell pkg-config --cflags $(FUZZ_PKGS) 2>/dev/null) $(DEFINES)
FUZZ_LDLIBS    = $(shell pkg-config --libs $(FUZZ_PKGS) 2>/dev/null) -ldl -lcrypt
# The sources are others' and change under us: a clang-only warning there
# should not stop the fuzzers. The targets themselves build with -Werror.
FUZZ_SRC_WARN  = $(WARNFLAGS) -Wno-error

FUZZ_config_SRC = src/core/config.c src/core/log.c src/core/alloc.c src/core/utf8.c \
                  src/core/descriptors.c src/core/auth_file.c
FUZZ_ipc_SRC    = src/ipc/frame.c src/ipc/channel.c src/core/log.c src/core/alloc.c
FUZZ_items_SRC  = src/workers/handler.c src/workers/exec.c src/workers/module.c src/workers/limits.c \
                  src/grpc/filter.c src/core/config.c src/core/log.c src/core/alloc.c \
                  src/core/proctitle.c src/core/utf8.c src/core/descriptors.c src/core/kind.c \
                  src/core/auth_file.c $(PROTO_C)
FUZZ_journal_SRC = src/grpc/journal_store.c src/core/log.c src/core/alloc.c
FUZZ_cli_SRC    = src/cli/json.c src/cli/item.c src/cli/base64.c src/cli/parse.c \
                  src/core/alloc.c src/core/utf8.c $(PROTO_C)

FUZZ_OBJ = $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$(1))

.PHONY: fuzz fuzz-build fuzz-regressions

fuzz-build: $(FUZZ_BINS)

$(FUZZ_DIR)/obj/tests/fuzz/%.o: tests/fuzz/%.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(WARNFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<

$(FUZZ_DIR)/obj/%.o: %.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SRC_WARN) -Wno-missing-prototypes \
	    -fsanitize=fuzzer-no-link -MMD -MP -c -o $@ $<

$(FUZZ_DIR)/fuzz_%: $(FUZZ_DIR)/obj/tests/fuzz/fuzz_%.o
	$(FUZZ_CC) $(FUZZ_SANFLAGS) -fsanitize=fuzzer -o $@ $^ $(FUZZ_LDLIBS)

# Keep the targets' objects: make would delete them as intermediates.
.SECONDARY: $(patsubst %,$(FUZZ_DIR)/obj/tests/fuzz/fuzz_%.o,$(FUZZ_TARGETS))
$(foreach t,$(FUZZ_TARGETS),$(eval $(FUZZ_DIR)/fuzz_$(t): $(call FUZZ_OBJ,$(FUZZ_$(t)_SRC))))

-include $(shell find $(FUZZ_DIR)/obj -name '*.d' 2>/dev/null)

# Per target: -dict when tests/fuzz/TARGET.dict exists.
FUZZ_DICT = $$([ -f tests/fuzz/$$t.dict ] && echo -dict=tests/fuzz/$$t.dict)

fuzz: $(FUZZ_BINS)
	@set -e; for t in $(FUZZ_TARGETS); do \
	    mkdir -p $(FUZZ_DIR)/corpus/$$t $(FUZZ_DIR)/artifacts/$$t; \
	    log=$(FUZZ_DIR)/fuzz_$$t.log; \
	    echo "== fuzz $$t for $(FUZZ_SECONDS) s (log: $$log)"; \
	    if ! $(FUZZ_DIR)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	            -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t/ $(FUZZ_DICT) \
	            $(FUZZ_FLAGS) $(FUZZ_DIR)/corpus/$$t tests/fuzz/corpus/$$t >$$log 2>&1; then \
	        tail -n 80 $$log; \
	        echo "fuzz $$t FAILED: the input is in $(FUZZ_DIR)/artifacts/$$t/;"; \
	        echo "  reproduce: $(FUZZ_DIR)/fuzz_$$t FILE; keep it in tests/fuzz/regressions/$$t/"; \
	        exit 1; \
	    fi; \
	    grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units_added)|^#[0-9]+.*DONE' $$log \
	        | sed 's/^/   /'; \
	done

# Every saved input through every target, each once: fast, for CI.
fuzz-regressions: $(FUZZ_BINS)
	@set -e; \
	files=$$(find tests/fuzz/regressions tests/fuzz/corpus -type f ! -name '*.md' 2>/dev/null | sort); \
	[ -n "$$files" ] || { echo "fuzz-regressions: no inputs"; exit 1; }; \
	count=$$(echo "$$files" | grep -c . || true); \
	for t in $(FUZZ_TARGETS); do \
	    log=$(FUZZ_DIR)/regressions_$$t.log; \
	    if ! $(FUZZ_DIR)/fuzz_$$t -timeout=10 -rss_limit_mb=2048 $$files >$$log 2>&1; then \
	        tail -n 80 $$log; echo "fuzz-regressions: $$t FAILED (log: $$log)"; exit 1; \
	    fi; \
	    echo "fuzz-regressions: $$t: $$count inputs ok"; \
	done
