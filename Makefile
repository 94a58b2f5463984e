# Makefile for pg_cqrs
#
# The build itself is plain PGXS: "make PG_CONFIG=/usr/lib/postgresql/17/bin/pg_config
# install" builds for that server.  The front-door targets (check,
# check-all, demo, bench, deps) are scripts: they install what they need
# when run as root, start their own throwaway cluster as an unprivileged
# user and never touch a server somebody started by hand.  They take the
# PostgreSQL major version as PG=17 (or PGMAJOR=17, or PG_CONFIG=...; 15 by
# default); a version this Debian does not ship runs in a cached chroot.
# "make check-all" runs check on 15, 17 and 18.  PGXS defines a "check" of
# its own, so it is only included when none of those targets is asked for.

EXTENSION    = pg_cqrs
MODULE_big   = pg_cqrs
DATA         = sql/pg_cqrs--0.1.0.sql sql/pg_cqrs--0.1.0--0.2.0.sql \
	       sql/pg_cqrs--0.2.0--0.3.0.sql sql/pg_cqrs--0.3.0--0.4.0.sql \
	       sql/pg_cqrs--0.4.0--0.5.0.sql sql/pg_cqrs--0.5.0--0.6.0.sql \
	       sql/pg_cqrs--0.6.0--0.7.0.sql sql/pg_cqrs--0.7.0--0.8.0.sql
PGFILEDESC   = "pg_cqrs - CQRS and event sourcing inside PostgreSQL"

OBJS = \
	src/pg_cqrs.o \
	src/wakeup.o \
	src/audit.o \
	src/log_security.o \
	src/horizon.o \
	src/standby.o \
	src/eventlog.o \
	src/filterscan.o \
	src/import.o \
	src/lifecycle.o \
	src/redact.o \
	src/archive.o \
	src/event_input.o \
	src/append.o \
	src/read.o \
	src/guard.o \
	src/scope.o \
	src/catalog.o \
	src/apply.o \
	src/projection.o \
	src/worker.o \
	src/retention.o \
	src/rowhash.o \
	src/digest.o \
	src/replay.o \
	src/capture.o \
	src/capture_trigger.o \
	src/decoder.o \
	src/outbox.o

CQRS_HEADERS = src/pg_cqrs.h src/compat.h
PG_CFLAGS   = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare

PG_CONFIG ?= pg_config

FRONT_DOOR = check check-all demo bench deps
.PHONY: $(FRONT_DOOR)

ifeq ($(filter $(FRONT_DOOR),$(MAKECMDGOALS)),)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifeq ($(wildcard $(PGXS)),)
$(error PostgreSQL server development files not found (pg_config --pgxs). \
Run "make deps" as root, install postgresql-server-dev-NN, or set PG_CONFIG)
endif
include $(PGXS)
$(OBJS): $(CQRS_HEADERS)

# pg_cqrs_relay (src/relay/), a frontend program linked with libpq and
# libnats: its own Makefile, built and installed (next to pg_recvlogical,
# in pg_config --bindir) with the extension when libnats-dev is installed,
# skipped with a message otherwise.
RELAY_NATS_H := $(firstword $(wildcard /usr/include/nats/nats.h /usr/local/include/nats/nats.h))
.PHONY: relay install-relay clean-relay
ifneq ($(RELAY_NATS_H),)
all: relay
install: install-relay
relay:
	$(MAKE) -C src/relay PG_CONFIG=$(PG_CONFIG)
install-relay: relay
	$(MAKE) -C src/relay PG_CONFIG=$(PG_CONFIG) install
else
all: relay
relay:
	@echo "pg_cqrs: libnats-dev is not installed: pg_cqrs_relay (src/relay) is not built" >&2
endif
clean: clean-relay
clean-relay:
	$(MAKE) -C src/relay clean
else
# Each script installs what it is missing (when root) and explains what is
# missing otherwise, builds and installs the extension, then does its job.
deps:
	@bash test/lib/deps.sh
check:
	@bash test/run.sh
check-all:
	@bash test/matrix.sh
demo:
	@bash examples/demo.sh
bench:
	@bash bench/run.sh
endif
