#!/usr/bin/env bash
# test/lib/cluster.sh - a throwaway PostgreSQL cluster for tests, demo, bench
#
# Source it, then:
#   cqrs_cluster_start [extra postgresql.conf lines...]
#   cqrs_psql -c 'select 1'          # psql on the cluster, as its owner
#   cqrs_as_owner cmd args...        # any command as the cluster's owner
#   cqrs_cluster_stop                # also run by an EXIT trap
# The cluster lives in $CQRS_WORK (a fresh temporary directory), listens on
# a private Unix socket only, and belongs to an unprivileged user: postgres
# refuses to run as root, so as root we run it as the "postgres" user.
# Exports PGHOST, PGPORT, PGUSER, PGDATABASE for the commands that follow.

PGMAJOR=${PGMAJOR:-15}
CQRS_BINDIR=$("$(cqrs_pg_config 2>/dev/null || echo pg_config)" --bindir 2>/dev/null || echo "/usr/lib/postgresql/$PGMAJOR/bin")

if [ "$(id -u)" -eq 0 ]; then
	CQRS_OWNER=${CQRS_OWNER:-postgres}
	id "$CQRS_OWNER" >/dev/null 2>&1 || useradd --system --create-home "$CQRS_OWNER"
else
	CQRS_OWNER=$(id -un)
fi

cqrs_as_owner() {
	if [ "$(id -un)" = "$CQRS_OWNER" ]; then
		"$@"
	else
		runuser -u "$CQRS_OWNER" -- env PATH="$CQRS_BINDIR:$PATH" \
			PGHOST="${PGHOST:-}" PGPORT="${PGPORT:-}" PGUSER="${PGUSER:-}" \
			PGDATABASE="${PGDATABASE:-}" "$@"
	fi
}

# A port nobody listens on, from a range unlikely to hold a real server.
cqrs_free_port() {
	local p
	for p in $(seq 54400 54499); do
		if ! (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null &&
		   [ ! -e "/tmp/.s.PGSQL.$p" ]; then
			echo "$p"; return
		fi
	done
	echo 54499
}

cqrs_cluster_start() {
	CQRS_WORK=${CQRS_WORK:-$(mktemp -d /tmp/pg_cqrs.XXXXXX)}
	chmod 755 "$CQRS_WORK"
	chown "$CQRS_OWNER" "$CQRS_WORK" 2>/dev/null || true
	export PGHOST="$CQRS_WORK" PGPORT PGUSER="$CQRS_OWNER" PGDATABASE=postgres
	PGPORT=$(cqrs_free_port)
	cqrs_as_owner "$CQRS_BINDIR/initdb" -D "$CQRS_WORK/data" -A trust -U "$CQRS_OWNER" \
		--no-sync -E UTF8 --locale=C.UTF-8 >"$CQRS_WORK/initdb.log" 2>&1 ||
		{ cat "$CQRS_WORK/initdb.log" >&2; return 1; }
	{
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$CQRS_WORK'"
		echo "port = $PGPORT"
		echo "wal_level = logical"
		echo "output_plugin_libraries = 'pgoutput, test_decoding, pg_cqrs'"
		echo "shared_preload_libraries = 'pg_cqrs'"
		echo "max_prepared_transactions = 4"
		echo "max_replication_slots = 10"
		echo "max_wal_senders = 10"
		echo "lc_messages = 'C'"
		local line
		for line in "$@"; do echo "$line"; done
	} | cqrs_as_owner tee -a "$CQRS_WORK/data/postgresql.conf" >/dev/null
	trap cqrs_cluster_stop EXIT
	cqrs_as_owner "$CQRS_BINDIR/pg_ctl" -D "$CQRS_WORK/data" -l "$CQRS_WORK/server.log" \
		-w -t 60 start >/dev/null ||
		{ cat "$CQRS_WORK/server.log" >&2; return 1; }
}

cqrs_cluster_stop() {
	if [ -n "${CQRS_WORK:-}" ] && [ -f "$CQRS_WORK/data/postmaster.pid" ]; then
		cqrs_as_owner "$CQRS_BINDIR/pg_ctl" -D "$CQRS_WORK/data" -m fast -w stop >/dev/null 2>&1 || true
	fi
	if [ -n "${CQRS_WORK:-}" ] && [ -z "${CQRS_KEEP:-}" ]; then
		rm -rf "$CQRS_WORK"
	fi
}

cqrs_psql() {
	cqrs_as_owner "$CQRS_BINDIR/psql" -X -v ON_ERROR_STOP=1 -q "$@"
}
