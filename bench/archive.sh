# bench/archive.sh - the archive workload of "make bench", sourced by
# bench/run.sh after its helpers are defined.  What moving old events out
# of the log buys: table and index sizes, VACUUM time, append speed.
#
#   A log of $ARCH_EVENTS events in "acct" streams of 20 (small payloads,
#   imported with cqrs.import_events, the filter indexes in place as
#   CREATE EXTENSION leaves them), and a rule keeping the last 2 events of
#   each stream: 90% of the log is taken out.  The worker runs no rules
#   during the group (cqrs.retention_naptime = 0): every pass is a timed
#   cqrs.apply_retention('acct') in one session (one transaction).
#
#   one-off     $ARCH_ROUNDS alternated rounds, each side on a freshly
#               imported log (VACUUM ANALYZE, CHECKPOINT), the rule's first
#               batch of one event untimed (arch_prime), then the rest:
#                 archive   the rule with archive => true: events moved/s
#                 delete    the same rule with archive => false (0.7.0):
#                           events deleted/s
#               then, on both, a CHECKPOINT and a timed plain VACUUM of
#               cqrs.events; the sizes of its heap (pg_relation_size) and
#               indexes (pg_indexes_size) before and after, and the
#               archive's (its partitions: heap, indexes, TOAST).
#   steady      two more databases, each with the same log imported:
#                 archived    the archive rule applied once (as above),
#                             VACUUM, then $ARCH_APPENDS appends in
#                             $ARCH_CHUNKS chunks, each chunk followed by
#                             apply_retention('acct') (the rule moving what
#                             the chunk pushed out) and VACUUM
#                 unarchived  no rule: the same appends in the same chunks,
#                             each followed by VACUUM
#               A chunk is one statement of cqrs.append calls, one per
#               stream in turn (one session), timed on both databases, the
#               first alternating (events/s).  Then: sizes, the last chunk's
#               VACUUM time, a timed VACUUM (FREEZE) of each (what an
#               anti-wraparound VACUUM costs), append tps of $ARCH_CLIENTS
#               pgbench clients (bench/retention_append.sql) on each
#               database alternately, $ROUNDS rounds of $RUN_SECONDS s.
#               Last, on the archived database: the rule's pass and VACUUM
#               again (what the tps runs appended), then a timed VACUUM
#               FULL of the log, with an append sent once it holds its
#               ACCESS EXCLUSIVE lock (how long that append waited), and
#               the sizes after.
#   Reports archive / delete (events/s), the chunks' and pgbench's append
#   speed archived / unarchived, and a table of sizes and VACUUM times.

ARCH_EVENTS=${BENCH_ARCHIVE_EVENTS:-2000000}
ARCH_APPENDS=${BENCH_ARCHIVE_APPENDS:-1000000}
if [ -n "${BENCH_QUICK:-}" ]; then
	ARCH_ROUNDS=${BENCH_ARCHIVE_ROUNDS:-1}
else
	ARCH_ROUNDS=${BENCH_ARCHIVE_ROUNDS:-3}
fi
ARCH_CHUNKS=${BENCH_ARCHIVE_CHUNKS:-10}
ARCH_CLIENTS=${BENCH_ARCHIVE_CLIENTS:-4}
for v in ARCH_EVENTS ARCH_APPENDS ARCH_ROUNDS ARCH_CHUNKS ARCH_CLIENTS; do
	case ${!v} in
		''|*[!0-9]*|0) echo "bench: $v must be a positive integer, not \"${!v}\"" >&2; exit 2 ;;
	esac
done
ARCH_PER_STREAM=20
ARCH_STREAMS=$((ARCH_EVENTS / ARCH_PER_STREAM))
ARCH_EVENTS=$((ARCH_STREAMS * ARCH_PER_STREAM))
ARCH_OUT=$((ARCH_STREAMS * (ARCH_PER_STREAM - 2)))
ARCH_CHUNK=$((ARCH_APPENDS / ARCH_CHUNKS))
ARCH_APPENDS=$((ARCH_CHUNK * ARCH_CHUNKS))
ARCH_DB_ON=bench_archived
ARCH_DB_OFF=bench_unarchived

