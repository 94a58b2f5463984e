#!/usr/bin/env bash
# bench/run.sh - pg_cqrs against plain-SQL baselines, with pgbench ("make bench")
#
# Builds and installs the extension, starts a throwaway cluster (durable
# commits: fsync and synchronous_commit stay at their defaults), then runs
# each workload's sides alternated in one go (A B, B A, A B ... with the
# state reset and a CHECKPOINT before every run), and prints each side's
# median tps and the median of the per-round ratios.  See bench/README.md.
#
#   bash bench/run.sh [--quick]
#
# Environment:
#   BENCH_SECONDS   seconds per pgbench run          (default 6; quick 3)
#   BENCH_ROUNDS    runs per side and workload        (default 7; quick 3)
#   BENCH_QUICK=1   same as --quick
#   BENCH_CLIENTS   client count of the concurrent workloads (default 8)
#   BENCH_ONLY      which workload groups, comma-separated, of
#                   single,multi,batch,race,nodurable,sync,deferred,lag,
#                   capture,outbox,replay,reconcile,verify,import,relay,
#                   lifecycle,filtered,append_filter_index,online_sync,
#                   retention,archive
#                                                     (default all)
#                   filtered: read_all and a deferred projection on a rare
#                   category, with the filter indexes vs without them
#                   append_filter_index: append and raw INSERT, each with
#                   and without the filter indexes (bench/filtered.sh)
#                   nodurable: append vs raw INSERT at BENCH_CLIENTS with
#                   synchronous_commit = off for those runs only, pgbench
#                   -M simple and -M prepared (the CPU cost of each side)
#                   import: cqrs.import_events vs INSERT ... SELECT of the
#                   same rows (skipped while import_events is not installed)
#                   lifecycle: cqrs.delete_stream(hard) and erase_stream of
#                   one stream vs plain DELETE / UPDATE of the same rows
#   BENCH_LIFECYCLE_EVENTS events of the stream the lifecycle group removes
#                   and erases (100000)
#   BENCH_DEFERRED_EVENTS  events the deferred group catches up on (100000)
#   BENCH_FILTERED_EVENTS  size of the filtered group's log (1000000)
#   BENCH_IMPORT_EVENTS    events the import group imports, 5 per stream
#                                                     (default 200000)
#   BENCH_RETENTION_EVENTS size of the retention group's log, 20 per stream
#                                                     (default 1000000)
#   BENCH_RETENTION_ROUNDS rounds of the retention group (default 3)
#   BENCH_RETENTION_CLIENTS appending clients during its pass (default 4)
#   BENCH_ARCHIVE_EVENTS   size of the archive group's log, 20 per stream
#                                                     (default 2000000)
#   BENCH_ARCHIVE_APPENDS  events it appends on top, with and without the
#                   archive rule (default 1000000)
#   BENCH_ARCHIVE_CHUNKS   chunks of those appends, each followed by the
#                   rule's pass and VACUUM (default 10)
#   BENCH_ARCHIVE_ROUNDS   rounds of its one-off move vs delete (default 3;
#                   quick 1)
#   BENCH_ARCHIVE_CLIENTS  pgbench clients of its append tps runs (default 4)
#   BENCH_LAG_SECONDS      length of the lag run      (default 3 x BENCH_SECONDS)
#   BENCH_OUTBOX_EVENTS    events the outbox group decodes (200000)
#   BENCH_RELAY_EVENTS     backlog of the relay group: pg_cqrs_relay into
#                   nats-server vs pg_recvlogical to /dev/null (200000)
#   BENCH_REPLAY_EVENTS    size of the replay/reconcile/verify log (1000000)
#   BENCH_REPLAY_ROUNDS    rounds of those groups     (default 3)
#   BENCH_ONLINE_EVENTS    size of the online_sync group's log (1000000)
#   BENCH_ONLINE_CLIENTS   its appending clients (4)
#   BENCH_ONLINE_SECONDS   its windows' length (default 10 s + 4 x a blocking catch-up)
#   BENCH_PROJECTION_DIGEST=false  the sync, deferred and lag projections
#                   keep no digest (to measure what digests cost)
#   BENCH_SHARED_BUFFERS                              (default 1GB)
#   BENCH_LOG_DIR   where every pgbench output is kept (default a new
#                   /tmp/pg_cqrs_bench.XXXXXX)
#   BENCH_SYNCHRONOUS_COMMIT=off  diagnostic only: commits stop waiting for
#                   the WAL flush, which leaves the CPU cost of each side
#                   (the table then says "NOT durable"); not the comparison
#   BENCH_BASELINE_ONLY=1  run only the plain-SQL sides, without building
#                   or loading pg_cqrs (to check the baselines themselves)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$BENCH_DIR/.." && pwd)

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

