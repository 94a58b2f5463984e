# bench/relay.sh - the relay workload of "make bench", sourced by
# bench/run.sh after its helpers are defined.
#
#   relay    the same backlog of $RELAY_EVENTS events ($OUTBOX_BATCH per
#            transaction, as in the outbox group) consumed over the
#            replication protocol by two slots created before the appends:
#            pg_recvlogical -f /dev/null, and pg_cqrs_relay into a
#            nats-server -js (file store, started fresh for each round on a
#            free 127.0.0.1 port), each up to the same --endpos.  The relay
#            side ends when JetStream acknowledged every event and the slot
#            is confirmed there.  Wall-clock time of each process; events/s;
#            the ratio is the relay over pg_recvlogical (issue 12's goal:
#            at least 0.5).  Skipped when pg_cqrs_relay or nats-server is
#            not installed.

RELAY_EVENTS=${BENCH_RELAY_EVENTS:-200000}
RELAY_SIDES=(relay pg_recvlogical)

relay_bench_program() {
	local p
	for p in "$CQRS_BINDIR/$1" "$(command -v "$1" 2>/dev/null)" "/usr/sbin/$1"; do
		[ -n "$p" ] && [ -x "$p" ] && { echo "$p"; return 0; }
	done
	return 1
}

run_relay_round() {
	local round=$1 n=${#RELAY_SIDES[@]} i side end t0 t1 rate port store nats_pid relay_bin nats_bin ok
	relay_bin=$(relay_bench_program pg_cqrs_relay)
	nats_bin=$(relay_bench_program nats-server)
	reset_state
	cqrs_psql >/dev/null <<SQL
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench_%';
SELECT pg_create_logical_replication_slot('bench_relay', 'pg_cqrs');
SELECT pg_create_logical_replication_slot('bench_pg_recvlogical', 'pg_cqrs');
SQL
	cqrs_psql -c "CREATE TEMP TABLE b AS SELECT (SELECT jsonb_agg(jsonb_build_object('type', 'OrderLineAdded',
			'data', jsonb_build_object('sku', 'SKU-' || i, 'qty', i, 'price', 9.99, 'note', 'gift \"wrap\"'),
			'metadata', jsonb_build_object('user', 'bench', 'correlation', gen_random_uuid())))
		FROM generate_series(1, $OUTBOX_BATCH) i) AS events" \
		-c "DO \$\$ BEGIN FOR t IN 1 .. $((RELAY_EVENTS / OUTBOX_BATCH)) LOOP
			PERFORM cqrs.append_events('order-' || (t % 1000), (SELECT events FROM b));
			COMMIT;
		END LOOP; END \$\$" >/dev/null
	end=$(cqrs_psql -tAc "SELECT pg_current_wal_lsn()")
	cqrs_psql -c CHECKPOINT >/dev/null

	port=$(cqrs_free_port)
	store=$(mktemp -d "$LOG_DIR/nats.XXXXXX")
	"$nats_bin" -js -a 127.0.0.1 -p "$port" -sd "$store" >"$LOG_DIR/nats_$round.log" 2>&1 &
	nats_pid=$!
	for ((i = 0; i < 100; i++)); do
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
		sleep 0.05
	done

	for ((i = 0; i < n; i++)); do
		side=${RELAY_SIDES[$(((i + round - 1) % n))]}
		t0=$(date +%s.%N)
		case $side in
			pg_recvlogical)
				"$CQRS_BINDIR/pg_recvlogical" -d postgres --slot bench_pg_recvlogical --start \
					-f /dev/null -E "$end" >>"$LOG_DIR/relay_$round.log" 2>&1
				ok=$? ;;
			relay)
				"$relay_bin" -d postgres -S bench_relay -s "nats://127.0.0.1:$port" \
					--create-stream --stream BENCH --stream-subjects 'bench.>' \
					--subject 'bench.{category}' --message-subject 'bench.m.{topic}' \
					--progress 0 -E "$end" >>"$LOG_DIR/relay_$round.log" 2>&1
				ok=$? ;;
		esac
		t1=$(date +%s.%N)
		if [ "$ok" -ne 0 ]; then
			FAILED_RUNS=$((FAILED_RUNS + 1))
			printf '  %-6s round %d  %-14s FAILED (see %s)\n' relay "$round" "$side" "$LOG_DIR/relay_$round.log"
			TPS[relay/$side]="${TPS[relay/$side]:-} NA"
			continue
		fi
		rate=$(awk -v n="$RELAY_EVENTS" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", n / (b - a) }')
		TPS[relay/$side]="${TPS[relay/$side]:-} $rate"
		printf '  %-6s round %d  %-14s       %10.1f events/s\n' relay "$round" "$side" "$rate"
	done
	kill "$nats_pid" 2>/dev/null
	wait "$nats_pid" 2>/dev/null || true
	rm -rf "$store"
	cqrs_psql -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'bench_%'" >/dev/null
}

run_relay_group() {
	local r
	if ! relay_bench_program pg_cqrs_relay >/dev/null || ! relay_bench_program nats-server >/dev/null; then
		echo "bench: relay: skipped (pg_cqrs_relay, built with libnats-dev, or nats-server is not installed)"
		return 0
	fi
	echo "bench: relay (the same backlog of $RELAY_EVENTS events, $OUTBOX_BATCH per transaction): ${RELAY_SIDES[*]}"
	for ((r = 1; r <= ROUNDS; r++)); do
		run_relay_round "$r"
	done
}
