# dosomethingd: build, deps, run, test, bench, install.
#
#   make            build build/dosomethingd
#   make run        the daemon in the foreground on conf/dosomething.yaml
#   make test       unit tests (plain and under valgrind), then the integration suite
#   make integration TESTS=tests/integration/test_x.py   some of the suite
#   make check-asan the whole suite against an ASan+UBSan build
#   make bench      the benchmark table (see bench/)
#   make install    PREFIX=/usr/local DESTDIR=
#
# `make run` and `make test` install missing Debian packages first (make deps).

PREFIX     ?= /usr/local
SYSCONFDIR ?= $(PREFIX)/etc
RUNSTATEDIR ?= /run
DESTDIR    ?=
BUILD      ?= build
PYTHON     ?= /usr/bin/python3

CC         ?= cc
PKGS        = grpc libprotobuf-c yaml-0.1 libevent libevent_pthreads libcrypto libsystemd hiredis \
              libxcrypt
OPTFLAGS   ?= -O2 -g
WARNFLAGS   = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
              -Wno-unused-parameter
CFLAGS_ALL  = -std=gnu11 $(OPTFLAGS) $(WARNFLAGS) $(SANFLAGS) -D_GNU_SOURCE \
              -iquote src -Iinclude -I$(BUILD)/gen $(shell pkg-config --cflags $(PKGS) 2>/dev/null) \
              $(CFLAGS)
LDLIBS_ALL  = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -ldl -lm $(LDLIBS)

# Where the binary looks for its config when -c is not given: DS_CONF, under
# DS_PREFIX (-p) when relative. A build in the source tree uses the tree
# itself; `make install` rebuilds with SYSCONFDIR/dosomething/dosomething.yaml.
DS_PREFIX  ?= $(CURDIR)
DS_CONF    ?= conf/dosomething.yaml
VERSION     = 0.1.0
DEFINES     = -DDS_PREFIX='"$(DS_PREFIX)"' -DDS_CONF_PATH='"$(DS_CONF)"' -DDS_VERSION='"$(VERSION)"'

# Debian packages: to build, and to test.
DEB_BUILD   = gcc make pkg-config libgrpc-dev libprotobuf-c-dev protobuf-c-compiler \
              libyaml-dev libevent-dev libssl-dev libsystemd-dev libhiredis-dev libcrypt-dev
DEB_TEST    = libcmocka-dev valgrind python3-grpcio python3-protobuf python3-grpc-tools \
              python3-pytest python3-pytest-xdist python3-yaml python3-prometheus-client openssl \
              clang libclang-rt-14-dev nginx redis-server redis-sentinel python3-h2 \
              chromium chromium-driver python3-selenium curl

PROTO       = proto/com/agrounds/dosomething/v1/do_something.proto
PROTO_C     = $(BUILD)/gen/com/agrounds/dosomething/v1/do_something.pb-c.c
PROTO_H     = $(PROTO_C:.c=.h)
# gRPC's own services the grpc process serves (vendored under proto/grpc).
GRPC_PROTOS = proto/grpc/health/v1/health.proto proto/grpc/reflection/v1/reflection.proto
GRPC_PROTO_C = $(patsubst proto/%.proto,$(BUILD)/gen/%.pb-c.c,$(GRPC_PROTOS))
GRPC_PROTO_H = $(GRPC_PROTO_C:.c=.h)
GRPC_PROTO_OBJ = $(patsubst $(BUILD)/gen/%.c,$(BUILD)/obj/gen/%.o,$(GRPC_PROTO_C))

