# Sealpost build. `make` builds bin/*, `make test` runs every test, `make asan` the same
# under ASan+UBSan, `make fuzz` each fuzz target for FUZZ_SECONDS, `make clean`.
#
# Layout conventions (no per-module edits needed here):
#   <tier>/main.c            -> bin/<tier>        (tiers: connsrv router inboxsrv keysrv pushsrv)
#   <dir>/<name>_main.c      -> bin/<name>        (client/sealpost_main.c -> bin/sealpost, ...)
#   every other .c in a dir  -> $(BUILD)/lib<dir>.a, linked into that dir's binaries and tests
#   tests/unit/*_test.c      -> Check unit tests; tests/integration/*_itest.c -> integration
#   tests/fuzz/*_fuzz.c      -> libFuzzer targets

CC      ?= cc
BUILD   ?= build
BIN     ?= bin
FUZZ_SECONDS ?= 20
SAN     ?=

PKGS := libevent libevent_openssl libevent_pthreads openssl libsodium hiredis msgpack lmdb sqlite3 inih jansson libcurl readline check

# Install missing Debian packages once, before anything is compiled.
ifeq ($(filter clean format,$(MAKECMDGOALS)),)
DEPS_OK := $(shell pkg-config --exists $(PKGS) && test -f /usr/include/nng/nng.h && test -f /usr/include/uthash.h && command -v redis-server >/dev/null && command -v etcd >/dev/null && echo yes)
ifneq ($(DEPS_OK),yes)
$(info Missing build dependencies: running scripts/deps.sh)
DEPS_RUN := $(shell scripts/deps.sh >&2; echo $$?)
ifneq ($(DEPS_RUN),0)
$(error scripts/deps.sh failed; see the messages above)
endif
endif
endif

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# Programs link the system libraries without the test framework, and only those they use
# (--as-needed); tests add Check.
RUN_LIBS   := -Wl,--as-needed $(shell pkg-config --libs $(filter-out check,$(PKGS)) 2>/dev/null) -lnng -lpthread -lm
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lnng -lpthread -lm

# OPT and SAN are set by the asan/fuzz targets; CFLAGS/LDFLAGS from the environment or the
# command line are appended, never replace the project's flags.
OPT     ?= -O2 -g
SP_CFLAGS = $(OPT) -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -fno-strict-aliasing \
           -I. -Icommon $(PKG_CFLAGS) $(SAN) -MMD -MP $(CFLAGS)
SP_LDFLAGS = $(SAN) $(LDFLAGS)

TIERS    := connsrv router inboxsrv keysrv pushsrv
# Directories with a library of their own (repl: the replication mechanism the stateful
# tiers share); a tier's archive comes before the ones it uses on the link line.
LIBTIERS := connsrv router inboxsrv keysrv pushsrv bench repl
LIBDIRS  := common client client/signal $(LIBTIERS)

