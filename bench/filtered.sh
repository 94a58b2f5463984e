# bench/filtered.sh - the filter-index workloads of "make bench", sourced by
# bench/run.sh after its helpers are defined (run_side, run_group, ...).
#
#   filtered             a log of $FILTERED_EVENTS events of category
#                        "order" with 10 events of category "rare" at its
#                        end.  Timed in one session from the server's clock:
#                        read_all(0, 100, '{rare}') (calls/s), and a deferred
#                        projection on the rare category catching up
#                        (process_projections; catch-ups/s), with the filter
#                        indexes vs without them (cqrs.drop_filter_indexes:
#                        the position scan every release before 0.7.0 did),
#                        alternated within each round on the same log.
#   append_filter_index  what the filter indexes cost appends: cqrs.append
#                        and raw INSERT (pgbench, $CLIENTS clients), each
#                        with and without the filter indexes (the raw table
#                        carries the equivalent two indexes, dropped for
#                        its _nofilter side); durable, then again with
#                        synchronous_commit = off (append_filter_index_nodurable)

FILTERED_EVENTS=${BENCH_FILTERED_EVENTS:-1000000}
case $FILTERED_EVENTS in
	''|*[!0-9]*|0) echo "bench: BENCH_FILTERED_EVENTS must be a positive integer" >&2; exit 2 ;;
esac
FILTERED_READ_CALLS=200	# read_all calls timed per measurement with the index
FILTERED_SCAN_CALLS=3	# and without it (each walks the whole log)

# Called by run_side after reset_state: the filter indexes of the
# append_filter_index sides.  The raw table's are created and dropped here
# (they outlive resets); the extension's come back with every CREATE
# EXTENSION.
filter_side_setup() {
	case $1 in
		append_nofilter)
			cqrs_psql -c 'SELECT cqrs.drop_filter_indexes()' ;;
		raw_nofilter)
			cqrs_psql -c 'DROP INDEX IF EXISTS bench.raw_events_category_position_idx, bench.raw_events_type_position_idx' ;;
		raw)
			# (IF NOT EXISTS: quietly, they are usually there)
			cqrs_psql -c 'SET client_min_messages = warning' -c "CREATE INDEX IF NOT EXISTS raw_events_category_position_idx
			                  ON bench.raw_events (split_part(stream, '-', 1), \"position\")" \
				-c 'CREATE INDEX IF NOT EXISTS raw_events_type_position_idx
			                  ON bench.raw_events (type, "position")' ;;
	esac >/dev/null
}

# Time one measurement on the loaded log; prints the rate (per second).
# $1: read (read_all calls) or deferred (a projection catching up).
filtered_measure() {
	local what=$1 calls=${2:-}
	case $what in
		read)
			cqrs_psql -tA <<SQL | tail -n 1
SELECT extract(epoch FROM clock_timestamp()) AS t0 \\gset
DO \$\$ DECLARE n bigint; BEGIN
  FOR i IN 1 .. $calls LOOP
    SELECT count(*) INTO n FROM cqrs.read_all(0, 100, '{rare}');
    IF n <> 10 THEN RAISE EXCEPTION 'read_all returned % rare events, not 10', n; END IF;
  END LOOP;
END \$\$;
SELECT $calls / (extract(epoch FROM clock_timestamp()) - :t0);
SQL
			;;
		deferred)
			# create, catch up and drop in one transaction: the worker never
			# sees the projection, and each measurement starts from position 0
			cqrs_psql -tA <<SQL | tail -n 1
BEGIN;
SELECT cqrs.create_projection('rare', 'bench_proj.count_event', 'deferred', '{bench_proj.stream_counts}',
                              categories => '{rare}', digest => false);
SELECT extract(epoch FROM clock_timestamp()) AS t0 \\gset
SELECT cqrs.process_projections('rare') AS applied \\gset
SELECT 1 / (extract(epoch FROM clock_timestamp()) - :t0) AS rate \\gset
SELECT cqrs.drop_projection('rare');
TRUNCATE bench_proj.stream_counts;
COMMIT;
SELECT CASE WHEN :applied = 10 THEN :rate::text ELSE 'NA' END;
SQL
			;;
	esac
}

