# Handler modules. Included by the top Makefile after its variables.
#
#   $(HANDLER_MODULES)       the example modules of contrib/modules, built
#                            into $(BUILD)/modules/ by `make` (all)
#   $(HANDLER_TEST_MODULES)  modules the handler tests load, built from
#                            tests/unit/test_handlers.c with DS_TEST_MODULE
#                            (before build/tests/test_handlers)
#   install-handlers         the public header, dosomething.pc and the
#                            example modules (a prerequisite of install)

HANDLER_MODULEDIR     = $(PREFIX)/lib/dosomething/modules
HANDLER_ABI_VERSION   = $(shell sed -n 's/^\#define DS_HANDLER_ABI_VERSION \([0-9]*\).*/\1/p' \
                          include/dosomething/handler.h)

MODULE_CFLAGS   = -std=gnu11 $(OPTFLAGS) $(WARNFLAGS) $(SANFLAGS) -D_GNU_SOURCE -fPIC -Iinclude \
                  $(CFLAGS)
MODULE_LDFLAGS  = -shared $(SANFLAGS)

HANDLER_MODULES       = $(BUILD)/modules/gzip.so
MODULE_LIBS_gzip      = -lz

HANDLER_TEST_MODULES  = $(BUILD)/tests/modules/test_module.so \
                        $(BUILD)/tests/modules/test_module_abi99.so \
                        $(BUILD)/tests/modules/test_module_nosym.so \
                        $(BUILD)/tests/modules/test_module_quick.so \
                        $(BUILD)/tests/modules/test_module_cancel.so \
                        $(BUILD)/tests/modules/test_module_retry.so \
                        $(BUILD)/tests/modules/test_module_quick_retry.so \
                        $(BUILD)/tests/modules/test_module_quick_cancel.so

.PHONY: handler-modules install-handlers

all: $(HANDLER_MODULES)
handler-modules: $(HANDLER_MODULES) $(HANDLER_TEST_MODULES)

$(BUILD)/modules/%.so: contrib/modules/%.c include/dosomething/handler.h
	@mkdir -p $(dir $@)
	$(CC) $(MODULE_CFLAGS) $(MODULE_LDFLAGS) -o $@ $< $(MODULE_LIBS_$*)

$(BUILD)/tests/modules/test_module.so: tests/unit/test_handlers.c include/dosomething/handler.h
	@mkdir -p $(dir $@)
	$(CC) $(MODULE_CFLAGS) -DDS_TEST_MODULE $(MODULE_LDFLAGS) -o $@ $<

$(BUILD)/tests/modules/test_module_abi99.so: tests/unit/test_handlers.c include/dosomething/handler.h
	@mkdir -p $(dir $@)
	$(CC) $(MODULE_CFLAGS) -DDS_TEST_MODULE -DDS_TEST_MODULE_ABI=99 $(MODULE_LDFLAGS) -o $@ $<

$(BUILD)/tests/modules/test_module_nosym.so: tests/unit/test_handlers.c include/dosomething/handler.h
	@mkdir -p $(dir $@)
	$(CC) $(MODULE_CFLAGS) -DDS_TEST_MODULE -DDS_TEST_MODULE_NOSYM $(MODULE_LDFLAGS) -o $@ $<

$(BUILD)/tests/modules/test_module_quick.so: tests/unit/test_handlers.c include/dosomething/handler.h
	@mkdir -p $(dir $@)
	$(CC) $(MODULE_CFLAGS) -DDS_TEST_MODULE -DDS_TEST_MODULE_QUICK $(MODULE_LDFLAGS) -o $@ $<

$(BUILD)/tests/modules/test_module_cancel.so: tests/unit/test_handlers.c include/dosomething/handler.h
	@mkdir -p $(dir $@)
	$(CC) $(MODULE_CFLAGS) -DDS_TEST_MODULE -DDS_TEST_MODULE_CANCEL $(MODULE_LDFLAGS) -o $@ $<

$(BUILD)/tests/modules/test_module_retry.so: tests/unit/test_handlers.c include/dosomething/handler.h
	@mkdir -p $(dir $@)
	$(CC) $(MODULE_CFLAGS) -DDS_TEST_MODULE -DDS_TEST_MODULE_RETRY $(MODULE_LDFLAGS) -o $@ $<

# Order-only: the test loads them at run time; they are not linked in.
$(BUILD)/tests/test_handlers: | $(HANDLER_MODULES) $(HANDLER_TEST_MODULES)

install: install-handlers
install-handlers: $(HANDLER_MODULES)
	install -d $(DESTDIR)$(PREFIX)/include/dosomething $(DESTDIR)$(PREFIX)/share/pkgconfig \
	    $(DESTDIR)$(HANDLER_MODULEDIR)
	install -m 644 include/dosomething/handler.h $(DESTDIR)$(PREFIX)/include/dosomething/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    -e 's|@MODULEDIR@|$(HANDLER_MODULEDIR)|g' -e 's|@ABI_VERSION@|$(HANDLER_ABI_VERSION)|g' \
	    contrib/pkgconfig/dosomething.pc.in > $(DESTDIR)$(PREFIX)/share/pkgconfig/dosomething.pc
	install -m 755 $(HANDLER_MODULES) $(DESTDIR)$(HANDLER_MODULEDIR)/

$(BUILD)/tests/modules/test_module_quick_retry.so: tests/unit/test_handlers.c include/dosomething/handler.h
	@mkdir -p $(dir $@)
	$(CC) $(MODULE_CFLAGS) -DDS_TEST_MODULE -DDS_TEST_MODULE_QUICK -DDS_TEST_MODULE_RETRY \
	    $(MODULE_LDFLAGS) -o $@ $<

$(BUILD)/tests/modules/test_module_quick_cancel.so: tests/unit/test_handlers.c include/dosomething/handler.h
	@mkdir -p $(dir $@)
	$(CC) $(MODULE_CFLAGS) -DDS_TEST_MODULE -DDS_TEST_MODULE_QUICK -DDS_TEST_MODULE_CANCEL \
	    $(MODULE_LDFLAGS) -o $@ $<