declare -A ARCH_SIZE ARCH_VACUUM
ARCH_NOTE=""
ARCH_PROBE=""

arch_psql() { # db psql-args...
	local db=$1
	shift
	cqrs_psql -d "$db" "$@"
}

# Seconds a statement takes in database $1, from the server's clock, in one
# session, up to the start of the next statement (so its commit counts).
arch_timed() { # db sql
	arch_psql "$1" -tA <<SQL | tail -n 1 || true
SELECT extract(epoch FROM clock_timestamp()) AS t0 \\gset
$2
SELECT extract(epoch FROM clock_timestamp()) - :t0;
SQL
}

arch_record() { # key value
	TPS[$1]="${TPS[$1]:-} $2"
}

arch_failed() { # what why
	FAILED_RUNS=$((FAILED_RUNS + 1))
	printf '  %-9s %-24s FAILED: %s\n' archive "$1" "$2"
}

# Does the installed pg_cqrs have archive rules (0.8.0)?
arch_available() { # db
	[ "$(arch_psql "$1" -tAc "SELECT count(*) FROM pg_catalog.pg_proc p
		JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = 'cqrs' AND p.proname = 'set_retention' AND 'archive' = ANY (p.proargnames)")" != 0 ]
}

# The group's log, imported into database $1's empty log, then VACUUM
# ANALYZE and a CHECKPOINT.
arch_load() { # db
	arch_psql "$1" -c "SELECT cqrs.import_events(stream, 'Deposited', data, NULL, NULL ORDER BY n)
		  FROM (SELECT g AS n, 'acct-' || ((g - 1) % $ARCH_STREAMS + 1) AS stream,
		               jsonb_build_object('amount', g % 1000) AS data
		          FROM generate_series(1, $ARCH_EVENTS) g) s" \
		-c 'VACUUM ANALYZE cqrs.events' -c CHECKPOINT >/dev/null
}

# "heap index archive hot_rows archived_rows" of database $1: bytes of
# cqrs.events' main fork and of its indexes, of the archive's partitions
# (heap, indexes and TOAST), and the rows in each.
arch_sizes() { # db
	local archived=0
	if [ "$(arch_psql "$1" -tAc "SELECT pg_catalog.to_regclass('cqrs.events_archive') IS NOT NULL")" = t ]; then
		archived=$(arch_psql "$1" -tAc 'SELECT count(*) FROM cqrs.events_archive')
	fi
	arch_psql "$1" -tA -F ' ' <<SQL
SELECT pg_catalog.pg_relation_size('cqrs.events'),
       pg_catalog.pg_indexes_size('cqrs.events'),
       coalesce((SELECT sum(pg_catalog.pg_total_relation_size(relid))
                   FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass('cqrs.events_archive'))
                  WHERE isleaf), 0),
       (SELECT count(*) FROM cqrs.events),
       $archived;
SQL
}

# The rule's arguments after the category: moving, or the deleting rule of
# 0.7.0 (also the stand-in for the archived state while archiving is not
# installed).
arch_rule() { # archive|delete
	if [ "$1" = archive ]; then
		echo "max_count => 2, archive => true"
	else
		echo "max_count => 2"
	fi
}

# Apply the rule in one transaction, timed; prints "seconds taken_out"
# (nothing when it failed: the error is on stderr).
arch_apply() { # db
	arch_psql "$1" -tA -F ' ' <<'SQL' | tail -n 1 || true
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
SELECT cqrs.apply_retention('acct') AS n \gset
SELECT round((extract(epoch FROM clock_timestamp()) - :t0)::numeric, 3), :n;
SQL
}

