# bench/retention.sh - the retention workload of "make bench", sourced by
# bench/run.sh after its helpers are defined.
#
#   retention  a log of $RET_EVENTS events in $RET_STREAMS "acct" streams
#              of 20 (imported with cqrs.import_events from a staging table
#              loaded once); a rule keeping the last 2 events of each
#              stream removes 90% of it.  Sides, alternated per round, each
#              on a freshly imported log:
#                pass          the worker's pass (cqrs.retention_naptime =
#                              100ms, batches of cqrs.retention_batch_size =
#                              1000), timed from set_retention's commit to
#                              the rule's count reaching every removable
#                              event (polled every 0.1 s): events removed/s
#                raw_delete    the same rows in bench.raw_events (same
#                              columns and indexes as the log), removed by
#                              one set-based DELETE ... USING (the heads per
#                              stream): events removed/s; the floor of what
#                              any removal costs, in one transaction
#                pass_appends  the worker's pass while $RET_CLIENTS pgbench
#                              clients append to random "acct" streams:
#                              removal events/s, and the appends' events/s
#                              during the pass (from the position sequence)
#                appends       the same pgbench clients on the same log
#                              without a rule: their events/s over the same
#                              window (seconds 2 to 2 + the last pass's
#                              length, at least 5 s)
#              Reports pass / raw_delete, pass_appends / pass (removal) and
#              appends during the pass / appends alone.

RET_EVENTS=${BENCH_RETENTION_EVENTS:-1000000}
RET_ROUNDS=${BENCH_RETENTION_ROUNDS:-3}
RET_CLIENTS=${BENCH_RETENTION_CLIENTS:-4}
for v in RET_EVENTS RET_ROUNDS RET_CLIENTS; do
	case ${!v} in
		''|*[!0-9]*|0) echo "bench: $v must be a positive integer, not \"${!v}\"" >&2; exit 2 ;;
	esac
done
RET_PER_STREAM=20
RET_STREAMS=$((RET_EVENTS / RET_PER_STREAM))
RET_EVENTS=$((RET_STREAMS * RET_PER_STREAM))
RET_REMOVABLE=$((RET_STREAMS * (RET_PER_STREAM - 2)))
RET_WINDOW=5		# seconds of the appends-alone window, until a pass was timed

now_s() { date +%s.%N; }

# A fresh log of the group's events, checkpointed.
ret_fresh_log() {
	reset_state
	cqrs_psql -c "SELECT cqrs.import_events(stream, type, data, NULL, NULL ORDER BY n) FROM bench.ret_staging" \
		-c 'VACUUM ANALYZE cqrs.events' -c CHECKPOINT >/dev/null
}

ret_removed() { cqrs_psql -tAc "SELECT coalesce((SELECT removed FROM cqrs.retention_rules WHERE category = 'acct'), 0)"; }
ret_seq() { cqrs_psql -tAc 'SELECT last_value FROM cqrs.events_position_seq'; }

# Set the rule and wait until the worker removed every event removable at
# the start; prints "seconds removed".
ret_timed_pass() {
	local t0 t1 removed=0 deadline
	t0=$(now_s)
	cqrs_psql -c "SELECT cqrs.set_retention('acct', max_count => 2)" >/dev/null
	deadline=$(( $(date +%s) + 600 ))
	while [ "$removed" -lt "$RET_REMOVABLE" ] && [ "$(date +%s)" -lt "$deadline" ]; do
		sleep 0.1
		removed=$(ret_removed)
	done
	t1=$(now_s)
	echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') $removed"
}

ret_record() { # key value
	TPS[retention/$1]="${TPS[retention/$1]:-} $2"
}

ret_failed() { # side round why
	FAILED_RUNS=$((FAILED_RUNS + 1))
	printf '  %-9s round %d  %-13s FAILED: %s\n' retention "$2" "$1" "$3"
	case $1 in
		pass) ret_record pass NA ;;
		raw_delete) ret_record raw_delete NA ;;
		pass_appends) ret_record pass_appends NA; ret_record during NA ;;
		appends) ret_record alone NA ;;
	esac
}

RET_LAST_PASS=$RET_WINDOW

run_retention_side() {
	local side=$1 round=$2 secs removed rate t0 t1 s0 s1 pid log
	log="$LOG_DIR/retention-$side-r$round.log"
	case $side in
		pass)
			ret_fresh_log
			read -r secs removed <<<"$(ret_timed_pass)"
			if [ "$removed" -lt "$RET_REMOVABLE" ]; then ret_failed pass "$round" "removed $removed of $RET_REMOVABLE"; return 0; fi
			rate=$(awk -v n="$removed" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')
			RET_LAST_PASS=$(awk -v s="$secs" -v w="$RET_WINDOW" 'BEGIN { printf "%d", (s > w ? s : w) + 0.5 }')
			ret_record pass "$rate"
			printf '  %-9s round %d  %-13s %8.2f s  %10.1f events removed/s\n' retention "$round" pass "$secs" "$rate"
			;;
		raw_delete)
			reset_state
			cqrs_psql -c "INSERT INTO bench.raw_events (\"position\", stream, version, id, type, data, metadata)
				SELECT nextval('bench.raw_position_seq'), stream,
				       row_number() OVER (PARTITION BY stream ORDER BY n), gen_random_uuid(), type, data, '{}'
				  FROM bench.ret_staging ORDER BY n" \
				-c 'VACUUM ANALYZE bench.raw_events' -c CHECKPOINT >/dev/null
			if ! cqrs_psql -tA -F ' ' >"$log" 2>&1 <<'SQL'; then ret_failed raw_delete "$round" "see $log"; return 0; fi
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
DELETE FROM bench.raw_events r
 USING (SELECT stream, max(version) AS head FROM bench.raw_events GROUP BY stream) h
 WHERE r.stream = h.stream AND r.version <= h.head - 2;
