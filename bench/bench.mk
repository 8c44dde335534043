# The benchmark: included from the top Makefile (after its variables) with
#
#   include bench/bench.mk
#
#   make bench          the full table (< 15 min on 2 cores)
#   make bench-quick    ~20x smaller N, no 1M-queue scenario (< 1 min)
#   make bench-bin      just build/dosomething-bench
#
# BENCH_ARGS passes options to bench/run.py (e.g. BENCH_ARGS="--only 1,2").
#   make bench BASELINE=REV   also scenario B: this tree against git revision REV

BENCH_BIN     = $(BUILD)/dosomething-bench
BENCH_PKGS    = grpc libprotobuf-c libcrypto
BENCH_CFLAGS  = -std=gnu11 -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE -I$(BUILD)/gen \
                $(shell pkg-config --cflags $(BENCH_PKGS) 2>/dev/null)
BENCH_LDLIBS  = $(shell pkg-config --libs $(BENCH_PKGS) 2>/dev/null) -lpthread
BENCH_OBJ     = $(BUILD)/bench/dosomething-bench.o $(BUILD)/bench/proto.o

.PHONY: bench bench-quick bench-bin

bench-bin: $(BENCH_BIN)

$(BUILD)/bench/dosomething-bench.o: bench/dosomething-bench.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -c -o $@ $<

# The generated code, compiled here so the bench does not depend on the
# daemon's object flags (sanitizers, BUILD variants).
$(BUILD)/bench/proto.o: $(PROTO_C) $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -Wno-unused-parameter -c -o $@ $<

$(BENCH_BIN): $(BENCH_OBJ)
	$(CC) -o $@ $^ $(BENCH_LDLIBS)

# make bench BASELINE=REV also builds REV (a git revision) in
# $(BUILD)/baseline/REV and adds scenario B: this tree against it, in the same run.
BASELINE_DIR  = $(BUILD)/baseline/$(BASELINE)
BASELINE_ARGS = $(if $(BASELINE),--baseline-daemon $(BASELINE_DIR)/build/dosomethingd \
                    --baseline-name $(BASELINE))

bench: $(BUILD)/dosomethingd $(BENCH_BIN) $(if $(BASELINE),bench-baseline)
	$(PYTHON) bench/run.py --daemon $(BUILD)/dosomethingd --bench $(BENCH_BIN) \
	    --out $(BUILD)/bench $(BASELINE_ARGS) $(BENCH_ARGS)

.PHONY: bench-baseline
bench-baseline:
	@test -n "$(BASELINE)" || { echo "bench-baseline: set BASELINE=<git rev>"; exit 2; }
	@rev=$$(git rev-parse --verify "$(BASELINE)^{commit}") || exit 2; \
	if [ ! -x $(BASELINE_DIR)/build/dosomethingd ] || \
	   [ "$$(cat $(BASELINE_DIR)/.rev 2>/dev/null)" != "$$rev" ]; then \
	    rm -rf $(BASELINE_DIR) && mkdir -p $(BASELINE_DIR) && \
	    git archive $$rev | tar -x -C $(BASELINE_DIR) && \
	    $(MAKE) --no-print-directory -C $(BASELINE_DIR) all && \
	    echo "$$rev" > $(BASELINE_DIR)/.rev; \
	fi

bench-quick: $(BUILD)/dosomethingd $(BENCH_BIN) $(if $(BASELINE),bench-baseline)
	$(PYTHON) bench/run.py --quick --daemon $(BUILD)/dosomethingd --bench $(BENCH_BIN) \
	    --out $(BUILD)/bench $(BASELINE_ARGS) $(BENCH_ARGS)