# The rule's first batch, of one event, untimed: an archive rule's first
# batch of the month makes the archive's partition for it (DDL under an
# ACCESS EXCLUSIVE lock on the archive, once a month), which is not what
# moving costs; the delete side does the same.  Prints how many went.
arch_prime() { # db
	arch_psql "$1" -tAc "SELECT cqrs.apply_retention('acct', max_events => 1)" || echo 0
}

# CHECKPOINT, then a timed plain VACUUM of the log; prints the seconds.
arch_vacuum() { # db
	arch_psql "$1" -c CHECKPOINT >/dev/null
	arch_timed "$1" 'VACUUM cqrs.events;'
}

rate_of() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", (s > 0) ? n / s : 0 }'; }

run_archive_oneoff() { # side round
	local side=$1 round=$2 secs n n0 rate vac
	reset_state
	arch_load postgres
	[ -n "${ARCH_SIZE[loaded]:-}" ] || ARCH_SIZE[loaded]=$(arch_sizes postgres)
	arch_psql postgres -c "SELECT cqrs.set_retention('acct', $(arch_rule "$side"))" >/dev/null
	n0=$(arch_prime postgres)
	arch_psql postgres -c CHECKPOINT >/dev/null
	read -r secs n <<<"$(arch_apply postgres)"
	if [ "$((n0 + ${n:-0}))" != "$ARCH_OUT" ]; then
		arch_failed "one-off $side round $round" "took out $n0 + ${n:-nothing} of $ARCH_OUT"
		arch_record "archive_move/$side" NA
		return 0
	fi
	if [ "$side" = archive ] && [ "$(arch_psql postgres -tAc 'SELECT count(*) FROM cqrs.events_archive')" != "$ARCH_OUT" ]; then
		arch_failed "one-off $side round $round" "the archive does not hold the $ARCH_OUT events moved"
		arch_record "archive_move/$side" NA
		return 0
	fi
	rate=$(rate_of "$n" "$secs")
	arch_record "archive_move/$side" "$rate"
	vac=$(arch_vacuum postgres)
	ARCH_VACUUM[$side]="${ARCH_VACUUM[$side]:-} $vac"
	ARCH_SIZE[$side]=$(arch_sizes postgres)
	printf '  %-9s round %d  %-8s %8.2f s  %10.1f events/s  VACUUM %.2f s\n' archive "$round" "$side" \
		"$secs" "$rate" "$vac"
}

# One chunk of appends into database $1, timed; prints the seconds.
arch_chunk() { # db chunk-number
	local base=$((ARCH_EVENTS + ($2 - 1) * ARCH_CHUNK))
	arch_timed "$1" "SELECT count(*) FROM generate_series($base + 1, $base + $ARCH_CHUNK) g,
	    LATERAL cqrs.append('acct-' || ((g - 1) % $ARCH_STREAMS + 1), 'Deposited', jsonb_build_object('amount', g % 1000));"
}

# The two databases, alternated: "first second" for turn $1.
arch_order() { if (($1 % 2)); then echo "$ARCH_DB_ON $ARCH_DB_OFF"; else echo "$ARCH_DB_OFF $ARCH_DB_ON"; fi; }

