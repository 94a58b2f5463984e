# bench/replay.sh - replay, reconcile and verify workloads of "make bench",
# sourced by bench/run.sh after its helpers are defined.  One log of
# $REPLAY_EVENTS events (1000 streams) and its one-row-per-event read table,
# loaded once; each measurement is timed inside one session from the
# server's clock, sides alternated, $REPLAY_ROUNDS rounds, after a VACUUM
# and a CHECKPOINT.
#
#   replay     cqrs.replay('orders') (DELETE, then the handler over the log)
#              vs the floor: TRUNCATE and SELECT handler(e) ... ORDER BY
#              position in one transaction (which locks readers out), on
#              the table without pg_cqrs's digest trigger, and
#              vs the same loop after a DELETE (what a hand-written
#              non-blocking rebuild costs)
#   reconcile  cqrs.reconcile('orders') with 10 drifted rows vs doing it by
#              hand: copy the table, rebuild it in place with the loop,
#              FULL OUTER JOIN ... IS DISTINCT FROM the copy, roll back
#   verify     cqrs.verify('orders') with no drift vs the FULL OUTER JOIN of
#              the table with an already rebuilt copy (the join alone)

REPLAY_EVENTS=${BENCH_REPLAY_EVENTS:-1000000}
REPLAY_ROUNDS=${BENCH_REPLAY_ROUNDS:-3}
cp "$BENCH_DIR"/replay_setup.sql "$SCRIPTS"/

# The hand-written sides run without pg_cqrs's digest trigger on the table
# (inside their transaction, so it is back afterwards): they are the floor
# a table without pg_cqrs would give.
NO_DIGEST="ALTER TABLE bench_rm.orders DISABLE TRIGGER cqrs_digest;"

# Seconds a statement takes, from the server's clock, in one session.
timed_sql() {
	cqrs_psql -tA <<SQL | tail -n 1
SELECT extract(epoch FROM clock_timestamp()) AS t0 \\gset
$1
SELECT extract(epoch FROM clock_timestamp()) - :t0;
SQL
}

replay_prepare() {
	cqrs_psql -c "VACUUM bench_rm.orders" -c "CHECKPOINT" >/dev/null
}

replay_load() {
	echo "bench: replay: loading $REPLAY_EVENTS events and their read table"
	reset_state
	cqrs_psql -c 'SET client_min_messages = warning' -c 'DROP SCHEMA IF EXISTS bench_rm CASCADE' >/dev/null
	cqrs_psql -f "$SCRIPTS/replay_setup.sql" >/dev/null
	cqrs_psql -c "SELECT count(*) FROM generate_series(1, 1000) s,
		LATERAL cqrs.append_events('order-' || s,
			(SELECT jsonb_agg(jsonb_build_object('type', 'OrderPlaced', 'data', jsonb_build_object('amount', i)))
			   FROM generate_series(1, $REPLAY_EVENTS / 1000) i))" >/dev/null
	cqrs_psql -c "SELECT cqrs.create_projection('orders', 'bench_rm.handle', 'deferred', '{bench_rm.orders}')" \
		-c "SELECT cqrs.pause_projection('orders')" >/dev/null
	# the first replay builds the table (a paused projection replays up to
	# its checkpoint: resume first)
	cqrs_psql -c "SELECT cqrs.resume_projection('orders')" -c "SELECT cqrs.replay('orders')" >/dev/null
	cqrs_psql -c "VACUUM ANALYZE cqrs.events" -c "VACUUM ANALYZE bench_rm.orders" >/dev/null
	# the rebuilt copy of the verify baseline
	cqrs_psql -c "CREATE TABLE bench_rm.orders_copy AS TABLE bench_rm.orders" \
		-c "ALTER TABLE bench_rm.orders_copy ADD PRIMARY KEY (position)" \
		-c "VACUUM ANALYZE bench_rm.orders_copy" >/dev/null
	local rows
	rows=$(cqrs_psql -tAc "SELECT count(*) FROM bench_rm.orders")
	echo "bench: replay: $rows rows in the read table"
}

record() { # key seconds
	TIMES[$1]="${TIMES[$1]:-} $2"
	printf '  %-10s %-16s %8.2f s\n' "${1%%/*}" "${1#*/}" "$2"
}

replay_side() {
	local side=$1 t
	replay_prepare
	case $side in
		replay)
			t=$(timed_sql "SELECT cqrs.replay('orders');") ;;
		truncate_loop)
			t=$(timed_sql "BEGIN; $NO_DIGEST TRUNCATE bench_rm.orders;
				SELECT count(bench_rm.handle(e)) FROM (SELECT e FROM cqrs.events e ORDER BY position) s; COMMIT;") ;;
		delete_loop)
			t=$(timed_sql "BEGIN; $NO_DIGEST DELETE FROM bench_rm.orders;
				SELECT count(bench_rm.handle(e)) FROM (SELECT e FROM cqrs.events e ORDER BY position) s; COMMIT;") ;;
	esac
	record "replay/$side" "$t"
}

# 10 drifted rows: 4 changed, 3 missing, 3 unexpected
DRIFT_SQL="UPDATE bench_rm.orders SET amount = amount + 1 WHERE position IN (11, 22222, 333333, 444444);
	DELETE FROM bench_rm.orders WHERE position IN (5, 55555, 555555);
	INSERT INTO bench_rm.orders VALUES (-1, 'x', 1, now()), (-2, 'x', 1, now()), (-3, 'x', 1, now());"
