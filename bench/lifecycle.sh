# bench/lifecycle.sh - the lifecycle workload of "make bench", sourced by
# bench/run.sh after its helpers are defined.
#
#   lifecycle   one stream of $LIFECYCLE_EVENTS events (among 100 others of
#               10 events, so the stream's rows are not the whole table),
#               loaded afresh before every run, then removed or erased in
#               one statement:
#                 delete/cqrs    SELECT cqrs.delete_stream(s, hard => true)
#                 delete/plain   DELETE FROM bench.raw_events WHERE stream = s
#                 erase/cqrs     SELECT cqrs.erase_stream(s)
#                 erase/plain    UPDATE bench.raw_events SET data = marker,
#                                metadata = marker WHERE stream = s
#               bench.raw_events has the same columns and indexes as
#               cqrs.events; the plain sides are what a DBA would run by
#               hand with the guard dropped (no rights check, no stream
#               lock, no check of what is left, no system event, no audit
#               row).  Each run is one statement in one session, timed from
#               the server's clock up to the start of the next statement, so
#               its durable commit is included.  Sides alternate, the first
#               rotating each round.  Reports events/s and the ratio
#               cqrs / plain.

LIFECYCLE_EVENTS=${BENCH_LIFECYCLE_EVENTS:-100000}
case $LIFECYCLE_EVENTS in
	''|*[!0-9]*|0) echo "bench: BENCH_LIFECYCLE_EVENTS must be a positive integer, not \"$LIFECYCLE_EVENTS\"" >&2; exit 2 ;;
esac

# Load the doomed stream and its neighbours into the side's table.
lifecycle_load() {
	case $1 in
		cqrs)
			cqrs_psql >/dev/null <<SQL
SELECT cqrs.import_events(stream, 'Happened', data, NULL, NULL ORDER BY n)
  FROM (SELECT g AS n, 'doomed-1' AS stream,
               jsonb_build_object('g', g, 'name', md5(g::text), 'email', md5(g::text) || '@example.com') AS data
          FROM generate_series(1, $LIFECYCLE_EVENTS) g
        UNION ALL
        SELECT $LIFECYCLE_EVENTS + g, 'other-' || g % 100, jsonb_build_object('g', g)
          FROM generate_series(1, 1000) g) s;
CHECKPOINT;
SQL
			;;
		plain)
			cqrs_psql >/dev/null <<SQL
INSERT INTO bench.raw_events (stream, version, id, type, data)
SELECT 'doomed-1', g, gen_random_uuid(), 'Happened',
       jsonb_build_object('g', g, 'name', md5(g::text), 'email', md5(g::text) || '@example.com')
  FROM generate_series(1, $LIFECYCLE_EVENTS) g;
INSERT INTO bench.raw_events (stream, version, id, type, data)
SELECT 'other-' || g % 100, (g - 1) / 100 + 1, gen_random_uuid(), 'Happened', jsonb_build_object('g', g)
  FROM generate_series(1, 1000) g;
CHECKPOINT;
SQL
			;;
	esac
}

lifecycle_statement() { # op side
	case $1/$2 in
		delete/cqrs) echo "SELECT cqrs.delete_stream('doomed-1', hard => true);" ;;
		delete/plain) echo "DELETE FROM bench.raw_events WHERE stream = 'doomed-1';" ;;
		erase/cqrs) echo "SELECT cqrs.erase_stream('doomed-1');" ;;
		erase/plain) echo "UPDATE bench.raw_events SET data = '{\"\$erased\": true}',
			metadata = '{\"\$erased\": true}' WHERE stream = 'doomed-1';" ;;
	esac
}

# What must be left: delete leaves the tombstone (cqrs) or nothing (plain);
# erase leaves every event, erased.
lifecycle_check() { # op side -> "ok" or what was found
	local q
	case $1/$2 in
		delete/cqrs) q="SELECT count(*) = 1 FROM cqrs.events WHERE stream = 'doomed-1'" ;;
		delete/plain) q="SELECT count(*) = 0 FROM bench.raw_events WHERE stream = 'doomed-1'" ;;
		erase/cqrs) q="SELECT count(*) = $LIFECYCLE_EVENTS FROM cqrs.events
			WHERE stream = 'doomed-1' AND data = '{\"\$erased\": true}'" ;;
		erase/plain) q="SELECT count(*) = $LIFECYCLE_EVENTS FROM bench.raw_events
			WHERE stream = 'doomed-1' AND data = '{\"\$erased\": true}'" ;;
	esac
	[ "$(cqrs_psql -tAc "$q")" = t ] && echo ok || echo "unexpected rows left"
}

run_lifecycle_side() { # op side round
	local op=$1 side=$2 round=$3 log elapsed rate check
	log="$LOG_DIR/lifecycle-$op-$side-r$round.log"
	reset_state
	lifecycle_load "$side"
	if cqrs_psql -tA >"$log" 2>&1 <<SQL; then
SELECT extract(epoch FROM clock_timestamp()) AS t0 \\gset
$(lifecycle_statement "$op" "$side")
SELECT extract(epoch FROM clock_timestamp()) - :t0;
SQL
		elapsed=$(tail -n 1 "$log")
	else
		elapsed=""
	fi
	check=$(lifecycle_check "$op" "$side")
	if [ -z "$elapsed" ] || [ "$check" != ok ]; then
		FAILED_RUNS=$((FAILED_RUNS + 1))
		printf '  %-9s round %d  %-6s %-6s FAILED: %s, see %s\n' lifecycle "$round" "$op" "$side" \
			"${check:-no time}" "$log"
		sed -n '1,15p' "$log" | sed 's/^/    | /'
		TPS[lifecycle_$op/$side]="${TPS[lifecycle_$op/$side]:-} NA"
		return 0
	fi
	rate=$(awk -v n="$LIFECYCLE_EVENTS" -v e="$elapsed" 'BEGIN { printf "%.1f", n / e }')
	TPS[lifecycle_$op/$side]="${TPS[lifecycle_$op/$side]:-} $rate"
	printf '  %-9s round %d  %-6s %-6s %8.3f s  %10.1f events/s\n' lifecycle "$round" "$op" "$side" \
		"$elapsed" "$rate"
}

run_lifecycle_group() {
	local r i op sides=(cqrs plain)
	echo "bench: lifecycle: hard delete and erasure of a stream of $LIFECYCLE_EVENTS events"
	# uncounted: the first bulk write of the cluster creates the WAL segments
	run_lifecycle_side delete plain 0
	TPS[lifecycle_delete/plain]=""
	for ((r = 1; r <= ROUNDS; r++)); do
		for op in delete erase; do
			for ((i = 0; i < 2; i++)); do
				run_lifecycle_side "$op" "${sides[$(((i + r - 1) % 2))]}" "$r"
			done
		done
	done
}

print_lifecycle_rows() {
	row 13 "delete_stream(hard) vs DELETE, ${LIFECYCLE_EVENTS} ev" 1 \
		lifecycle_delete/cqrs lifecycle_delete/plain ev/s
	row 13 "erase_stream vs UPDATE, ${LIFECYCLE_EVENTS} ev" 1 \
		lifecycle_erase/cqrs lifecycle_erase/plain ev/s
}