run_archive_steady() {
	local db c i secs n n0 vac pid log probe full order
	local -A label=([$ARCH_DB_ON]=archived [$ARCH_DB_OFF]=unarchived)
	echo "bench: archive: steady state, $ARCH_APPENDS appends in $ARCH_CHUNKS chunks, with and without the rule"
	for db in "$ARCH_DB_ON" "$ARCH_DB_OFF"; do
		cqrs_psql -c 'SET client_min_messages = warning' -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
		arch_psql "$db" -c 'CREATE EXTENSION pg_cqrs' >/dev/null
		arch_load "$db"
	done
	arch_psql "$ARCH_DB_ON" -c "SELECT cqrs.set_retention('acct', $(arch_rule "$ARCH_SIDE"))" >/dev/null
	n0=$(arch_prime "$ARCH_DB_ON")
	read -r secs n <<<"$(arch_apply "$ARCH_DB_ON")"
	[ "$((n0 + ${n:-0}))" = "$ARCH_OUT" ] || arch_failed "steady: first pass" "took out $n0 + ${n:-nothing} of $ARCH_OUT"
	arch_vacuum "$ARCH_DB_ON" >/dev/null
	ARCH_SIZE[steady_start]=$(arch_sizes "$ARCH_DB_ON")
	for ((c = 1; c <= ARCH_CHUNKS; c++)); do
		read -r -a order <<<"$(arch_order "$c")"
		for db in "${order[@]}"; do
			arch_psql "$db" -c CHECKPOINT >/dev/null
			secs=$(arch_chunk "$db" "$c")
			arch_record "archive_chunk/${label[$db]}" "$(rate_of "$ARCH_CHUNK" "$secs")"
		done
		read -r secs n <<<"$(arch_apply "$ARCH_DB_ON")"
		arch_record "archive_steady_pass/archived" "$(rate_of "${n:-0}" "$secs")"
		for db in "${order[@]}"; do
			vac=$(arch_vacuum "$db")
			ARCH_VACUUM[steady_${label[$db]}]="${ARCH_VACUUM[steady_${label[$db]}]:-} $vac"
		done
		printf '  %-9s chunk %2d  %d appends: archived %s ev/s, unarchived %s ev/s; the rule took out %s in %s s;' \
			archive "$c" "$ARCH_CHUNK" "${TPS[archive_chunk/archived]##* }" "${TPS[archive_chunk/unarchived]##* }" "$n" "$secs"
		printf ' VACUUM %.2f s / %.2f s\n' "${ARCH_VACUUM[steady_archived]##* }" "${ARCH_VACUUM[steady_unarchived]##* }"
	done
	n=$(arch_psql "$ARCH_DB_OFF" -tAc 'SELECT count(*) FROM cqrs.events')
	[ "$n" = "$((ARCH_EVENTS + ARCH_APPENDS))" ] || arch_failed "steady: unarchived log" "holds $n events"
	n=$(arch_psql "$ARCH_DB_ON" -tAc 'SELECT count(*) FROM cqrs.events')
	[ "$n" = "$((2 * ARCH_STREAMS))" ] || arch_failed "steady: archived log" "holds $n events, not the last 2 of each stream"
	if [ "$ARCH_SIDE" = archive ]; then
		n=$(arch_psql "$ARCH_DB_ON" -tAc 'SELECT count(*) FROM cqrs.events_archive')
		[ "$n" = "$((ARCH_OUT + ARCH_APPENDS))" ] ||
			arch_failed "steady: archive" "holds $n events, not the $((ARCH_OUT + ARCH_APPENDS)) moved"
	fi
	ARCH_SIZE[steady_archived]=$(arch_sizes "$ARCH_DB_ON")
	ARCH_SIZE[steady_unarchived]=$(arch_sizes "$ARCH_DB_OFF")
	# What every table gets at last, whatever its dead rows: an aggressive
	# (anti-wraparound) VACUUM visits every page not yet frozen, so its
	# time follows the heap's size.
	read -r -a order <<<"$(arch_order 1)"
	for db in "${order[@]}"; do
		arch_psql "$db" -c CHECKPOINT >/dev/null
		ARCH_VACUUM[freeze_${label[$db]}]=$(arch_timed "$db" 'VACUUM (FREEZE) cqrs.events;')
	done
	printf '  %-9s VACUUM (FREEZE) of the log: archived %.2f s, unarchived %.2f s\n' archive \
		"${ARCH_VACUUM[freeze_archived]}" "${ARCH_VACUUM[freeze_unarchived]}"

	# append tps in both states, alternated
	for ((i = 1; i <= ROUNDS; i++)); do
		read -r -a order <<<"$(arch_order "$i")"
		for db in "${order[@]}"; do
			log="$LOG_DIR/archive-tps-${label[$db]}-r$i.log"
			arch_psql "$db" -c CHECKPOINT >/dev/null
			secs=""
			cqrs_as_owner "$CQRS_BINDIR/pgbench" -n -M prepared -c "$ARCH_CLIENTS" \
				-j "$((ARCH_CLIENTS < NCPU ? ARCH_CLIENTS : NCPU))" -T "$RUN_SECONDS" \
				-D "streams=$ARCH_STREAMS" -f "$SCRIPTS/retention_append.sql" "$db" >"$log" 2>&1 &&
				secs=$(pgbench_value 'tps ' "$log")
			if [ -n "$secs" ]; then
				arch_record "archive_tps/${label[$db]}" "$secs"
				printf '  %-9s round %d  %-10s c=%-2d %10.1f tps\n' archive "$i" "${label[$db]}" "$ARCH_CLIENTS" "$secs"
			else
				arch_failed "tps ${label[$db]} round $i" "see $log"
				arch_record "archive_tps/${label[$db]}" NA
			fi
		done
	done

	# The archived log after the tps runs' appends: the rule's pass and
	# VACUUM once more, then VACUUM FULL, with an append sent once it holds
	# its lock.
	arch_apply "$ARCH_DB_ON" >/dev/null
	arch_vacuum "$ARCH_DB_ON" >/dev/null
	ARCH_SIZE[steady_before_full]=$(arch_sizes "$ARCH_DB_ON")
	log="$LOG_DIR/archive-vacuum-full.log"
	arch_psql "$ARCH_DB_ON" -c CHECKPOINT >/dev/null
	arch_timed "$ARCH_DB_ON" 'VACUUM FULL cqrs.events;' >"$log" 2>&1 &
	pid=$!
	for ((i = 0; i < 200; i++)); do
		[ "$(arch_psql "$ARCH_DB_ON" -tAc "SELECT count(*) FROM pg_catalog.pg_locks
			WHERE relation = 'cqrs.events'::regclass AND mode = 'AccessExclusiveLock' AND granted")" = 0 ] || break
		sleep 0.05
	done
	probe=$(arch_timed "$ARCH_DB_ON" "SELECT * FROM cqrs.append('acct-1', 'Deposited', '{\"amount\": 1}');")
	wait "$pid" || true
	full=$(tail -n 1 "$log")
	case $full in
		''|*[!0-9.]*) arch_failed "VACUUM FULL" "see $log"; full="" ;;
	esac
	ARCH_VACUUM[full]=$full
	ARCH_PROBE=$probe
	ARCH_SIZE[steady_full]=$(arch_sizes "$ARCH_DB_ON")
	printf '  %-9s VACUUM FULL of the archived log: %.2f s; an append sent once it held its lock took %.2f s\n' \
		archive "${full:-0}" "$probe"
	for db in "$ARCH_DB_ON" "$ARCH_DB_OFF"; do
		cqrs_psql -c "DROP DATABASE $db" >/dev/null
	done
}

