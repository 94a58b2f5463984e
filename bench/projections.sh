# bench/projections.sh - projection workloads of "make bench", sourced by
# bench/run.sh after its helpers are defined (run_side, run_group, ...).
#
#   sync      cqrs.append with one sync projection vs the same handler called
#             from a hand-written PL/pgSQL AFTER INSERT row trigger (pgbench,
#             $CLIENTS clients, alternated like the other groups)
#   deferred  events/s the worker applies catching up on $DEFERRED_EVENTS
#             events (from create_projection to the checkpoint reaching the
#             head, which includes starting the worker) vs one SELECT
#             handler(e) FROM cqrs.events ORDER BY position over the same
#             events (alternated rounds)
#   lag       lag_seconds of a deferred projection sampled every 100 ms
#             while $CLIENTS clients append for $LAG_SECONDS s: p50, p99, max

DEFERRED_EVENTS=${BENCH_DEFERRED_EVENTS:-100000}
# BENCH_PROJECTION_DIGEST=false: the projections keep no digest (no
# cqrs.verify), to see what digests cost the appliers
PROJECTION_DIGEST=${BENCH_PROJECTION_DIGEST:-true}
case $PROJECTION_DIGEST in true|false) ;;
	*) echo "bench: BENCH_PROJECTION_DIGEST must be true or false" >&2; exit 2 ;;
esac
LAG_SECONDS=${BENCH_LAG_SECONDS:-$((RUN_SECONDS * 3))}
cp "$BENCH_DIR"/projection_setup.sql "$SCRIPTS"/

# Called by run_side after reset_state: the side's projection machinery.
projection_side_setup() {
	case $1 in
		sync_projection)
			cqrs_psql -f "$SCRIPTS/projection_setup.sql" \
				-c "SELECT cqrs.create_projection('counts', 'bench_proj.count_event', 'sync', '{bench_proj.stream_counts}', digest => $PROJECTION_DIGEST)"
			;;
		sync_trigger)
			cqrs_psql -f "$SCRIPTS/projection_setup.sql" \
				-c "CREATE TRIGGER bench_count AFTER INSERT ON cqrs.events FOR EACH ROW EXECUTE FUNCTION bench_proj.count_trigger()"
			;;
	esac >/dev/null
}

# After a run: did the handler see every event?
projection_side_check() {
	local counted events
	case $1 in sync_projection|sync_trigger) ;; *) return 0 ;; esac
	counted=$(cqrs_psql -tAc "SELECT coalesce(sum(n), 0) FROM bench_proj.stream_counts")
	events=$(cqrs_psql -tAc "SELECT count(*) FROM cqrs.events")
	[ "$counted" = "$events" ] ||
		echo "  WARNING: $1 counted $counted of $events events"
}

# One round of the deferred group: load the log, then time one side.
# Records events/s in TPS[deferred/<side>].
run_deferred_side() {
	local side=$1 round=$2 elapsed rate head counted
	reset_state
	cqrs_psql -f "$SCRIPTS/projection_setup.sql" >/dev/null
	# 1000 streams of DEFERRED_EVENTS/1000 events, appended in batches
	cqrs_psql -c "SELECT count(*) FROM generate_series(1, 1000) s,
		LATERAL cqrs.append_events('order-' || s,
			(SELECT jsonb_agg(jsonb_build_object('type', 'OrderPlaced', 'data', jsonb_build_object('amount', i)))
			   FROM generate_series(1, $DEFERRED_EVENTS / 1000) i))" >/dev/null
	cqrs_psql -c 'VACUUM ANALYZE cqrs.events' -c 'CHECKPOINT' >/dev/null
	head=$(cqrs_psql -tAc "SELECT max(position) FROM cqrs.events")
	# Timed inside one session, from the server's clock: starting psql
	# processes to poll would cost more than what is measured.
	case $side in
		worker)
			elapsed=$(cqrs_psql -tA <<SQL | tail -n 1
SELECT extract(epoch FROM clock_timestamp()) AS t0 \\gset
SELECT cqrs.create_projection('counts', 'bench_proj.count_event', 'deferred', '{bench_proj.stream_counts}', digest => $PROJECTION_DIGEST);
DO \$\$ BEGIN
  FOR i IN 1 .. 60000 LOOP
    EXIT WHEN (SELECT position >= $head FROM cqrs.projection_status WHERE name = 'counts');
    PERFORM pg_sleep(0.002);
  END LOOP;
END \$\$;
SELECT extract(epoch FROM clock_timestamp()) - :t0;
SQL
			)
			;;
		plain_loop)
			elapsed=$(cqrs_psql -tA <<SQL | tail -n 1
SELECT extract(epoch FROM clock_timestamp()) AS t0 \\gset
SELECT count(bench_proj.count_event(e)) FROM (SELECT e FROM cqrs.events e ORDER BY position) s;
SELECT extract(epoch FROM clock_timestamp()) - :t0;
SQL
			)
			;;
	esac
	counted=$(cqrs_psql -tAc "SELECT coalesce(sum(n), 0) FROM bench_proj.stream_counts")
	if [ "$counted" != "$DEFERRED_EVENTS" ]; then
		FAILED_RUNS=$((FAILED_RUNS + 1))
		printf '  %-6s round %d  %-14s FAILED: applied %s of %s events\n' deferred "$round" "$side" "$counted" "$DEFERRED_EVENTS"
		TPS[deferred/$side]="${TPS[deferred/$side]:-} NA"
		return 0
	fi
	rate=$(awk -v n="$DEFERRED_EVENTS" -v e="$elapsed" 'BEGIN { printf "%.1f", n / e }')
	TPS[deferred/$side]="${TPS[deferred/$side]:-} $rate"
	printf '  %-6s round %d  %-14s       %10.1f events/s\n' deferred "$round" "$side" "$rate"
}

