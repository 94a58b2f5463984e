#!/usr/bin/env bash
# bench/profile.sh - where an append's CPU goes: perf over a pgbench run
#
# Builds and installs the extension (as bench/run.sh does), starts a
# throwaway cluster with the bench's settings, runs pgbench with
# PROFILE_CLIENTS clients and synchronous_commit = off for its sessions (so
# the CPU, not the WAL flush, is what is left), and during it records
# "perf record -a -g" for PROFILE_SECONDS.  Then it prints, from the
# recorded call chains of the cluster's processes (its postmaster, backends
# and background processes: perf -a sees the whole machine, and samples of
# other clusters' postgres are counted apart and left out):
#   1. watched symbols (locks, snapshots, SPI, triggers, tuplestore, GUC,
#      function defaults, latches, commit, protocol): inclusive share of
#      all the cluster's samples, and of those with pg_cqrs.so on the stack;
#   2. the top inclusive symbols at or below the outermost pg_cqrs.so frame
#      of each sample (what pg_cqrs's functions cost, callees included);
#   3. the top self (leaf) symbols of those samples;
#   4. those samples split by their innermost pg_cqrs.so function and the
#      function it called (each sample once: the split adds up to the
#      pg_cqrs.so share);
#   5. the top inclusive symbols of all the cluster's samples.
# Percentages are of all the cluster's samples.  Static functions of the
# stripped postgres binary have no symbol: they show as
# "[static <- caller]", after the nearest named caller.  The perf.data,
# the pgbench log and the report stay in PROFILE_DIR.
#
#   bash bench/profile.sh [append|raw|plpgsql|FILE.sql]   (default append)
#
# Needs root (perf -a) and a PostgreSQL that runs on this machine (no
# chroot).  When others share the machine's PostgreSQL installation, wrap
# it: flock /tmp/pg_cqrs_native.lock bash bench/profile.sh
#
# Environment:
#   PROFILE_SECONDS   length of the perf recording         (default 5)
#   PROFILE_CLIENTS   pgbench clients        (default BENCH_CLIENTS or 8)
#   PROFILE_PROTOCOL  pgbench -M: simple, extended, prepared (default prepared)
#   PROFILE_SYNCHRONOUS_COMMIT  for pgbench's sessions  (default off)
#   PROFILE_TOP       rows of the top lists               (default 30)
#   PROFILE_DIR       where the output goes (default a new /tmp/pg_cqrs_profile.XXXXXX)
#   PROFILE_NO_INSTALL=1  use what is installed, do not build and install
#   PROFILE_SETUP     an SQL file run once before pgbench (e.g.
#                     bench/capture_setup.sql for bench/capture_insert.sql)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$BENCH_DIR/.." && pwd)

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

WORKLOAD=append
for arg in "$@"; do
	case $arg in
		-h|--help) usage; exit 0 ;;
		-*) echo "profile: unknown option \"$arg\" (try --help)" >&2; exit 2 ;;
		*) WORKLOAD=$arg ;;
	esac
done
case $WORKLOAD in
	append) SCRIPT=$BENCH_DIR/append.sql ;;
	raw) SCRIPT=$BENCH_DIR/raw_insert.sql ;;
	plpgsql) SCRIPT=$BENCH_DIR/plpgsql_append.sql ;;
	*) SCRIPT=$(cd "$(dirname "$WORKLOAD")" && pwd)/$(basename "$WORKLOAD") ;;
esac
[ -r "$SCRIPT" ] || { echo "profile: cannot read $SCRIPT" >&2; exit 2; }

SECONDS_=${PROFILE_SECONDS:-5}
CLIENTS=${PROFILE_CLIENTS:-${BENCH_CLIENTS:-8}}
PROTOCOL=${PROFILE_PROTOCOL:-prepared}
SYNC=${PROFILE_SYNCHRONOUS_COMMIT:-off}
NTOP=${PROFILE_TOP:-30}
for v in SECONDS_ CLIENTS NTOP; do
	case ${!v} in
		''|*[!0-9]*|0) echo "profile: $v must be a positive integer, not \"${!v}\"" >&2; exit 2 ;;
	esac
done
case $PROTOCOL in simple|extended|prepared) ;;
	*) echo "profile: PROFILE_PROTOCOL must be simple, extended or prepared" >&2; exit 2 ;;
esac

[ "$(id -u)" -eq 0 ] || { echo "profile: needs root (perf record -a)" >&2; exit 1; }
command -v perf >/dev/null || { echo "profile: perf is not installed" >&2; exit 1; }