for arg in "$@"; do
	case $arg in
		--quick) BENCH_QUICK=1 ;;
		-h|--help) usage; exit 0 ;;
		*) echo "bench: unknown argument \"$arg\" (try --help)" >&2; exit 2 ;;
	esac
done

if [ -n "${BENCH_QUICK:-}" ]; then
	RUN_SECONDS=${BENCH_SECONDS:-3}
	ROUNDS=${BENCH_ROUNDS:-3}
else
	RUN_SECONDS=${BENCH_SECONDS:-6}
	ROUNDS=${BENCH_ROUNDS:-7}
fi
CLIENTS=${BENCH_CLIENTS:-8}
ONLY=${BENCH_ONLY:-single,multi,batch,race,nodurable,sync,deferred,lag,capture,outbox,replay,reconcile,verify,import,relay,lifecycle,filtered,append_filter_index,online_sync,retention,archive}
BASELINE_ONLY=${BENCH_BASELINE_ONLY:-}
BATCH=100			# events per append_events call
RACE_STREAMS=20		# fixed in race_*.sql
MAX_TRIES=10

for v in RUN_SECONDS ROUNDS CLIENTS; do
	case ${!v} in
		''|*[!0-9]*|0) echo "bench: $v must be a positive integer, not \"${!v}\"" >&2; exit 2 ;;
	esac
done
for g in ${ONLY//,/ }; do
	case $g in single|multi|batch|race|nodurable|sync|deferred|lag|capture|outbox|replay|reconcile|verify|import|relay|lifecycle|filtered|append_filter_index|online_sync|retention|archive) ;;
		*) echo "bench: unknown workload group \"$g\" in BENCH_ONLY" >&2; exit 2 ;;
	esac
done
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# shellcheck source-path=SCRIPTDIR/.. source=test/lib/deps.sh
source "$TOP/test/lib/deps.sh"
cqrs_enter_version bench/run.sh "$@"
cqrs_install_deps
if [ -z "$BASELINE_ONLY" ]; then
	echo "bench: building and installing pg_cqrs"
	cqrs_build_install
fi
# What is installed now; checked before every run, because another checkout
# installing its build into the same server mid-run would mix results.
installed_sum() {
	local pgc
	pgc=$(cqrs_pg_config)
	cat "$("$pgc" --pkglibdir)/pg_cqrs.so" "$("$pgc" --sharedir)"/extension/pg_cqrs* 2>/dev/null |
		md5sum | cut -d' ' -f1
}
INSTALLED_SUM=$(installed_sum)
REINSTALLED=""

# shellcheck source-path=SCRIPTDIR/.. source=test/lib/cluster.sh
source "$TOP/test/lib/cluster.sh"

