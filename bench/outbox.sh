# bench/outbox.sh - the outbox workload of "make bench", sourced by
# bench/run.sh after its helpers are defined.
#
#   outbox   decoding $OUTBOX_EVENTS events ($OUTBOX_BATCH per transaction)
#            from the same WAL by three logical slots created before the
#            appends: pg_cqrs (JSON lines), wal2json (format-version 2,
#            add-tables=cqrs.events) and test_decoding (skip-empty-xacts).
#            Each round loads the events once, then times every plugin
#            (order rotating each round) with pg_logical_slot_peek_changes
#            in one session, from the server's clock: peek leaves the slot
#            where it was, so every plugin decodes exactly the same WAL.
#            Reports events/s; the ratios are pg_cqrs over each other.

OUTBOX_EVENTS=${BENCH_OUTBOX_EVENTS:-200000}
OUTBOX_BATCH=10
OUTBOX_SIDES=(pg_cqrs wal2json test_decoding)

# wal2json is optional: without it the row says n/a.
outbox_have_wal2json() {
	[ -e "$("$(cqrs_pg_config)" --pkglibdir)/wal2json.so" ]
}

outbox_peek_args() {
	case $1 in
		pg_cqrs) echo "" ;;
		wal2json) echo ", 'format-version', '2', 'add-tables', 'cqrs.events'" ;;
		test_decoding) echo ", 'skip-empty-xacts', '1'" ;;
	esac
}

# The lines of a side that carry an event (the others are BEGIN/COMMIT).
outbox_event_filter() {
	case $1 in
		pg_cqrs) echo "true" ;;
		wal2json) echo "data LIKE '{\"action\":\"I\"%'" ;;
		test_decoding) echo "data LIKE 'table cqrs.events: INSERT:%'" ;;
	esac
}

# One round: fresh log, three slots, the events, then each plugin in turn.
run_outbox_round() {
	local round=$1 n=${#OUTBOX_SIDES[@]} i side elapsed got rate
	reset_state
	cqrs_psql >/dev/null <<SQL
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench_%';
SELECT pg_create_logical_replication_slot('bench_pg_cqrs', 'pg_cqrs');
SELECT pg_create_logical_replication_slot('bench_test_decoding', 'test_decoding');
SQL
	if outbox_have_wal2json; then
		cqrs_psql -c "SELECT pg_create_logical_replication_slot('bench_wal2json', 'wal2json')" >/dev/null
	fi
	# $OUTBOX_EVENTS / $OUTBOX_BATCH transactions, one append_events each,
	# over 1000 streams: what an application's commands produce
	cqrs_psql -c "CREATE TEMP TABLE b AS SELECT (SELECT jsonb_agg(jsonb_build_object('type', 'OrderLineAdded',
			'data', jsonb_build_object('sku', 'SKU-' || i, 'qty', i, 'price', 9.99, 'note', 'gift \"wrap\"'),
			'metadata', jsonb_build_object('user', 'bench', 'correlation', gen_random_uuid())))
		FROM generate_series(1, $OUTBOX_BATCH) i) AS events" \
		-c "DO \$\$ BEGIN FOR t IN 1 .. $((OUTBOX_EVENTS / OUTBOX_BATCH)) LOOP
			PERFORM cqrs.append_events('order-' || (t % 1000), (SELECT events FROM b));
			COMMIT;
		END LOOP; END \$\$" >/dev/null
	cqrs_psql -c CHECKPOINT >/dev/null

	for ((i = 0; i < n; i++)); do
		side=${OUTBOX_SIDES[$(((i + round - 1) % n))]}
		if [ "$side" = wal2json ] && ! outbox_have_wal2json; then
			TPS[outbox/$side]="${TPS[outbox/$side]:-} NA"
			continue
		fi
		read -r elapsed got <<<"$(cqrs_psql -tA -F ' ' <<SQL | tail -n 1
SELECT extract(epoch FROM clock_timestamp()) AS t0 \\gset
SELECT count(*) FILTER (WHERE $(outbox_event_filter "$side")) AS n
  FROM pg_logical_slot_peek_changes('bench_$side', NULL, NULL $(outbox_peek_args "$side")) \\gset
SELECT extract(epoch FROM clock_timestamp()) - :t0, :n;
SQL
		)"
		if [ "$got" != "$OUTBOX_EVENTS" ]; then
			FAILED_RUNS=$((FAILED_RUNS + 1))
			printf '  %-6s round %d  %-14s FAILED: decoded %s of %s events\n' outbox "$round" "$side" "${got:-?}" "$OUTBOX_EVENTS"
			TPS[outbox/$side]="${TPS[outbox/$side]:-} NA"
			continue
		fi
		rate=$(awk -v n="$OUTBOX_EVENTS" -v e="$elapsed" 'BEGIN { printf "%.1f", n / e }')
		TPS[outbox/$side]="${TPS[outbox/$side]:-} $rate"
		printf '  %-6s round %d  %-14s       %10.1f events/s\n' outbox "$round" "$side" "$rate"
	done
	cqrs_psql -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench_%'" >/dev/null
}

run_outbox_group() {
	local r
	echo "bench: outbox (decoding $OUTBOX_EVENTS events, $OUTBOX_BATCH per transaction): ${OUTBOX_SIDES[*]}"
	outbox_have_wal2json || echo "  (wal2json is not installed: its side is skipped)"
	for ((r = 1; r <= ROUNDS; r++)); do
		run_outbox_round "$r"
	done
}
