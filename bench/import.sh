# bench/import.sh - the import workload of "make bench", sourced by
# bench/run.sh after its helpers are defined.
#
#   import   bulk import of $IMPORT_EVENTS events over $IMPORT_STREAMS
#            streams (5 each, interleaved) from a staging table
#            (bench/import_setup.sql, loaded once):
#              import         SELECT cqrs.import_events(stream, type, data,
#                             metadata, id ORDER BY n) FROM staging
#              insert_select  the same rows into bench.raw_events (same
#                             columns, defaults and indexes as cqrs.events,
#                             no checks) with one INSERT ... SELECT that
#                             numbers each stream's versions itself
#            Each run is one statement in one session on a fresh log
#            (reset_state: DROP/CREATE EXTENSION, TRUNCATE, CHECKPOINT),
#            timed from the server's clock up to the start of the next
#            statement, so its durable commit is included.  Sides alternate,
#            the first rotating each round.  Reports events/s and the ratio
#            import / insert_select (goal >= 0.50).  While cqrs.import_events
#            does not exist the import side is skipped (and says so); the
#            INSERT ... SELECT side still runs.

IMPORT_EVENTS=${BENCH_IMPORT_EVENTS:-200000}
case $IMPORT_EVENTS in
	''|*[!0-9]*|0) echo "bench: BENCH_IMPORT_EVENTS must be a positive integer, not \"$IMPORT_EVENTS\"" >&2; exit 2 ;;
esac
IMPORT_PER_STREAM=5
IMPORT_STREAMS=$(((IMPORT_EVENTS + IMPORT_PER_STREAM - 1) / IMPORT_PER_STREAM))
IMPORT_SKIPPED=""

import_available() {
	[ "$(cqrs_psql -tAc "SELECT count(*) FROM pg_catalog.pg_proc
		WHERE pronamespace = pg_catalog.to_regnamespace('cqrs') AND proname = 'import_events'")" != 0 ]
}

import_statement() {
	case $1 in
		import)
			echo "SELECT cqrs.import_events(stream, type, data, metadata, id ORDER BY n) AS got
				FROM bench.import_staging \\gset" ;;
		insert_select)
			# positions in n's order (volatile nextval is evaluated after the
			# sort), versions 1, 2, ... per stream in n's order, as an import
			# into an empty log numbers them
			echo "INSERT INTO bench.raw_events (\"position\", stream, version, id, type, data, metadata)
				SELECT nextval('bench.raw_position_seq'), stream,
				       row_number() OVER (PARTITION BY stream ORDER BY n),
				       coalesce(id, gen_random_uuid()), type, data, coalesce(metadata, '{}')
				  FROM bench.import_staging ORDER BY n;
				SELECT $IMPORT_EVENTS AS got \\gset" ;;
	esac
}

import_table() {
	case $1 in import) echo cqrs.events ;; insert_select) echo bench.raw_events ;; esac
}

run_import_side() {
	local side=$1 round=$2 log elapsed got rows rate
	log="$LOG_DIR/import-$side-r$round.log"
	reset_state
	if cqrs_psql -tA -F ' ' >"$log" 2>&1 <<SQL; then
SELECT extract(epoch FROM clock_timestamp()) AS t0 \\gset
$(import_statement "$side")
SELECT extract(epoch FROM clock_timestamp()) - :t0, :got;
SQL
		read -r elapsed got <<<"$(tail -n 1 "$log")"
	else
		elapsed=""
	fi
	rows=$(cqrs_psql -tAc "SELECT count(*) FROM $(import_table "$side")")
	if [ -z "$elapsed" ] || [ "$got" != "$IMPORT_EVENTS" ] || [ "$rows" != "$IMPORT_EVENTS" ]; then
		FAILED_RUNS=$((FAILED_RUNS + 1))
		printf '  %-6s round %d  %-14s FAILED: returned %s, %s rows of %s, see %s\n' \
			import "$round" "$side" "${got:-?}" "$rows" "$IMPORT_EVENTS" "$log"
		sed -n '1,15p' "$log" | sed 's/^/    | /'
		TPS[import/$side]="${TPS[import/$side]:-} NA"
		return 0
	fi
	rate=$(awk -v n="$IMPORT_EVENTS" -v e="$elapsed" 'BEGIN { printf "%.1f", n / e }')
	TPS[import/$side]="${TPS[import/$side]:-} $rate"
	printf '  %-6s round %d  %-14s %8.2f s  %10.1f events/s\n' import "$round" "$side" "$elapsed" "$rate"
}

run_import_group() {
	local r i n sides=(import insert_select)
	reset_state
	if [ -n "$BASELINE_ONLY" ] || ! import_available; then
		IMPORT_SKIPPED=1
		echo "bench: import: skipped: cqrs.import_events not installed (running the INSERT ... SELECT side alone)"
		sides=(insert_select)
	fi
	n=${#sides[@]}
	echo "bench: import ($IMPORT_EVENTS events, $IMPORT_STREAMS streams): loading the staging table"
	cqrs_psql -v events="$IMPORT_EVENTS" -v streams="$IMPORT_STREAMS" \
		-f "$SCRIPTS/import_setup.sql" >/dev/null
	# One uncounted run first: the first bulk write of the cluster creates
	# the WAL segments that the following runs recycle.
	echo "bench: import: a warm-up run (round 0, not counted)"
	run_import_side insert_select 0
	TPS[import/insert_select]=""
	echo "bench: import ($IMPORT_EVENTS events, $IMPORT_STREAMS streams): ${sides[*]}"
	for ((r = 1; r <= ROUNDS; r++)); do
		for ((i = 0; i < n; i++)); do
			run_import_side "${sides[$(((i + r - 1) % n))]}" "$r"
		done
	done
	cqrs_psql -c 'DROP TABLE bench.import_staging' >/dev/null
}

print_import_row() {
	row 12 "import_events vs INSERT..SELECT, ${IMPORT_EVENTS} ev" 1 \
		import/import import/insert_select ev/s 0.50
	if [ -n "$IMPORT_SKIPPED" ]; then
		echo "12 skipped: cqrs.import_events not installed (B alone was measured)"
	fi
}