conf=(
	"shared_buffers = ${BENCH_SHARED_BUFFERS:-1GB}"
	"max_wal_size = 8GB"
	"min_wal_size = 1GB"
	"checkpoint_timeout = 1h"	# only our explicit CHECKPOINTs, never mid-run
	"autovacuum = off"			# every run starts from empty tables
)
[ -n "$BASELINE_ONLY" ] && conf+=("shared_preload_libraries = ''")
# outbox: wal2json is decoded side by side with pg_cqrs when installed
conf+=("output_plugin_libraries = 'pgoutput, test_decoding, pg_cqrs, wal2json'")
DURABILITY="durable commits (fsync, synchronous_commit on)"
if [ -n "${BENCH_SYNCHRONOUS_COMMIT:-}" ]; then
	case $BENCH_SYNCHRONOUS_COMMIT in
		on|off|local|remote_write|remote_apply) ;;
		*) echo "bench: bad BENCH_SYNCHRONOUS_COMMIT \"$BENCH_SYNCHRONOUS_COMMIT\"" >&2; exit 2 ;;
	esac
	conf+=("synchronous_commit = $BENCH_SYNCHRONOUS_COMMIT")
	[ "$BENCH_SYNCHRONOUS_COMMIT" = on ] ||
		DURABILITY="NOT durable: synchronous_commit = $BENCH_SYNCHRONOUS_COMMIT (CPU-cost diagnostic)"
fi
cqrs_cluster_start "${conf[@]}"

LOG_DIR=${BENCH_LOG_DIR:-$(mktemp -d /tmp/pg_cqrs_bench.XXXXXX)}
mkdir -p "$LOG_DIR"

# pgbench runs as the cluster's owner: give it its own readable copy of the
# scripts, wherever this checkout lives.
SCRIPTS="$CQRS_WORK/bench"
mkdir -p "$SCRIPTS"
cp "$BENCH_DIR"/*.sql "$SCRIPTS"/
chmod -R a+rX "$SCRIPTS"

cqrs_psql <"$BENCH_DIR/baseline.sql" >/dev/null
[ -z "$BASELINE_ONLY" ] && cqrs_psql -c 'CREATE EXTENSION pg_cqrs'

# The 100-event batch of append_events, compact (no spaces).
EVENTS=$(
	printf '['
	for ((i = 1; i <= BATCH; i++)); do
		[ "$i" -gt 1 ] && printf ','
		printf '{"type":"OrderPlaced","data":{"amount":42,"currency":"EUR"}}'
	done
	printf ']'
)

NCPU=$(nproc 2>/dev/null || echo 2)
PGBENCH_VERSION=$(cqrs_as_owner "$CQRS_BINDIR/pgbench" --version)
SERVER_VERSION=$(cqrs_psql -tAc 'SHOW server_version')

# (in a version's chroot the copy has no .git: the host passes CQRS_REVISION)
REVISION=${CQRS_REVISION:-$(git -C "$TOP" describe --always --dirty 2>/dev/null || echo "not a git checkout")}
echo "bench: pg_cqrs $REVISION; $SERVER_VERSION, $PGBENCH_VERSION, $NCPU CPUs"
echo "bench: $ROUNDS rounds x ${RUN_SECONDS}s per side, $CLIENTS clients for the concurrent workloads"
echo "bench: settings: ${conf[*]}; $DURABILITY"
echo "bench: pgbench output kept in $LOG_DIR"

#
# The sides.  Each one: a pgbench script, extra pgbench options, the table
# its rows land in and how many rows one transaction writes (to check after
# every run that the work was really done).
#
side_script() {
	case $1 in
		append|append_nofilter) echo append.sql ;;
		raw|raw_nofilter) echo raw_insert.sql ;;
		plpgsql) echo plpgsql_append.sql ;;
		append_events) echo append_batch.sql ;;
		raw_batch) echo raw_batch.sql ;;
		race_append) echo race_append.sql ;;
		race_plpgsql) echo race_plpgsql.sql ;;
		sync_projection|sync_trigger) echo append.sql ;;
		captured) echo capture_insert.sql ;;
		uncaptured) echo plain_insert.sql ;;
	esac
}
side_table() {
	case $1 in
		append|append_nofilter|append_events|race_append|sync_*) echo cqrs.events ;;
		raw|raw_nofilter|raw_batch) echo bench.raw_events ;;
		plpgsql|race_plpgsql) echo bench.pl_events ;;
		captured) echo bench_cap.captured ;;
		uncaptured) echo bench_cap.plain ;;
	esac
}
side_rows() {
	case $1 in
		append_events|raw_batch) echo "$BATCH" ;;
		*) echo 1 ;;
	esac
}
side_needs_cqrs() {
	case $1 in append|append_nofilter|append_events|race_append|sync_*|captured|uncaptured) return 0 ;; *) return 1 ;; esac
}

# Everything back to empty, then a CHECKPOINT so that every run starts with
# clean buffers and pays the same full-page writes.
reset_state() {
	{
		echo 'SET client_min_messages = warning;'
		if [ -z "$BASELINE_ONLY" ]; then
			# projections first: dropping what they use is refused (0.4.0)
			echo "DO \$\$ BEGIN IF pg_catalog.to_regclass('cqrs.projections') IS NOT NULL THEN PERFORM cqrs.drop_projection(name) FROM cqrs.projections; END IF; END \$\$;"
			echo 'DROP SCHEMA IF EXISTS bench_proj, bench_cap, bench_rm CASCADE;'
			echo 'DROP EXTENSION pg_cqrs;'
			echo 'CREATE EXTENSION pg_cqrs;'
		fi
		echo 'TRUNCATE bench.raw_events, bench.pl_events, bench.pl_streams RESTART IDENTITY;'
		echo 'CHECKPOINT;'
	} | cqrs_psql >/dev/null || {
		echo "bench: resetting the state failed (was pg_cqrs reinstalled during the run?)" >&2
		exit 1
	}
}

# Results: "<group>/<side>" -> space-separated values, one per run.
declare -A TPS PROCESSED RETRIED RETRIES FAILED
FAILED_RUNS=0

# The numbers pgbench 15 prints, e.g. "tps = 812.3 (without initial ...)",
# "number of transactions retried: 12 (0.1%)", "total number of retries: 15".
pgbench_value() {
	local pattern=$1 log=$2
	sed -n "s/^${pattern}[:=] *\([0-9.]*\).*/\1/p" "$log" | head -n 1
}

