# dosomething (the command-line client) and the manual pages. Included by
# the top Makefile after its rules; uses its BUILD, CC, LDLIBS_ALL,
# SANFLAGS, PREFIX, DESTDIR and its $(BUILD)/obj/%.o rule (CFLAGS_ALL).
#
#   $(BUILD)/dosomething  the client, built by `make` (all); `make cli` alone
#   man                   nothing to build: the pages are written in man(7)
#   man-check             the pages through groff with every warning on
#   install-cli           PREFIX/bin/dosomething and the pages under
#                         PREFIX/share/man (a prerequisite of install)

CLI_SRC     = $(wildcard src/cli/*.c)
CLI_OBJ     = $(patsubst %.c,$(BUILD)/obj/%.o,$(CLI_SRC)) \
              $(BUILD)/obj/src/core/alloc.o $(BUILD)/obj/src/core/pbwire.o \
              $(BUILD)/obj/src/core/utf8.o \
              $(BUILD)/obj/proto.o
MAN_PAGES   = man/dosomething.1 man/dosomething.yaml.5 man/dosomethingd.8

.PHONY: cli man man-check install-cli

all: $(BUILD)/dosomething
cli: $(BUILD)/dosomething
integration: $(BUILD)/dosomething
install: install-cli

$(BUILD)/dosomething: $(CLI_OBJ)
	$(CC) $(SANFLAGS) -o $@ $^ $(LDLIBS_ALL)

man: $(MAN_PAGES)

# groff says nothing about a clean page.
man-check: $(MAN_PAGES)
	@set -e; for page in $(MAN_PAGES); do \
	    out=$$(LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z $$page 2>&1); \
	    if [ -n "$$out" ]; then echo "$$out"; exit 1; fi; \
	done; echo "man pages: no groff warnings"

install-cli: $(BUILD)/dosomething $(MAN_PAGES)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
	    $(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 755 $(BUILD)/dosomething $(DESTDIR)$(PREFIX)/bin/dosomething
	install -m 644 man/dosomething.1 $(DESTDIR)$(PREFIX)/share/man/man1/dosomething.1
	install -m 644 man/dosomething.yaml.5 $(DESTDIR)$(PREFIX)/share/man/man5/dosomething.yaml.5
	install -m 644 man/dosomethingd.8 $(DESTDIR)$(PREFIX)/share/man/man8/dosomethingd.8