ARCH_SIDE=archive
run_archive_group() {
	local r i sides
	reset_state
	echo "bench: archive ($ARCH_EVENTS events, $ARCH_STREAMS streams of $ARCH_PER_STREAM; a rule keeping the last 2 takes out $ARCH_OUT)"
	if arch_available postgres; then
		sides=(archive delete)
	else
		# until 0.8.0 is installed: the deleting rule alone, also as the
		# stand-in for the archived state (the log's side is the same)
		ARCH_SIDE=delete
		sides=(delete)
		ARCH_NOTE="archiving not installed: no archive side; the steady state's \"archived\" database used a deleting rule"
		echo "  skipped: $ARCH_NOTE"
	fi
	cqrs_psql -c 'ALTER SYSTEM SET cqrs.retention_naptime = 0' -c 'SELECT pg_reload_conf()' >/dev/null
	for ((r = 1; r <= ARCH_ROUNDS; r++)); do
		for ((i = 0; i < ${#sides[@]}; i++)); do
			run_archive_oneoff "${sides[$(((i + r - 1) % ${#sides[@]}))]}" "$r"
		done
	done
	run_archive_steady
	cqrs_psql -c 'ALTER SYSTEM RESET cqrs.retention_naptime' -c 'SELECT pg_reload_conf()' >/dev/null
}

arch_mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

arch_size_row() { # title key [vacuum-seconds]
	local heap idx arch hot archived secs=""
	read -r heap idx arch hot archived <<<"${ARCH_SIZE[$2]:-}"
	[ -n "${heap:-}" ] || return 0
	[ -n "${3:-}" ] && secs=$(printf '%.2f' "$3")
	printf '   %-46s %8s %8s %8s %9s %9s %9s\n' "$1" "$(arch_mb "$heap")" "$(arch_mb "$idx")" \
		"$(arch_mb "$arch")" "$hot" "$archived" "$secs"
}

print_archive_rows() {
	row 18 "archive: move vs delete (apply_retention), ${ARCH_EVENTS} ev" 1 \
		archive_move/archive archive_move/delete ev/s
	row 18 "  appends in one statement, archived vs not" 1 \
		archive_chunk/archived archive_chunk/unarchived ev/s
	row 18 "  append tps, archived vs unarchived log" "$ARCH_CLIENTS" \
		archive_tps/archived archive_tps/unarchived tps
}

print_archive_sizes() {
	local v
	echo
	echo "18 archive: cqrs.events' heap and indexes, the archive's partitions (with indexes), in MB; rows;" \
		"plain VACUUM of cqrs.events after a CHECKPOINT (s; one-off: median of $ARCH_ROUNDS)"
	[ -n "$ARCH_NOTE" ] && echo "   ($ARCH_NOTE)"
	printf '   %-46s %8s %8s %8s %9s %9s %9s\n' state heap indexes archive 'hot rows' archived 'VACUUM s'
	arch_size_row "$ARCH_EVENTS events loaded (VACUUM ANALYZE)" loaded
	# shellcheck disable=SC2086
	{
		v=$(median ${ARCH_VACUUM[archive]:-}); arch_size_row "archive rule applied, then VACUUM" archive "$v"
		v=$(median ${ARCH_VACUUM[delete]:-}); arch_size_row "deleting rule applied, then VACUUM" delete "$v"
	}
	arch_size_row "steady: start (archived, VACUUM)" steady_start
	arch_size_row "  +$ARCH_APPENDS, rule + VACUUM per chunk" steady_archived "${ARCH_VACUUM[steady_archived]##* }"
	arch_size_row "  +$ARCH_APPENDS, no rule, VACUUM per chunk" steady_unarchived "${ARCH_VACUUM[steady_unarchived]##* }"
	arch_size_row "  archived, after the tps runs, rule + VACUUM" steady_before_full
	arch_size_row "  then VACUUM FULL (s: its time)" steady_full "${ARCH_VACUUM[full]:-}"
	if [ -n "${ARCH_VACUUM[freeze_archived]:-}" ]; then
		printf '   VACUUM (FREEZE) after the %d appends (every page not yet frozen): archived %.2f s, unarchived %.2f s\n' \
			"$ARCH_APPENDS" "${ARCH_VACUUM[freeze_archived]}" "${ARCH_VACUUM[freeze_unarchived]}"
	fi
	if [ -n "$ARCH_PROBE" ]; then
		printf '   VACUUM FULL locks the log (ACCESS EXCLUSIVE): an append sent once it held the lock took %.2f s\n' "$ARCH_PROBE"
	fi
	if [ -n "${TPS[archive_steady_pass/archived]:-}" ]; then
		echo "   steady: the rule's pass after each chunk: median $(fmt_num "$(med archive_steady_pass/archived)") events/s"
	fi
}