run_side() {
	local group=$1 side=$2 clients=$3 round=$4
	local threads=$((clients < NCPU ? clients : NCPU))
	local log key tps processed rows want_rows args=()
	key="$group/$side"
	log="$LOG_DIR/$group-$side-c$clients-r$round.log"
	case $side in
		append_events) args+=(-D "events=$EVENTS") ;;
		race_*) args+=("--max-tries=$MAX_TRIES") ;;
	esac
	local protocol=prepared session=()
	case $group in
		nodurable_simple) protocol=simple ;;
	esac
	case $group in
		nodurable_*|*_nodurable) session=("PGOPTIONS=$NODURABLE_OPTIONS") ;;
	esac

	if [ -z "$REINSTALLED" ] && [ "$(installed_sum)" != "$INSTALLED_SUM" ]; then
		REINSTALLED=1
		echo "  WARNING: pg_cqrs was reinstalled from elsewhere during the bench; later runs use that build"
	fi
	reset_state
	projection_side_setup "$side"
	capture_side_setup "$side"
	filter_side_setup "$side"
	cqrs_psql -c CHECKPOINT >/dev/null
	if cqrs_as_owner env "${session[@]}" "$CQRS_BINDIR/pgbench" -n -M "$protocol" -c "$clients" -j "$threads" \
			-T "$RUN_SECONDS" "${args[@]}" -f "$SCRIPTS/$(side_script "$side")" \
			>"$log" 2>&1; then
		tps=$(pgbench_value 'tps ' "$log")
	else
		tps=""
	fi
	processed=$(pgbench_value 'number of transactions actually processed' "$log")
	if [ -z "$tps" ] || [ -z "$processed" ]; then
		FAILED_RUNS=$((FAILED_RUNS + 1))
		printf '  %-6s round %d  %-14s c=%-2d  FAILED, see %s\n' \
			"$group" "$round" "$side" "$clients" "$log"
		sed -n '1,15p' "$log" | sed 's/^/    | /'
		TPS[$key]="${TPS[$key]:-} NA"	# keep the rounds aligned for pairing
		return 0
	fi

	# Did the rows really land?  (A fast no-op would look like a win.)
	rows=$(cqrs_psql -tAc "SELECT count(*) FROM $(side_table "$side")")
	want_rows=$((processed * $(side_rows "$side")))
	if [ "$rows" != "$want_rows" ]; then
		echo "  WARNING: $side wrote $rows rows for $processed transactions (expected $want_rows)"
	fi
	projection_side_check "$side"
	capture_side_check "$side"

	TPS[$key]="${TPS[$key]:-} $tps"
	PROCESSED[$key]="${PROCESSED[$key]:-} $processed"
	RETRIED[$key]="${RETRIED[$key]:-} $(pgbench_value 'number of transactions retried' "$log")"
	RETRIES[$key]="${RETRIES[$key]:-} $(pgbench_value 'total number of retries' "$log")"
	FAILED[$key]="${FAILED[$key]:-} $(pgbench_value 'number of failed transactions' "$log")"
	printf '  %-6s round %d  %-14s c=%-2d  %10.1f tps\n' "$group" "$round" "$side" "$clients" "$tps"
}