run_deferred_group() {
	local r
	echo "bench: deferred (catching up on $DEFERRED_EVENTS events): worker plain_loop"
	for ((r = 1; r <= ROUNDS; r++)); do
		if ((r % 2)); then
			run_deferred_side worker "$r"; run_deferred_side plain_loop "$r"
		else
			run_deferred_side plain_loop "$r"; run_deferred_side worker "$r"
		fi
	done
}

# Lag under load: LAG_P50, LAG_P99, LAG_MAX (seconds), LAG_TPS, LAG_SAMPLES.
run_lag() {
	local samples="$LOG_DIR/lag-samples.txt" log="$LOG_DIR/lag-pgbench.log" sampler
	echo "bench: lag (a deferred projection while $CLIENTS clients append for ${LAG_SECONDS}s)"
	reset_state
	cqrs_psql -f "$SCRIPTS/projection_setup.sql" \
		-c "SELECT cqrs.create_projection('counts', 'bench_proj.count_event', 'deferred', '{bench_proj.stream_counts}', digest => $PROJECTION_DIGEST)" >/dev/null
	# One session samples every 100 ms (each statement of the DO block reads
	# with a new snapshot) and prints the samples at the end.
	cqrs_psql -tA -c "DO \$\$
		DECLARE a float8[] := '{}';
		BEGIN
			FOR i IN 1 .. $((LAG_SECONDS * 10)) LOOP
				a := a || (SELECT lag_seconds FROM cqrs.projection_status WHERE name = 'counts');
				PERFORM pg_sleep(0.1);
			END LOOP;
			RAISE NOTICE 'samples: %', array_to_string(a, ' ');
		END \$\$" 2>&1 | sed -n 's/.*samples: //p' | tr ' ' '\n' >"$samples" &
	sampler=$!
	cqrs_as_owner "$CQRS_BINDIR/pgbench" -n -M prepared -c "$CLIENTS" -j "$NCPU" \
		-T "$LAG_SECONDS" -f "$SCRIPTS/append.sql" >"$log" 2>&1 || true
	wait "$sampler"
	LAG_TPS=$(pgbench_value 'tps ' "$log")
	LAG_SAMPLES=$(grep -c . "$samples")
	read -r LAG_P50 LAG_P99 LAG_MAX <<<"$(sort -g "$samples" | awk '
		{ a[NR] = $1 }
		END {
			if (NR == 0) { print "n/a n/a n/a"; exit }
			p50 = a[int((NR - 1) * 0.50) + 1]; p99 = a[int((NR - 1) * 0.99) + 1]
			printf "%.3f %.3f %.3f\n", p50, p99, a[NR]
		}')"
	printf '  lag     %s samples  p50 %ss  p99 %ss  max %ss  (appends: %.0f tps)\n' \
		"$LAG_SAMPLES" "$LAG_P50" "$LAG_P99" "$LAG_MAX" "${LAG_TPS:-0}"
}
