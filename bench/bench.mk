# The benchmark: included from the top Makefile (after its variables) with
#
#   include bench/bench.mk
#
#   make bench          the full table (< 15 min on 2 cores)
#   make bench-quick    ~20x smaller N, no 1M-queue scenario (< 1 min)
#   make bench-bin      just build/dosomething-bench
#
# BENCH_ARGS passes options to bench/run.py (e.g. BENCH_ARGS="--only 1,2").

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

bench: $(BUILD)/dosomethingd $(BENCH_BIN)
	$(PYTHON) bench/run.py --daemon $(BUILD)/dosomethingd --bench $(BENCH_BIN) \
	    --out $(BUILD)/bench $(BENCH_ARGS)

bench-quick: $(BUILD)/dosomethingd $(BENCH_BIN)
	$(PYTHON) bench/run.py --quick --daemon $(BUILD)/dosomethingd --bench $(BENCH_BIN) \
	    --out $(BUILD)/bench $(BENCH_ARGS)