# Alternate the sides round by round, rotating who goes first (A B, B A, ...)
# so that neither side always runs right after the other.
run_group() {
	local group=$1 clients=$2 r i n
	shift 2
	local sides=() s
	for s in "$@"; do
		if [ -n "$BASELINE_ONLY" ] && side_needs_cqrs "$s"; then continue; fi
		sides+=("$s")
	done
	n=${#sides[@]}
	[ "$n" -gt 0 ] || return 0
	echo "bench: $group ($clients clients): ${sides[*]}"
	for ((r = 1; r <= ROUNDS; r++)); do
		for ((i = 0; i < n; i++)); do
			run_side "$group" "${sides[$(((i + r - 1) % n))]}" "$clients" "$r"
		done
	done
}

median() {
	printf '%s\n' "$@" | awk 'NF && $1 != "NA"' | sort -g | awk '
		{ a[NR] = $1 }
		END {
			if (NR == 0) { print ""; exit }
			if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2
		}'
}
sum() { printf '%s\n' "$@" | awk 'NF { s += $1 } END { print s + 0 }'; }
med() { # shellcheck disable=SC2086
	median ${TPS[$1]:-}; }

# The ratio of two sides, paired by round: A's run over B's run of the same
# round (close in time, so they saw the same machine), then the median over
# the rounds, with the lowest and highest per-round ratio: "median min max".
paired() { # shellcheck disable=SC2086
	paste <(printf '%s\n' ${TPS[$1]:-}) <(printf '%s\n' ${TPS[$2]:-}) |
		awk 'NF == 2 && $1 != "NA" && $2 != "NA" && $2 > 0 { print $1 / $2 }' |
		sort -g | awk '
			{ a[NR] = $1 }
			END {
				if (NR == 0) { print "n/a n/a n/a"; exit }
				m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
				printf "%.2f %.2f %.2f\n", m, a[1], a[NR]
			}'
}

# shellcheck source=bench/projections.sh
source "$BENCH_DIR/projections.sh"
# shellcheck source=bench/replay.sh
source "$BENCH_DIR/replay.sh"
# shellcheck source=bench/online_sync.sh
source "$BENCH_DIR/online_sync.sh"

# The capture group: INSERT into a captured table (the row and its event,
# appended by the capture trigger) vs into an identical uncaptured table.
capture_side_setup() {
	case $1 in captured|uncaptured) cqrs_psql -f "$SCRIPTS/capture_setup.sql" >/dev/null ;; esac
}
capture_side_check() {
	local rows events
	[ "$1" = captured ] || return 0
	rows=$(cqrs_psql -tAc "SELECT count(*) FROM bench_cap.captured")
	events=$(cqrs_psql -tAc "SELECT count(*) FROM cqrs.events WHERE type = 'captured.inserted'")
	[ "$rows" = "$events" ] || echo "  WARNING: $rows captured rows but $events events"
}
# shellcheck source=bench/outbox.sh
source "$BENCH_DIR/outbox.sh"
# shellcheck source=bench/import.sh
source "$BENCH_DIR/import.sh"
# shellcheck source=bench/retention.sh
source "$BENCH_DIR/retention.sh"
# shellcheck source=bench/archive.sh
source "$BENCH_DIR/archive.sh"
# shellcheck source=bench/relay.sh
source "$BENCH_DIR/relay.sh"
# shellcheck source=bench/lifecycle.sh
source "$BENCH_DIR/lifecycle.sh"
# shellcheck source=bench/filtered.sh
source "$BENCH_DIR/filtered.sh"