# Sources of a directory (not recursive), split into mains and library parts.
dir_srcs  = $(wildcard $(1)/*.c)
dir_mains = $(filter %/main.c %_main.c,$(call dir_srcs,$(1)))
dir_lib   = $(filter-out %/main.c %_main.c,$(call dir_srcs,$(1)))
libname   = $(BUILD)/lib$(subst /,-,$(1)).a
obj       = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

COMMON_LIB := $(BUILD)/libsealpost-common.a
CLIENT_LIB := $(BUILD)/libsealpost-client.a

# Library archives that exist (a dir with no library sources yields none).
TIER_LIBS := $(foreach d,$(LIBTIERS),$(if $(call dir_lib,$(d)),$(call libname,$(d))))
HAVE_CLIENT := $(strip $(call dir_lib,client)$(call dir_lib,client/signal))
ALL_LIBS := $(TIER_LIBS) $(if $(HAVE_CLIENT),$(CLIENT_LIB)) $(COMMON_LIB)

# What each directory's programs link besides common: their own tier only (servers never
# link client code); the load generator drives connections through the client library.
dir_archive = $(if $(filter client client/signal,$(1)),$(CLIENT_LIB),$(call libname,$(1)))
USES_connsrv  := connsrv
USES_router   := router repl
USES_inboxsrv := inboxsrv repl
USES_keysrv   := keysrv repl
USES_pushsrv  := pushsrv
USES_client   := client
USES_bench    := bench client
prog_libs = $(foreach u,$(USES_$(1)),$(call dir_archive,$(u))) $(COMMON_LIB)

# Binaries: tier mains and *_main.c anywhere in LIBDIRS.
TIER_BINS := $(foreach t,$(TIERS),$(if $(wildcard $(t)/main.c),$(BIN)/$(t)))
NAMED_MAINS := $(foreach d,$(LIBDIRS),$(filter %_main.c,$(call dir_srcs,$(d))))
NAMED_BINS := $(foreach m,$(NAMED_MAINS),$(BIN)/$(patsubst %_main.c,%,$(notdir $(m))))
BINS := $(TIER_BINS) $(NAMED_BINS)

UNIT_TESTS  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/*_test.c))
ITESTS      := $(patsubst tests/integration/%.c,$(BUILD)/tests/%,$(wildcard tests/integration/*_itest.c))
TEST_HELPERS := $(call dir_srcs,tests/lib)
FUZZERS     := $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(wildcard tests/fuzz/*_fuzz.c))

.PHONY: all test unit asan fuzz fuzz-build clean format bench chaos
# Keep objects of test helpers (they are intermediate to make otherwise).
.SECONDARY:
all: $(BINS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(SP_CFLAGS) -c $< -o $@

$(COMMON_LIB): $(call obj,$(call dir_lib,common))
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(CLIENT_LIB): $(call obj,$(call dir_lib,client) $(call dir_lib,client/signal))
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

define tier_lib_rule
$(call libname,$(1)): $(call obj,$(call dir_lib,$(1)))
	@mkdir -p $$(dir $$@)
	rm -f $$@ && ar rcs $$@ $$^
endef
$(foreach d,$(LIBTIERS),$(if $(call dir_lib,$(d)),$(eval $(call tier_lib_rule,$(d)))))

define tier_bin_rule
$(BIN)/$(1): $(call obj,$(1)/main.c) $(call prog_libs,$(1))
	@mkdir -p $$(dir $$@)
	$$(CC) $$(SP_LDFLAGS) -o $$@ $$(call obj,$(1)/main.c) $(call prog_libs,$(1)) $$(RUN_LIBS)
endef
$(foreach t,$(TIERS),$(if $(wildcard $(t)/main.c),$(eval $(call tier_bin_rule,$(t)))))

define named_bin_rule
$(BIN)/$(patsubst %_main.c,%,$(notdir $(1))): $(call obj,$(1)) $(call prog_libs,$(patsubst %/,%,$(dir $(1))))
	@mkdir -p $$(dir $$@)
	$$(CC) $$(SP_LDFLAGS) -o $$@ $$(call obj,$(1)) $(call prog_libs,$(patsubst %/,%,$(dir $(1)))) $$(RUN_LIBS)
endef
$(foreach m,$(NAMED_MAINS),$(eval $(call named_bin_rule,$(m))))

$(BUILD)/tests/%: tests/unit/%.c $(call obj,$(TEST_HELPERS)) $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(SP_CFLAGS) -Itests/lib $(SP_LDFLAGS) -o $@ $< $(call obj,$(TEST_HELPERS)) $(ALL_LIBS) $(PKG_LIBS)

$(BUILD)/tests/%: tests/integration/%.c $(call obj,$(TEST_HELPERS)) $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(SP_CFLAGS) -Itests/lib $(SP_LDFLAGS) -o $@ $< $(call obj,$(TEST_HELPERS)) $(ALL_LIBS) $(PKG_LIBS)

# Everything the test runner needs, built in one (parallelisable) step.
unit: $(BINS) $(UNIT_TESTS) $(ITESTS)

SP_TEST_JOBS ?= 2
test:
	$(MAKE) unit
	SP_BUILD=$(BUILD) SP_BIN=$(BIN) SP_TEST_JOBS=$(SP_TEST_JOBS) tests/run.sh

# The replication fault tests over and over (CHAOS_ROUNDS times each, default 10): the
# long fault schedule whose one round runs in `make test`.
CHAOS_ROUNDS ?= 10
CHAOS_TESTS ?= inbox_repl_itest inbox_partition_itest inbox_etcd_restart_itest inbox_snapshot_itest
chaos:
	$(MAKE) unit
	@set -e; for t in $(CHAOS_TESTS); do [ -x $(BUILD)/tests/$$t ] || continue; \
		for i in $$(seq $(CHAOS_ROUNDS)); do echo "chaos: $$t round $$i/$(CHAOS_ROUNDS)"; \
			SP_BIN=$(BIN) $(BUILD)/tests/$$t > $(BUILD)/chaos-$$t.log 2>&1 || \
			{ echo "chaos: $$t failed in round $$i"; tail -n 40 $(BUILD)/chaos-$$t.log; exit 1; }; \
		done; done; echo "chaos: all rounds passed"

asan:
	SP_SANITIZED=1 $(MAKE) BUILD=build-asan BIN=build-asan/bin \
		SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
		OPT="-O1 -g" test

# Fuzz targets: every library source rebuilt with clang's coverage instrumentation.
fuzz-build: $(FUZZERS)
$(BUILD)/fuzz/%: tests/fuzz/%.c $(ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(SP_CFLAGS) -fsanitize=fuzzer $(SP_LDFLAGS) -o $@ $< $(ALL_LIBS) $(PKG_LIBS)

fuzz:
	$(MAKE) BUILD=build-fuzz BIN=build-fuzz/bin CC=clang \
		SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all" \
		OPT="-O1 -g" fuzz-build
	FUZZ_SECONDS=$(FUZZ_SECONDS) SP_BUILD=build-fuzz tests/fuzz/run.sh

bench: all
	bench/run.sh

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-asan build-fuzz bin

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
