# bench/online_sync.sh - the online_sync group of "make bench", sourced by
# bench/run.sh after its helpers are defined.
#
# What appends wait for while a sync projection is created, or replayed,
# over a long log.  A log of $ONLINE_EVENTS events (10000 streams, loaded
# with cqrs.import_events) and a trivial handler (one INSERT per event).
# $ONLINE_CLIENTS pgbench clients append one event per transaction, each to
# a stream of its own, with per-transaction logging; in each window the
# lifecycle call runs in another session, and the latencies of the appends
# that overlap the window are summed up (p99, max, and the max against the
# baseline window's max, measured in the same run):
#
#   baseline            nothing but the appends, for 5 s
#   create online       cqrs.create_projection(..., 'sync') at READ COMMITTED
#   create blocking     the same in a REPEATABLE READ transaction, which takes
#                       the ShareLock first (the pre-0.7.0 behaviour)
#   replay concurrently cqrs.replay(name, concurrently => true), until the
#                       worker has switched the projection back to running
#   replay (one txn)    cqrs.replay(name): appends wait for all of it
#
# The appends of every window but the first apply the projection (it
# exists, or is being created), so their latency is a little higher anyway.

ONLINE_EVENTS=${BENCH_ONLINE_EVENTS:-1000000}
ONLINE_CLIENTS=${BENCH_ONLINE_CLIENTS:-4}
declare -A ONLINE_STATS		# window -> "seconds txns p99_ms max_ms"
ONLINE_WINDOWS=()

online_load() {
	echo "bench: online_sync: loading $ONLINE_EVENTS events with cqrs.import_events"
	reset_state
	cqrs_psql >/dev/null <<SQL
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bench_os CASCADE;
CREATE SCHEMA bench_os;
CREATE TABLE bench_os.seen ("position" bigint PRIMARY KEY, stream text NOT NULL);
CREATE FUNCTION bench_os.handle(e cqrs.events) RETURNS void LANGUAGE sql AS
  \$\$ INSERT INTO bench_os.seen VALUES (e."position", e.stream) \$\$;
SELECT cqrs.import_events('order-' || (i % 10000), 'OrderPlaced',
                          jsonb_build_object('amount', i, 'currency', 'EUR'), NULL, NULL ORDER BY i)
  FROM generate_series(1, $ONLINE_EVENTS) i;
VACUUM ANALYZE cqrs.events;
CHECKPOINT;
SQL
}