# The nodurable group: append vs raw INSERT as in "multi", but with
# synchronous_commit = off for pgbench's sessions only (PGOPTIONS), so that
# commits stop waiting for the WAL flush and what is left is each side's
# CPU cost; once with the simple protocol, once with prepared statements.
NODURABLE_OPTIONS="-c synchronous_commit=off"
run_nodurable_group() {
	local got
	got=$(cqrs_as_owner env "PGOPTIONS=$NODURABLE_OPTIONS" "$CQRS_BINDIR/psql" -X -tAc 'SHOW synchronous_commit')
	if [ "$got" != off ]; then
		echo "bench: nodurable: PGOPTIONS did not turn synchronous_commit off (got \"$got\")" >&2
		exit 1
	fi
	run_group nodurable_simple "$CLIENTS" append raw
	run_group nodurable_prepared "$CLIENTS" append raw
}

start=$(date +%s)
want single && run_group single 1 append raw plpgsql
want multi && run_group multi "$CLIENTS" append raw plpgsql
want batch && run_group batch 1 append_events raw_batch
want race && run_group race "$CLIENTS" race_append race_plpgsql
want nodurable && run_nodurable_group
if [ -z "$BASELINE_ONLY" ]; then
	want capture && run_group capture 1 captured uncaptured
	want capture && run_group capture_multi "$CLIENTS" captured uncaptured
fi
if [ -z "$BASELINE_ONLY" ]; then
	want sync && run_group sync "$CLIENTS" sync_projection sync_trigger
	want deferred && run_deferred_group
	want lag && run_lag
	if want replay || want reconcile || want verify; then
		run_replay_groups
	fi
	want outbox && run_outbox_group
	want relay && run_relay_group
	want online_sync && run_online_sync_group
fi
want import && run_import_group
[ -z "$BASELINE_ONLY" ] && want lifecycle && run_lifecycle_group
if want append_filter_index; then
	run_group append_filter_index "$CLIENTS" append append_nofilter raw raw_nofilter
	# the same with synchronous_commit = off for pgbench's sessions (as the
	# nodurable group): without the WAL flush, what is left is each side's
	# CPU and WAL volume, where two more index entries per row show
	run_group append_filter_index_nodurable "$CLIENTS" append append_nofilter raw raw_nofilter
	[ -z "$BASELINE_ONLY" ] && run_filter_wal
fi
[ -z "$BASELINE_ONLY" ] && want filtered && run_filtered_group
want retention && [ -z "$BASELINE_ONLY" ] && run_retention_group
want archive && [ -z "$BASELINE_ONLY" ] && run_archive_group
elapsed=$(($(date +%s) - start))