CORE_SRC    = $(wildcard src/core/*.c) $(wildcard src/ipc/*.c)
DAEMON_SRC  = $(CORE_SRC) $(wildcard src/master/*.c) $(wildcard src/grpc/*.c) \
              $(wildcard src/workers/*.c)
DAEMON_OBJ  = $(patsubst %.c,$(BUILD)/obj/%.o,$(DAEMON_SRC)) $(BUILD)/obj/proto.o \
              $(BUILD)/obj/descriptor.o $(BUILD)/obj/status_page_html.o $(GRPC_PROTO_OBJ)
LIB_OBJ     = $(filter-out $(BUILD)/obj/src/master/main.o,$(DAEMON_OBJ))

UNIT_SRC    = $(wildcard tests/unit/test_*.c)
UNIT_BIN    = $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))

.PHONY: all deps deps-test run test unit valgrind integration check-asan bench bench-quick \
        install clean pystubs

all: $(BUILD)/dosomethingd

$(PROTO_C) $(PROTO_H): $(PROTO)
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen -Iproto $(PROTO)

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen -Iproto $<

.SECONDARY: $(GRPC_PROTO_C) $(GRPC_PROTO_H)

$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Wno-missing-prototypes -c -o $@ $<

# The contract's FileDescriptorProto, for server reflection, as a C array.
$(BUILD)/gen/descriptor.c: $(PROTO)
	@mkdir -p $(BUILD)/gen
	protoc-c --descriptor_set_out=$(BUILD)/gen/descriptor.bin -Iproto $(PROTO)
	{ echo '#include <stddef.h>'; \
	  echo 'const unsigned char ds_descriptor_set[] = {'; \
	  od -An -v -tx1 $(BUILD)/gen/descriptor.bin | sed 's/\([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	  echo '};'; \
	  echo 'const size_t ds_descriptor_set_len = sizeof ds_descriptor_set;'; } > $@

$(BUILD)/obj/descriptor.o: $(BUILD)/gen/descriptor.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Wno-missing-prototypes -Wno-missing-variable-declarations -c -o $@ $<

# The status page (HTML, CSS, JS in one file) as a C array: od and sed, as above.
$(BUILD)/gen/status_page_html.c: src/grpc/status_page.html
	@mkdir -p $(BUILD)/gen
	{ echo '#include <stddef.h>'; \
	  echo 'const unsigned char ds_status_page[] = {'; \
	  od -An -v -tx1 $< | sed 's/\([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	  echo '};'; \
	  echo 'const size_t ds_status_page_len = sizeof ds_status_page;'; } > $@

$(BUILD)/obj/status_page_html.o: $(BUILD)/gen/status_page_html.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Wno-missing-prototypes -Wno-missing-variable-declarations -c -o $@ $<

$(BUILD)/obj/proto.o: $(PROTO_C)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Wno-missing-prototypes -c -o $@ $<

$(BUILD)/obj/%.o: %.c $(PROTO_H) $(GRPC_PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(DEFINES) -MMD -MP -c -o $@ $<

$(BUILD)/dosomethingd: $(DAEMON_OBJ)
	$(CC) $(SANFLAGS) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/tests/%: tests/unit/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(DEFINES) -Wno-missing-prototypes -o $@ $^ $(LDLIBS_ALL) -lcmocka

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# Further pieces (handler modules, the CLI, benchmarks) bring their own rules.
include $(wildcard mk/*.mk) $(wildcard bench/*.mk)

# Install what is missing, once, as root or through sudo.
deps:
	@missing=""; \
	for p in $(DEB_BUILD) $(if $(filter deps-test,$(MAKECMDGOALS))$(WITH_TEST),$(DEB_TEST)); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' \
	        || missing="$$missing $$p"; \
	done; \
	if [ -n "$(filter deps-test,$(MAKECMDGOALS))$(WITH_TEST)" ]; then \
	    command -v node >/dev/null || missing="$$missing nodejs"; \
	    command -v npm >/dev/null || missing="$$missing npm"; \
	fi; \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	    $$sudo apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q $$missing; \
	fi

deps-test:
	@$(MAKE) --no-print-directory deps WITH_TEST=1

run: deps
	@$(MAKE) --no-print-directory all
	$(BUILD)/dosomethingd -c conf/dosomething.yaml

pystubs: $(BUILD)/py/.stamp
$(BUILD)/py/.stamp: $(PROTO)
	@mkdir -p $(BUILD)/py
	$(PYTHON) -m grpc_tools.protoc -Iproto --python_out=$(BUILD)/py --grpc_python_out=$(BUILD)/py $(PROTO)
	@touch $@

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

valgrind: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do \
	    echo "== valgrind $$t"; \
	    valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
	        $$t >/dev/null; \
	done; echo "valgrind: unit tests clean"

# Two pytest workers (pytest-xdist), a test file each at a time: most tests
# wait on timers and daemons more than they use the CPU, so the suite takes
# about half as long. XDIST= runs them one by one (check-asan does).
XDIST       ?= -n 2 --dist loadfile

integration: $(BUILD)/dosomethingd pystubs
	DS_BINARY=$(CURDIR)/$(BUILD)/dosomethingd DS_PYSTUBS=$(CURDIR)/$(BUILD)/py \
	    $(PYTHON) -m pytest -q -rs --durations=15 -p no:cacheprovider $(XDIST) $(or $(TESTS),tests/integration) $(PYTEST_ARGS)

# make test installed every dependency: a test that finds one missing fails
# (DS_STRICT_DEPS) instead of skipping, so a broken set-up cannot look green.
test: deps-test
	@$(MAKE) --no-print-directory all unit valgrind fuzz-regressions
	@DS_STRICT_DEPS=1 $(MAKE) --no-print-directory integration

check-asan: deps-test
	@$(MAKE) --no-print-directory BUILD=build/asan OPTFLAGS="-O1 -g -fno-omit-frame-pointer" \
	    SANFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined" all unit
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:handle_segv=0 UBSAN_OPTIONS=print_stacktrace=1 \
	    DS_STRICT_DEPS=1 DS_SANITIZED=1 \
	    $(MAKE) --no-print-directory BUILD=build/asan XDIST= \
	    SANFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	    OPTFLAGS="-O1 -g -fno-omit-frame-pointer" integration

# make install [PREFIX=/usr/local] [SYSCONFDIR=PREFIX/etc] [DESTDIR=]
# For the systemd unit as shipped: make install PREFIX=/usr SYSCONFDIR=/etc
install:
	@$(MAKE) --no-print-directory BUILD=build/install DS_PREFIX=$(PREFIX) \
	    DS_CONF=$(SYSCONFDIR)/dosomething/dosomething.yaml all
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(SYSCONFDIR)/dosomething \
	    $(DESTDIR)$(PREFIX)/lib/systemd/system $(DESTDIR)$(SYSCONFDIR)/logrotate.d
	install -m 755 build/install/dosomethingd $(DESTDIR)$(PREFIX)/sbin/dosomethingd
	@# An installed config keeps its pid file under RUNSTATEDIR; an existing one is kept.
	[ -e $(DESTDIR)$(SYSCONFDIR)/dosomething/dosomething.yaml ] || \
	    sed 's|^pid_file: .*|pid_file: $(RUNSTATEDIR)/dosomething/dosomething.pid|' \
	        conf/dosomething.yaml > $(DESTDIR)$(SYSCONFDIR)/dosomething/dosomething.yaml
	install -m 644 contrib/systemd/dosomethingd.service $(DESTDIR)$(PREFIX)/lib/systemd/system/
	install -m 644 contrib/logrotate/dosomethingd $(DESTDIR)$(SYSCONFDIR)/logrotate.d/dosomethingd

clean:
	rm -rf build