SELECT extract(epoch FROM clock_timestamp()) - :t0, (SELECT count(*) FROM bench.raw_events);
SQL
			read -r secs removed <<<"$(tail -n 1 "$log")"
			removed=$((RET_EVENTS - removed))
			if [ "$removed" != "$RET_REMOVABLE" ]; then ret_failed raw_delete "$round" "removed $removed"; return 0; fi
			rate=$(awk -v n="$removed" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')
			ret_record raw_delete "$rate"
			printf '  %-9s round %d  %-13s %8.2f s  %10.1f events removed/s\n' retention "$round" raw_delete "$secs" "$rate"
			;;
		pass_appends)
			ret_fresh_log
			cqrs_as_owner "$CQRS_BINDIR/pgbench" -n -M prepared -c "$RET_CLIENTS" -j "$((RET_CLIENTS < NCPU ? RET_CLIENTS : NCPU))" \
				-T 600 -D "streams=$RET_STREAMS" -f "$SCRIPTS/retention_append.sql" >"$log" 2>&1 &
			pid=$!
			sleep 2
			s0=$(ret_seq)
			t0=$(now_s)
			read -r secs removed <<<"$(ret_timed_pass)"
			s1=$(ret_seq)
			t1=$(now_s)
			ret_stop_pgbench "$pid"
			if [ "$removed" -lt "$RET_REMOVABLE" ]; then ret_failed pass_appends "$round" "removed $removed of $RET_REMOVABLE"; return 0; fi
			rate=$(awk -v n="$removed" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')
			ret_record pass_appends "$rate"
			ret_record during "$(awk -v n="$((s1 - s0))" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", n / (b - a) }')"
			printf '  %-9s round %d  %-13s %8.2f s  %10.1f events removed/s, appends %s events/s\n' \
				retention "$round" pass_appends "$secs" "$rate" "$(awk -v n="$((s1 - s0))" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", n / (b - a) }')"
			;;
		appends)
			ret_fresh_log
			cqrs_as_owner "$CQRS_BINDIR/pgbench" -n -M prepared -c "$RET_CLIENTS" -j "$((RET_CLIENTS < NCPU ? RET_CLIENTS : NCPU))" \
				-T 600 -D "streams=$RET_STREAMS" -f "$SCRIPTS/retention_append.sql" >"$log" 2>&1 &
			pid=$!
			sleep 2
			s0=$(ret_seq)
			t0=$(now_s)
			sleep "$RET_LAST_PASS"
			s1=$(ret_seq)
			t1=$(now_s)
			ret_stop_pgbench "$pid"
			rate=$(awk -v n="$((s1 - s0))" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", n / (b - a) }')
			ret_record alone "$rate"
			printf '  %-9s round %d  %-13s %8.2f s  appends %s events/s\n' retention "$round" appends \
				"$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" "$rate"
			;;
	esac
}

# End the pgbench we started in the background: cancel its sessions (the
# cluster is ours alone), then reap it.
ret_stop_pgbench() {
	cqrs_psql -tAc "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = 'pgbench' AND pid <> pg_backend_pid()" >/dev/null
	wait "$1" 2>/dev/null || true
}

run_retention_group() {
	local r i n sides=(pass raw_delete pass_appends appends)
	n=${#sides[@]}
	reset_state
	echo "bench: retention ($RET_EVENTS events, $RET_STREAMS streams of $RET_PER_STREAM; $RET_REMOVABLE removable): loading the staging table"
	cqrs_psql >/dev/null <<SQL
SET client_min_messages = warning;
DROP TABLE IF EXISTS bench.ret_staging;
CREATE TABLE bench.ret_staging (n bigint PRIMARY KEY, stream text NOT NULL, type text NOT NULL, data jsonb NOT NULL);
INSERT INTO bench.ret_staging
SELECT g, 'acct-' || ((g - 1) % $RET_STREAMS + 1), 'Deposited', jsonb_build_object('amount', g % 1000)
  FROM generate_series(1, $RET_EVENTS) g;
VACUUM ANALYZE bench.ret_staging;
ALTER SYSTEM SET cqrs.retention_naptime = '100ms';
SELECT pg_reload_conf();
SQL
	for ((r = 1; r <= RET_ROUNDS; r++)); do
		for ((i = 0; i < n; i++)); do
			run_retention_side "${sides[$(((i + r - 1) % n))]}" "$r"
		done
	done
	cqrs_psql -c 'DROP TABLE bench.ret_staging' -c 'ALTER SYSTEM RESET cqrs.retention_naptime' \
		-c 'SELECT pg_reload_conf()' >/dev/null
}

print_retention_rows() {
	row 13 "retention: worker pass vs one DELETE, ${RET_EVENTS} ev" 1 \
		retention/pass retention/raw_delete ev/s
	row 13 "  pass with $RET_CLIENTS appending clients vs alone" 1 \
		retention/pass_appends retention/pass ev/s
	row 13 "  appends during the pass vs without it" "$RET_CLIENTS" \
		retention/during retention/alone ev/s
}