UNDRIFT_SQL="SELECT count(*) FROM cqrs.reconcile('orders', repair => true);"

reconcile_side() {
	local side=$1 t n
	replay_prepare
	case $side in
		reconcile)
			n=$(cqrs_psql -tAc "SELECT count(*) FROM cqrs.reconcile('orders')")
			t=$(timed_sql "SELECT count(*) FROM cqrs.reconcile('orders');") ;;
		by_hand)
			n=10
			t=$(timed_sql "BEGIN; $NO_DIGEST
				CREATE TEMP TABLE actual AS TABLE bench_rm.orders;
				TRUNCATE bench_rm.orders;
				SELECT count(bench_rm.handle(e)) FROM (SELECT e FROM cqrs.events e ORDER BY position) s;
				SELECT count(*) FROM bench_rm.orders r FULL JOIN actual a USING (position)
				 WHERE (r.stream, r.amount, r.placed_at) IS DISTINCT FROM (a.stream, a.amount, a.placed_at);
				ROLLBACK;") ;;
	esac
	[ "$n" = 10 ] || echo "  WARNING: reconcile found $n differences, not 10"
	record "reconcile/$side" "$t"
}

verify_side() {
	local side=$1 t
	replay_prepare
	case $side in
		verify)
			t=$(timed_sql "SELECT matches FROM cqrs.verify('orders');") ;;
		join)
			t=$(timed_sql "SELECT count(*) FROM bench_rm.orders r FULL JOIN bench_rm.orders_copy c USING (position)
				 WHERE (r.stream, r.amount, r.placed_at) IS DISTINCT FROM (c.stream, c.amount, c.placed_at);") ;;
	esac
	record "verify/$side" "$t"
}

declare -A TIMES

run_replay_groups() {
	local r
	replay_load
	if want replay; then
		echo "bench: replay ($REPLAY_EVENTS events): replay truncate_loop delete_loop"
		for ((r = 1; r <= REPLAY_ROUNDS; r++)); do
			if ((r % 2)); then
				replay_side replay; replay_side truncate_loop; replay_side delete_loop
			else
				replay_side delete_loop; replay_side truncate_loop; replay_side replay
			fi
		done
		# the loops leave the table right but the digest behind: replay last
		cqrs_psql -c "SELECT cqrs.replay('orders')" >/dev/null
	fi
	# the replay rounds leave the table twice its size: compact it, as a
	# table of a million rows would be
	cqrs_psql -c "VACUUM FULL bench_rm.orders" -c "ANALYZE bench_rm.orders" >/dev/null
	if want verify; then
		echo "bench: verify (no drift): verify join"
		for ((r = 1; r <= REPLAY_ROUNDS; r++)); do
			if ((r % 2)); then verify_side verify; verify_side join
			else verify_side join; verify_side verify; fi
		done
		[ "$(cqrs_psql -tAc "SELECT matches FROM cqrs.verify('orders')")" = t ] ||
			echo "  WARNING: verify did not report a match"
	fi
	if want reconcile; then
		echo "bench: reconcile (10 drifted rows): reconcile by_hand"
		cqrs_psql -c "$DRIFT_SQL" >/dev/null
		for ((r = 1; r <= REPLAY_ROUNDS; r++)); do
			if ((r % 2)); then reconcile_side reconcile; reconcile_side by_hand
			else reconcile_side by_hand; reconcile_side reconcile; fi
		done
		cqrs_psql -c "$UNDRIFT_SQL" >/dev/null
	fi
}

# shellcheck disable=SC2086
tmed() { median ${TIMES[$1]:-}; }

# time_row title A-key B-key goal-text: medians and the median of per-round
# time ratios A/B (lower is better)
time_row() {
	local a b r lo hi
	a=$(tmed "$2"); b=$(tmed "$3")
	# shellcheck disable=SC2086
	read -r r lo hi <<<"$(paste <(printf '%s\n' ${TIMES[$2]}) <(printf '%s\n' ${TIMES[$3]}) |
		awk '{ print $1 / $2 }' | sort -g | awk '
			{ a[NR] = $1 }
			END {
				if (NR == 0) { print "n/a n/a n/a"; exit }
				m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
				printf "%.2f %.2f %.2f\n", m, a[1], a[NR]
			}')"
	printf '   %-58s %8.2f s %8.2f s  %5s  %-11s %s\n' "$1" "$a" "$b" "$r" "$lo..$hi" "$4"
}

print_replay_rows() {
	echo
	echo "10 replay, reconcile, verify on $REPLAY_EVENTS events / a one-row-per-event read table" \
		"($REPLAY_ROUNDS alternated rounds; times: medians; ratio: median of per-round A/B times)"
	printf '   %-58s %10s %10s  %5s  %-11s %s\n' 'workload (A vs B)' 'A' 'B' ratio range goal
	if want replay; then
		time_row 'replay vs TRUNCATE + SELECT handler(e) loop (floor)' replay/replay replay/truncate_loop \
			'time <= 1.25 (speed >= 0.80)'
		time_row 'replay vs DELETE + SELECT handler(e) loop' replay/replay replay/delete_loop ''
	fi
	if want reconcile; then
		time_row 'reconcile (10 drifted) vs copy+rebuild+FULL JOIN by hand' reconcile/reconcile reconcile/by_hand \
			'<= 1.0'
	fi
	if want verify; then
		time_row 'verify (no drift) vs FULL JOIN with a rebuilt copy' verify/verify verify/join '<= 0.2'
	fi
}