# online_window NAME SECONDS SQL [UNTIL_SQL]
# Appends for SECONDS in the background; after 2 s runs SQL (and polls
# UNTIL_SQL until it says t); the window is from SQL's start to its end (or
# UNTIL_SQL's t).  Records the latencies of the appends overlapping it.
online_window() {
	local name=$1 seconds=$2 sql=$3 until=${4:-} prefix pid t0 t1 out
	prefix="$CQRS_WORK/online_$name"
	out="$LOG_DIR/online_sync_$name.out"
	rm -f "$prefix".*
	cqrs_as_owner "$CQRS_BINDIR/pgbench" -n -M prepared -c "$ONLINE_CLIENTS" -j "$ONLINE_CLIENTS" \
		-T "$seconds" -l --log-prefix="$prefix" -f "$SCRIPTS/online_append.sql" >"$out" 2>&1 &
	pid=$!
	sleep 2
	t0=$(date +%s.%N)
	cqrs_psql -c "$sql" >>"$out" 2>&1 || { echo "bench: online_sync: $name failed" >&2; FAILED_RUNS=$((FAILED_RUNS + 1)); }
	if [ -n "$until" ]; then
		while [ "$(cqrs_psql -tAc "$until")" != t ]; do sleep 0.05; done
	fi
	t1=$(date +%s.%N)
	if ! wait "$pid"; then
		echo "bench: online_sync: pgbench failed in window $name (see $out)" >&2
		FAILED_RUNS=$((FAILED_RUNS + 1))
	fi
	if [ "$t1" \> "$(awk -v t="$t0" -v s="$seconds" 'BEGIN { printf "%.6f", t + s - 2 }')" ]; then
		echo "bench: online_sync: window $name outlasted the appends (${seconds}s): raise BENCH_ONLINE_SECONDS" >&2
	fi
	cat "$prefix".* >"$LOG_DIR/online_sync_$name.log"
	# pgbench -l: client txn latency_us script epoch us
	ONLINE_STATS[$name]=$(awk -v t0="$t0" -v t1="$t1" '
		{ end = $5 + $6 / 1e6; start = end - $3 / 1e6
		  if (start <= t1 && end >= t0) print $3 / 1000 }' "$LOG_DIR/online_sync_$name.log" |
		sort -n | awk -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')" '
		{ v[NR] = $1 } END {
			if (NR == 0) { printf "%s 0 n/a n/a", w; exit }
			i = int(NR * 0.99); if (i < 1) i = 1
			printf "%s %d %.1f %.1f", w, NR, v[i], v[NR] }')
	ONLINE_WINDOWS+=("$name")
	printf '  online_sync %-22s %s\n' "$name" "${ONLINE_STATS[$name]}"
}

run_online_sync_group() {
	local blocking seconds
	online_load
	# how long a catch-up takes here, without load: the windows must outlast it
	blocking=$(timed_sql "BEGIN ISOLATION LEVEL REPEATABLE READ;
		SELECT cqrs.create_projection('os', 'bench_os.handle', 'sync', '{bench_os.seen}'); COMMIT;")
	cqrs_psql -c "SELECT cqrs.drop_projection('os')" -c "TRUNCATE bench_os.seen" -c CHECKPOINT >/dev/null
	seconds=${BENCH_ONLINE_SECONDS:-$(awk -v b="$blocking" 'BEGIN { printf "%d", 10 + 4 * b }')}
	echo "bench: online_sync: a blocking catch-up alone takes ${blocking}s; windows of ${seconds}s"
	online_window baseline 8 "SELECT pg_sleep(5)"
	online_window create_online "$seconds" \
		"SELECT cqrs.create_projection('os', 'bench_os.handle', 'sync', '{bench_os.seen}')"
	cqrs_psql -c "SELECT cqrs.drop_projection('os')" -c "TRUNCATE bench_os.seen" -c CHECKPOINT >/dev/null
	online_window create_blocking "$seconds" \
		"BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT cqrs.create_projection('os', 'bench_os.handle', 'sync', '{bench_os.seen}'); COMMIT;"
	cqrs_psql -c CHECKPOINT >/dev/null
	online_window replay_concurrently "$seconds" \
		"SELECT cqrs.replay('os', concurrently => true)" \
		"SELECT state = 'running' FROM cqrs.projection_status WHERE name = 'os'"
	# the worker's own timing of the switch, from the lock request to commit
	ONLINE_SWITCH=$(grep -o 'Appends were held for at most [0-9.]* ms: [0-9.]* ms waiting for the lock, [0-9.]* ms applying the last [0-9]* events' \
		"$CQRS_WORK/server.log" | tail -1)
	cqrs_psql -c CHECKPOINT >/dev/null
	online_window replay_one_txn "$seconds" "SELECT cqrs.replay('os')"
	local drift
	drift=$(cqrs_psql -tAc "SELECT count(*) FROM (SELECT \"position\" FROM cqrs.events
		EXCEPT SELECT \"position\" FROM bench_os.seen) d")
	[ "$drift" = 0 ] || { echo "bench: online_sync: $drift events missing from the read table" >&2; FAILED_RUNS=$((FAILED_RUNS + 1)); }
}

print_online_sync_rows() {
	local base_max name s w n p99 max ratio
	echo
	echo "13 online_sync: $ONLINE_CLIENTS clients append (one event per transaction) while a sync projection" \
		"over $ONLINE_EVENTS events is created or replayed; latencies of the appends overlapping each window"
	printf '   %-22s %9s %8s %10s %10s %14s\n' window seconds appends 'p99 ms' 'max ms' 'max/baseline'
	read -r _ _ _ base_max <<<"${ONLINE_STATS[baseline]}"
	for name in "${ONLINE_WINDOWS[@]}"; do
		s=${ONLINE_STATS[$name]}
		read -r w n p99 max <<<"$s"
		ratio=$(awk -v a="$max" -v b="$base_max" 'BEGIN { if (b + 0 > 0 && a != "n/a") printf "%.1f", a / b; else print "n/a" }')
		printf '   %-22s %9s %8s %10s %10s %14s\n' "$name" "$w" "$n" "$p99" "$max" "$ratio"
	done
	echo "   replay_concurrently's switch, as the worker logged it: ${ONLINE_SWITCH:-(no line in the server log)}"
}