# shellcheck source-path=SCRIPTDIR/.. source=test/lib/deps.sh
source "$TOP/test/lib/deps.sh"
# shellcheck disable=SC2031  # (PGMAJOR is set by deps.sh, not in a subshell)
cqrs_native_possible || { echo "profile: PostgreSQL $PGMAJOR does not run natively here" >&2; exit 1; }
cqrs_install_deps
if [ -z "${PROFILE_NO_INSTALL:-}" ]; then
	echo "profile: building and installing pg_cqrs"
	cqrs_build_install
fi

# shellcheck source-path=SCRIPTDIR/.. source=test/lib/cluster.sh
source "$TOP/test/lib/cluster.sh"
cqrs_cluster_start "shared_buffers = ${BENCH_SHARED_BUFFERS:-1GB}" "max_wal_size = 8GB" \
	"min_wal_size = 1GB" "checkpoint_timeout = 1h" "autovacuum = off"

OUT=${PROFILE_DIR:-$(mktemp -d /tmp/pg_cqrs_profile.XXXXXX)}
mkdir -p "$OUT"
cp "$SCRIPT" "$CQRS_WORK/profile.sql"
chmod a+r "$CQRS_WORK/profile.sql"
cqrs_psql <"$BENCH_DIR/baseline.sql" >/dev/null
cqrs_psql -c 'CREATE EXTENSION pg_cqrs' >/dev/null
[ -n "${PROFILE_SETUP:-}" ] && cqrs_psql <"$PROFILE_SETUP" >/dev/null
cqrs_psql -c CHECKPOINT >/dev/null

NCPU=$(nproc 2>/dev/null || echo 2)
THREADS=$((CLIENTS < NCPU ? CLIENTS : NCPU))
WARMUP=3
REVISION=$(git -C "$TOP" describe --always --dirty 2>/dev/null || echo "not a git checkout")
echo "profile: pg_cqrs $REVISION; $(basename "$SCRIPT"), $CLIENTS clients, -M $PROTOCOL," \
	"synchronous_commit = $SYNC; perf -a -g for ${SECONDS_}s after ${WARMUP}s; output in $OUT"

cqrs_as_owner env "PGOPTIONS=-c synchronous_commit=$SYNC" "$CQRS_BINDIR/pgbench" -n -M "$PROTOCOL" \
	-c "$CLIENTS" -j "$THREADS" -T $((WARMUP + SECONDS_ + 2)) -f "$CQRS_WORK/profile.sql" \
	>"$OUT/pgbench.log" 2>&1 &
PGBENCH_PID=$!
sleep "$WARMUP"
# This cluster's processes (backends and background processes): perf -a
# sees the whole machine, and other clusters' postgres may be running.
PIDS=$( {
	head -n 1 "$CQRS_WORK/data/postmaster.pid"
	cqrs_psql -tAc 'SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()'
} | tr '\n' ' ')
perf record -a -g -o "$OUT/perf.data" -- sleep "$SECONDS_" 2>"$OUT/perf-record.log"
wait "$PGBENCH_PID" || { echo "profile: pgbench failed:" >&2; cat "$OUT/pgbench.log" >&2; exit 1; }
echo "profile: pgbench: $(sed -n 's/^tps = \([0-9.]*\).*/\1 tps (the whole run, recording included)/p' "$OUT/pgbench.log")"