run_filtered_group() {
	local r side rate load_s t0
	echo "bench: filtered ($FILTERED_EVENTS events, 10 of them in the rare category at the end): index scan"
	reset_state
	cqrs_psql -f "$SCRIPTS/projection_setup.sql" >/dev/null
	t0=$(date +%s)
	# 1000 events per stream; one statement per 100 streams keeps each
	# transaction's memory small
	local streams=$(((FILTERED_EVENTS + 999) / 1000)) s
	for ((s = 0; s < streams; s += 100)); do
		cqrs_psql -c "SELECT count(*) FROM generate_series($s + 1, least($s + 100, $streams)) s,
			LATERAL cqrs.append_events('order-' || s,
				(SELECT jsonb_agg(jsonb_build_object('type', 'OrderPlaced', 'data', jsonb_build_object('amount', i)))
				   FROM generate_series(1, least(1000, $FILTERED_EVENTS - (s - 1) * 1000)) i))" >/dev/null
	done
	cqrs_psql -c "SELECT count(*) FROM generate_series(1, 10) i,
		LATERAL cqrs.append('rare-' || i, 'RareHappened', '{}')" \
		-c 'VACUUM ANALYZE cqrs.events' -c 'CHECKPOINT' >/dev/null
	load_s=$(($(date +%s) - t0))
	echo "  loaded $(cqrs_psql -tAc 'SELECT count(*) FROM cqrs.events') events in ${load_s}s"
	for ((r = 1; r <= ROUNDS; r++)); do
		for side in index scan; do
			if [ "$side" = scan ]; then
				cqrs_psql -c 'SELECT cqrs.drop_filter_indexes()' >/dev/null
			fi
			rate=$(filtered_measure read "$([ "$side" = index ] && echo $FILTERED_READ_CALLS || echo $FILTERED_SCAN_CALLS)")
			TPS[filtered_read/$side]="${TPS[filtered_read/$side]:-} ${rate:-NA}"
			printf '  %-8s round %d  %-6s read_all %14.3f calls/s\n' filtered "$r" "$side" "${rate:-0}"
			rate=$(filtered_measure deferred)
			TPS[filtered_deferred/$side]="${TPS[filtered_deferred/$side]:-} ${rate:-NA}"
			printf '  %-8s round %d  %-6s deferred %14.3f catch-ups/s\n' filtered "$r" "$side" "${rate:-0}"
			if [ "$side" = scan ]; then
				# back for the next round (index builds are not timed)
				cqrs_psql -c 'SELECT cqrs.create_filter_indexes()' >/dev/null
			fi
		done
	done
}

print_filtered_rows() {
	row 13 "filtered: read_all(0,100,'{rare}'), index vs scan" 1 \
		filtered_read/index filtered_read/scan calls/s
	row 13 "filtered: rare deferred projection catch-up" 1 \
		filtered_deferred/index filtered_deferred/scan /s
	echo "13 filtered: log of $FILTERED_EVENTS events; index = the filter indexes, scan = the position" \
		"scan without them; ratio = how many times faster"
	# the same medians as times, which rates below 1/s do not show
	local k ms=()
	for k in filtered_read/index filtered_read/scan filtered_deferred/index filtered_deferred/scan; do
		ms+=("$(awk -v r="$(med "$k")" 'BEGIN { if (r > 0) printf "%.2f", 1000 / r; else printf "n/a" }')")
	done
	echo "13 median time: read_all ${ms[0]} ms with the index, ${ms[1]} ms without;" \
		"deferred catch-up ${ms[2]} ms with, ${ms[3]} ms without"
}

# WAL written per append with and without the filter indexes: a measure of
# their price that does not depend on how busy the machine is.  20000
# appends in one statement after a reset and a CHECKPOINT, so both sides
# pay the same full-page images.
FILTER_WAL_APPENDS=20000
run_filter_wal() {
	local side
	echo "bench: append_filter_index: WAL per append, $FILTER_WAL_APPENDS appends, with and without the filter indexes"
	for side in with without; do
		reset_state
		[ "$side" = without ] && cqrs_psql -c 'SELECT cqrs.drop_filter_indexes()' >/dev/null
		cqrs_psql -c CHECKPOINT >/dev/null
		FILTER_WAL[$side]=$(cqrs_psql -tA <<SQL | tail -n 1
SELECT pg_current_wal_insert_lsn() AS l0 \\gset
SELECT count(*) FROM generate_series(1, $FILTER_WAL_APPENDS) i,
    LATERAL cqrs.append('order-' || i % 1000, 'OrderPlaced', '{"amount": 42, "currency": "EUR"}');
SELECT round(pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :'l0') / $FILTER_WAL_APPENDS);
SQL
		)
		echo "  WAL per append, $side the filter indexes: ${FILTER_WAL[$side]} bytes"
	done
}
declare -A FILTER_WAL

print_append_filter_rows() {
	if [ -n "${FILTER_WAL[with]:-}" ] && [ -n "${FILTER_WAL[without]:-}" ]; then
		echo "14 WAL per append ($FILTER_WAL_APPENDS in one statement): ${FILTER_WAL[with]} bytes with the filter indexes," \
			"${FILTER_WAL[without]} without ($(awk -v a="${FILTER_WAL[with]}" -v b="${FILTER_WAL[without]}" 'BEGIN { printf "%+.0f%%", 100 * (a / b - 1) }'))"
	fi
	local g
	for g in append_filter_index append_filter_index_nodurable; do
		[ "$g" = append_filter_index ] || echo "14 (the same, synchronous_commit = off: not durable, the CPU and WAL cost)"
		row 14 'append vs raw INSERT, both with filter indexes' "$CLIENTS" "$g/append" "$g/raw" tps
		row 14 'append vs raw INSERT, neither with them' "$CLIENTS" \
			"$g/append_nofilter" "$g/raw_nofilter" tps
		row 14 'append: with vs without filter indexes' "$CLIENTS" "$g/append" "$g/append_nofilter" tps
		row 14 'raw INSERT: with vs without the same two' "$CLIENTS" "$g/raw" "$g/raw_nofilter" tps
	done
}