#
# The table.
#
fmt_num() { if [ -n "$1" ]; then printf '%.0f' "$1"; else printf 'n/a'; fi; }
verdict() { # ratio goal
	if [ "$1" = n/a ] || [ -z "$2" ]; then echo ""; return; fi
	awk -v r="$1" -v g="$2" 'BEGIN { print (r + 0 >= g + 0) ? "met" : "BELOW" }'
}
row() { # number title clients A-key B-key unit [goal]
	local a b r lo hi
	a=$(med "$4"); b=$(med "$5")
	read -r r lo hi <<<"$(paired "$4" "$5")"
	if [ "$6" = events/s ]; then
		[ -n "$a" ] && a=$(awk -v x="$a" -v k="$BATCH" 'BEGIN { print x * k }')
		[ -n "$b" ] && b=$(awk -v x="$b" -v k="$BATCH" 'BEGIN { print x * k }')
	fi
	printf '%-2s %-44s %7s %10s %10s %-8s %6s %-11s %-7s %s\n' "$1" "$2" "$3" \
		"$(fmt_num "$a")" "$(fmt_num "$b")" "$6" "$r" "$lo..$hi" "${7:+>= $7}" "$(verdict "$r" "${7:-}")"
}

echo
echo "pg_cqrs bench: $ROUNDS alternated rounds of ${RUN_SECONDS}s per side; pgbench -n -M prepared;"
echo "$DURABILITY; $NCPU CPUs; $elapsed s of runs.  A, B: median throughput over the rounds."
want nodurable && echo "11: synchronous_commit = off for its runs only (not durable: the CPU cost), -M simple and -M prepared."
echo "ratio: median over the rounds of A/B within a round (range: lowest..highest round)."
echo
printf '%-2s %-44s %7s %10s %10s %-8s %6s %-11s %-7s %s\n' \
	'#' 'workload (A vs B)' clients 'A' 'B' unit ratio range goal ''
printf '%s\n' "$(printf '%.0s-' {1..120})"
if want single; then
	row 1 'cqrs.append vs raw INSERT' 1 single/append single/raw tps 0.90
	row 2 'cqrs.append vs PL/pgSQL event store' 1 single/append single/plpgsql tps
	row 2 '  (reference: PL/pgSQL store vs raw INSERT)' 1 single/plpgsql single/raw tps
fi
if want multi; then
	row 1 'cqrs.append vs raw INSERT' "$CLIENTS" multi/append multi/raw tps 0.90
	row 2 'cqrs.append vs PL/pgSQL event store' "$CLIENTS" multi/append multi/plpgsql tps
	row 2 '  (reference: PL/pgSQL store vs raw INSERT)' "$CLIENTS" multi/plpgsql multi/raw tps
fi
if want batch; then
	row 3 "cqrs.append_events($BATCH) vs INSERT..SELECT $BATCH" 1 \
		batch/append_events batch/raw_batch events/s 0.80
fi
if want race; then
	row 4 "race on $RACE_STREAMS streams: cqrs vs PL/pgSQL store" "$CLIENTS" \
		race/race_append race/race_plpgsql tps
fi
if want capture && [ -z "$BASELINE_ONLY" ]; then
	row 9 'INSERT into captured vs uncaptured table' 1 capture/captured capture/uncaptured tps
	row 9 'INSERT into captured vs uncaptured table' "$CLIENTS" \
		capture_multi/captured capture_multi/uncaptured tps
fi
if want sync && [ -z "$BASELINE_ONLY" ]; then
	row 5 'append + sync projection vs PL/pgSQL trigger' "$CLIENTS" \
		sync/sync_projection sync/sync_trigger tps 0.95
fi
if want deferred && [ -z "$BASELINE_ONLY" ]; then
	row 6 'deferred: worker vs SELECT handler(e) loop' 1 \
		deferred/worker deferred/plain_loop ev/s 0.80
fi