# The call chains, leaf first: "comm pid/tid" then one "addr sym+off (dso)"
# line per frame, then a blank line.
WATCH='^(LockAcquire|LockAcquireExtended|LockRelease|LockRelationOid|GetLatestSnapshot|GetSnapshotData|GetTransactionSnapshot|SPI_connect|SPI_execute_plan|SPI_finish|SPI_prepare|_SPI_execute_plan|AfterTriggerEndQuery|AfterTriggerFireDeferred|ExecARInsertTriggers|ExecBSInsertTriggers|ExecASInsertTriggers|tuplestore_begin_heap|tuplestore_puttuple|tuplestore_end|fetch_function_defaults|stringToNode|expand_function_arguments|SetLatch|set_config_option|set_config_option_ext|AtEOXact_GUC|NewGUCNestLevel|CommitTransaction|CommitTransactionCommand|XLogInsert|XLogFlush|nextval_internal|standard_ExecutorStart|standard_ExecutorEnd|ExecInitNode|heap_insert|ExecInsertIndexTuples|btinsert|index_getnext_slot|exec_simple_query|exec_parse_message|exec_bind_message|exec_execute_message|pg_plan_queries|pg_parse_query|pg_analyze_and_rewrite_fixedparams|GetCachedPlan|RevalidateCachedQuery)$'
perf script -i "$OUT/perf.data" -F comm,pid,tid,ip,sym,dso 2>/dev/null |
	awk -v N="$NTOP" -v WATCH="$WATCH" -v PIDS="$PIDS" '
	BEGIN { n = split(PIDS, p, " "); for (i = 1; i <= n; i++) ours[p[i]] = 1 }
	function flush(   i, j, last, s, seen, seen2) {
		if (!insample) return
		insample = 0
		total++
		if (comm ~ /^pgbench/) bench++
		if (!(pid in ours)) { if (comm == "postgres") others++; return }
		pg++
		# name static functions after their nearest named caller
		for (i = 0; i < nf; i++) {
			if (sym[i] != "?") continue
			for (j = i + 1; j < nf && sym[j] == "?"; j++) ;
			sym[i] = "[static <- " (j < nf ? sym[j] : "?") "]"
		}
		last = -1
		for (i = 0; i < nf; i++) if (dso[i] ~ /pg_cqrs\.so$/) last = i
		for (i = 0; i < nf; i++) {
			s = sym[i]
			if (s in seen) continue
			seen[s] = 1
			all[s]++
			if (last >= 0) incq_any[s]++
			if (i <= last) inc[s]++
		}
		if (last < 0) return
		cq++
		self[sym[0]]++
		# the innermost pg_cqrs.so frame and what it called
		for (i = 0; dso[i] !~ /pg_cqrs\.so$/; i++) ;
		split_[sym[i] (i > 0 ? " > " sym[i - 1] : " (self)")]++
	}
	/^[^ \t]/ { flush(); comm = $1; pid = $2; sub(/\/.*/, "", pid); nf = 0; insample = 1; next }
	/^[ \t]*$/ { flush(); next }
	{
		line = $0
		sub(/^[ \t]*[0-9a-f]+ /, "", line)
		d = line; sub(/.*\(/, "", d); sub(/\)[ \t]*$/, "", d)
		s = line; sub(/ \([^()]*\)[ \t]*$/, "", s); sub(/\+0x[0-9a-f]+$/, "", s)
		if (d ~ /kernel/) s = s " [k]"
		else if (s == "[unknown]") s = "?"
		sym[nf] = s; dso[nf] = d; nf++
	}
	function top(arr, denom, title,   s, cmd) {
		print ""
		print title
		cmd = "sort -t\"\t\" -k1,1gr | head -n " N " | cut -f2-"
		for (s in arr) printf "%.4f\t%6.2f%%  %s\n", arr[s] / denom, 100 * arr[s] / denom, s | cmd
		close(cmd)
	}
	END {
		flush()
		if (!pg) { print "profile: no samples of the cluster processes"; exit 1 }
		printf "\nsamples: %d in all; %d of the cluster processes (%.1f%%), %d of them with pg_cqrs.so on the stack (%.1f%%);\n",
			total, pg, 100 * pg / total, cq, 100 * cq / pg
		printf "%d of pgbench (%.1f%%); %d of other postgres processes on the machine (%.1f%%, not counted)\n",
			bench, 100 * bench / total, others, 100 * others / total
		print ""
		print "1. watched symbols, inclusive: % of cluster samples | % of cluster samples with pg_cqrs.so on the stack"
		cmd = "sort -t\"\t\" -k1,1gr | cut -f2-"
		for (s in all) if (s ~ WATCH)
			printf "%.4f\t%6.2f%% | %6.2f%%  %s\n", all[s] / pg, 100 * all[s] / pg, 100 * incq_any[s] / pg, s | cmd
		close(cmd)
		if (cq) {
			top(inc, pg, "2. top inclusive at or below the outermost pg_cqrs.so frame (% of cluster samples)")
			top(self, pg, "3. top self (leaf) of the samples with pg_cqrs.so on the stack (% of cluster samples)")
		}
		if (cq)
			top(split_, pg, "4. the pg_cqrs.so samples split by their innermost pg_cqrs.so function > the function it called\n   (each sample counted once: these add up to the pg_cqrs.so share; % of cluster samples)")
		top(all, pg, "5. top inclusive, all cluster samples (% of cluster samples)")
	}' | tee "$OUT/report.txt"
echo
echo "profile: perf.data, pgbench.log and report.txt are in $OUT"