if want outbox && [ -z "$BASELINE_ONLY" ]; then
	row 8 "outbox: decode ${OUTBOX_EVENTS} ev: pg_cqrs vs wal2json" 1 \
		outbox/pg_cqrs outbox/wal2json ev/s 1.0
	row 8 "  (pg_cqrs vs test_decoding)" 1 outbox/pg_cqrs outbox/test_decoding ev/s
fi
if want relay && [ -z "$BASELINE_ONLY" ] && [ -n "${TPS[relay/relay]:-}" ]; then
	row 12 "relay: ${RELAY_EVENTS} ev into JetStream vs pg_recvlogical" 1 \
		relay/relay relay/pg_recvlogical ev/s 0.50
fi
if want nodurable; then
	row 11 'append vs raw INSERT, not durable, simple' "$CLIENTS" \
		nodurable_simple/append nodurable_simple/raw tps 0.90
	row 11 'append vs raw INSERT, not durable, prepared' "$CLIENTS" \
		nodurable_prepared/append nodurable_prepared/raw tps 0.90
fi
want import && print_import_row
[ -z "$BASELINE_ONLY" ] && want lifecycle && print_lifecycle_rows
want append_filter_index && print_append_filter_rows
[ -z "$BASELINE_ONLY" ] && want filtered && print_filtered_rows
want retention && [ -z "$BASELINE_ONLY" ] && print_retention_rows
want archive && [ -z "$BASELINE_ONLY" ] && print_archive_rows

if want race; then
	echo
	echo "4  optimistic-concurrency race: $CLIENTS clients, $RACE_STREAMS streams, read version then append" \
		"with expected_version, pgbench --max-tries=$MAX_TRIES (totals over all rounds)"
	printf '   %-14s %10s %12s %16s %14s %8s %14s\n' \
		side 'median tps' committed 'txns retried' 'total retries' failed 'conflict rate'
	for s in race_append race_plpgsql; do
		k="race/$s"
		[ -n "${TPS[$k]:-}" ] || continue
		# shellcheck disable=SC2086
		{
			c=$(sum ${PROCESSED[$k]}); rt=$(sum ${RETRIED[$k]})
			rs=$(sum ${RETRIES[$k]}); f=$(sum ${FAILED[$k]})
		}
		# A conflict is a try that hit 40001: every retry, and the last try
		# of each transaction that ran out of tries.
		rate=$(awk -v c="$c" -v rs="$rs" -v f="$f" \
			'BEGIN { t = c + rs + f; printf "%.1f%%", t ? 100 * (rs + f) / t : 0 }')
		printf '   %-14s %10s %12s %16s %14s %8s %14s\n' \
			"${s#race_}" "$(fmt_num "$(med "$k")")" "$c" "$rt" "$rs" "$f" "$rate"
	done
fi

if want lag && [ -z "$BASELINE_ONLY" ]; then
	echo
	echo "7  lag of a deferred projection while $CLIENTS clients append for ${LAG_SECONDS}s" \
		"(lag_seconds sampled every 100 ms: $LAG_SAMPLES samples; appends $(fmt_num "$LAG_TPS") tps)"
	echo "   p50 ${LAG_P50}s   p99 ${LAG_P99}s   max ${LAG_MAX}s"
fi

if [ -z "$BASELINE_ONLY" ] && { want replay || want reconcile || want verify; }; then
	print_replay_rows
fi
if [ -z "$BASELINE_ONLY" ] && want online_sync; then
	print_online_sync_rows
fi
if [ -z "$BASELINE_ONLY" ] && want archive; then
	print_archive_sizes
fi

echo
echo "bench: every pgbench output is in $LOG_DIR"
if [ -n "$REINSTALLED" ]; then
	echo "bench: WARNING: pg_cqrs was reinstalled by something else during the bench: rerun for clean numbers" >&2
fi
if [ "$FAILED_RUNS" -gt 0 ]; then
	echo "bench: $FAILED_RUNS run(s) FAILED (see above)" >&2
	exit 1
fi
