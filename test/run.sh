#!/usr/bin/env bash
# test/run.sh - the runner behind "make check"
#
# Installs what is missing (as root), builds and installs the extension,
# starts ONE throwaway cluster (test/lib/cluster.sh) and runs every suite
# against it:
#
#   layers         test/lib/layers.pl on src/, before any cluster: every call
#                  goes down the layer map in src/pg_cqrs.h.
#   pg_regress     sql/*.sql except the install/upgrade scripts pg_cqrs--*.sql,
#                  in alphabetical order, or in the order of
#                  test/regress_schedule when that file exists, all in one
#                  database "contrib_regression" that starts empty.  Each file
#                  creates what it needs (CREATE EXTENSION pg_cqrs ...) and
#                  should leave the database as it found it (DROP EXTENSION
#                  pg_cqrs CASCADE at its end), so files do not depend on
#                  each other's leftovers.
#   isolation      test/isolation/specs/*.spec against
#                  test/isolation/expected/*.out (pg_isolation_regress), in
#                  the database "isolation_regression".  Each spec creates the
#                  extension in its setup and drops it in its teardown.
#   pgTAP          test/pgtap/*.sql with pg_prove.  Convention: every file is
#                  self-contained and runs in a fresh database in which
#                  "CREATE EXTENSION pg_cqrs; CREATE EXTENSION pgtap;" has
#                  already been done, so a file must not create or drop
#                  either extension (IF NOT EXISTS is harmless).  A file
#                  wraps itself in BEGIN ... ROLLBACK or not, as it likes.
#   TAP            test/t/*.pl with prove, PostgreSQL::Test::Cluster starting
#                  clusters of their own (crash, restart, replicas).
#
# The suites run as the unprivileged cluster owner, on a copy of sql/,
# expected/ and test/ in a directory it owns: the repository may live where
# that user cannot read or write (under /root, say).
#
# Every test is reported as one "ok"/"FAILED" line; a failure is followed by
# its diff or its output.  A suite that cannot run or stops early counts as
# failed, and so does each of its tests that did not report.  The last line
# is always "N passed, M failed"; the exit status is 0 only when M is 0.
#
# Which PostgreSQL: PG=17 or PGMAJOR=17 ("make check PG=17"), or PG_CONFIG;
# 15 by default (test/lib/deps.sh).  A version Debian 12 does not ship runs
# in a cached chroot (test/lib/chroot.sh); "make check-all" runs them all
# (test/matrix.sh).
#
# Environment: CQRS_KEEP=1 keeps the work directory (and the cluster's data)
# for inspection; CQRS_SUITES="layers regress isolation pgtap tap" (the default)
# runs only the suites named; CQRS_TAP="013_standby_failover ..." only
# those TAP files; PG_TEST_TIMEOUT_DEFAULT (default 60 here)
# bounds each wait in the TAP tests.

set -uo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$TOP" || exit 1

CQRS_SUITES=${CQRS_SUITES:-layers regress isolation pgtap tap}
export PG_TEST_TIMEOUT_DEFAULT=${PG_TEST_TIMEOUT_DEFAULT:-60}
want() { case " $CQRS_SUITES " in *" $1 "*) return 0 ;; esac; echo "(suite $1 not selected by CQRS_SUITES)"; return 1; }

PASSED=0
FAILED=0
FAILED_NAMES=()

summary() {
	if [ "${#FAILED_NAMES[@]}" -gt 0 ]; then
		echo
		echo "failed:"
		printf '  %s\n' "${FAILED_NAMES[@]}"
	fi
	echo
	echo "$PASSED passed, $FAILED failed"
}

finish() {
	summary
	[ "$FAILED" -eq 0 ]
	exit $?
}

pass() { PASSED=$((PASSED + 1)); printf 'ok      %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); FAILED_NAMES+=("$1"); printf 'FAILED  %s%s\n' "$1" "${2:+ ($2)}"; }

# Print a file, at most $2 lines (default 3000), indented by nothing: diffs
# must stay copy-pasteable.
show_file() {
	local f=$1 max=${2:-3000} n
	[ -f "$f" ] || { echo "  (no file $f)"; return; }
	n=$(wc -l <"$f")
	head -n "$max" "$f"
	if [ "$n" -gt "$max" ]; then
		echo "... ($((n - max)) more lines in $f; run with CQRS_KEEP=1 to keep it)"
	fi
}

# deps.sh turns on "set -e"; the runner counts failures itself instead.
# shellcheck source=test/lib/deps.sh
source test/lib/deps.sh
set +e
# PostgreSQL 17 and 18 run in a chroot on Debian 12: this script then runs
# again there, and this process only passes its output and status on.
cqrs_enter_version test/run.sh "$@"

echo "== dependencies and build (PostgreSQL $PGMAJOR)"
if ! (cqrs_install_deps); then
	fail "dependencies" "could not install"
	finish
fi
if ! (cqrs_build_install); then
	fail "build" "make or make install failed, see above"
	finish
fi

# The layers of src/ (no cluster needed): calls go down the map in
# src/pg_cqrs.h, and no file is over the size limit without saying why.
echo "== layers"
if want layers; then
	if layers_out=$(perl test/lib/layers.pl src 2>&1); then
		pass "layers/src"
	else
		fail "layers/src"
		echo "$layers_out"
	fi
fi

PGC=$(cqrs_pg_config)
echo "== $("$PGC" --version), $(gcc --version 2>/dev/null | head -n 1)"
PGXS_DIR=$(dirname "$("$PGC" --pgxs)")
PG_REGRESS="$PGXS_DIR/../../src/test/regress/pg_regress"
PG_ISOLATION_REGRESS="$PGXS_DIR/../../src/test/isolation/pg_isolation_regress"
PG_PERL_LIB="$PGXS_DIR/../../src/test/perl"

# shellcheck source=test/lib/cluster.sh
source test/lib/cluster.sh
set +e

# One directory for everything: the cluster (cluster.sh puts its data in
# $CQRS_WORK and removes the directory on exit unless CQRS_KEEP is set) and
# the copy of the tests the owner works in.
CQRS_WORK=$(mktemp -d /tmp/pg_cqrs_check.XXXXXX)
export CQRS_WORK
chmod 755 "$CQRS_WORK"
trap 'cqrs_cluster_stop' EXIT
W="$CQRS_WORK/check"
mkdir -p "$W"
cp -R sql expected test "$W/"
chown -R "$CQRS_OWNER" "$W" 2>/dev/null
cd "$W" || exit 1

echo "== cluster"
if ! cqrs_cluster_start; then
	fail "cluster" "could not start"
	finish
fi
# cluster.sh installed its own EXIT trap; it does the same cleanup.

# Databases the suites use with --use-existing, set up the way pg_regress
# would set up a database it creates itself.
# WITH (FORCE): pg_cqrs workers may be connected to a database that has
# deferred projections, as autovacuum may be.
cqrs_create_db() {
	cqrs_psql -d postgres -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" -c "CREATE DATABASE \"$1\" TEMPLATE template0" &&
	cqrs_psql -d postgres -c "ALTER DATABASE \"$1\" SET lc_messages TO 'C'" \
		-c "ALTER DATABASE \"$1\" SET lc_monetary TO 'C'" \
		-c "ALTER DATABASE \"$1\" SET lc_numeric TO 'C'" \
		-c "ALTER DATABASE \"$1\" SET lc_time TO 'C'" \
		-c "ALTER DATABASE \"$1\" SET bytea_output TO 'hex'" \
		-c "ALTER DATABASE \"$1\" SET timezone_abbreviations TO 'Default'"
}

# Parse a pg_regress / pg_isolation_regress log: one "name status" line per
# test that reported.  PostgreSQL 15 prints "test name ... ok   12 ms" (and
# "     name ... FAILED" inside parallel groups); 16 and later print
# "ok 1 - name   12 ms" / "not ok 2 + name".
parse_regress_log() {
	sed -n -E \
		-e 's/^(test +| +)([^ ]+) +\.\.\. +(ok|FAILED|failed \(ignored\)).*$/\2 \3/p' \
		-e 's/^ok +[0-9]+ +[-+] +([^ ]+).*$/\1 ok/p' \
		-e 's/^not ok +[0-9]+ +[-+] +([^ ]+).*$/\1 FAILED/p' \
		"$1"
}

# run_regress_suite LABEL RUNNER OUTDIR EXPECTED_NAMES... -- ARGS...
# Runs RUNNER ARGS as the owner, then reports one line per expected test.
run_regress_suite() {
	local label=$1 runner=$2 outdir=$3; shift 3
	local names=() rc name status log
	while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do names+=("$1"); shift; done
	shift
	log="$outdir.log"
	mkdir -p "$outdir" && chown "$CQRS_OWNER" "$outdir" 2>/dev/null
	cqrs_as_owner timeout 600 "$runner" --use-existing --bindir="$CQRS_BINDIR" \
		--host="$PGHOST" --port="$PGPORT" --user="$CQRS_OWNER" \
		--outputdir="$outdir" "$@" >"$log" 2>&1
	rc=$?
	declare -A got=()
	while read -r name status; do
		[ -n "$name" ] && got[$name]=$status
	done < <(parse_regress_log "$log")
	local failed_here=0 missing=0
	for name in "${names[@]}"; do
		status=${got[$name]:-}
		case "$status" in
			ok) pass "$label/$name" ;;
			# "ignore:" in a schedule does not hide a failure here
			"failed (ignored)") fail "$label/$name" "failed, ignored by the schedule"; failed_here=1 ;;
			FAILED) fail "$label/$name"; failed_here=1 ;;
			*) fail "$label/$name" "did not run"; missing=1 ;;
		esac
	done
	if [ "$failed_here" -eq 1 ] && [ -s "$outdir/regression.diffs" ]; then
		echo "---- $label: regression.diffs"
		show_file "$outdir/regression.diffs"
		echo "---- end of $label diffs"
	fi
	if [ "$rc" -ne 0 ] && [ "$failed_here" -eq 0 ]; then
		# The runner failed without any test failing: it could not run,
		# crashed or timed out.  That is a failure of the suite itself.
		[ "$missing" -eq 1 ] || fail "$label" "runner exited with status $rc"
	fi
	if [ "$rc" -ne 0 ] && { [ "$failed_here" -eq 0 ] || [ "$missing" -eq 1 ]; }; then
		echo "---- $label: output of $(basename "$runner") (exit status $rc)"
		show_file "$log" 200
		echo "---- end of $label output"
	fi
}

# ---------------------------------------------------------------- pg_regress
regress_tests=()
regress_args=()
if [ -f test/regress_schedule ]; then
	# "test: a b c" lines; every name listed must report.
	mapfile -t regress_tests < <(sed -n -E 's/^test: *//p' test/regress_schedule | tr -s ' \t' '\n' | sed '/^$/d')
	regress_args=(--schedule="$W/test/regress_schedule")
else
	for f in sql/*.sql; do
		[ -e "$f" ] || continue
		name=$(basename "$f" .sql)
		case "$name" in pg_cqrs--*) continue ;; esac
		regress_tests+=("$name")
	done
	regress_args=("${regress_tests[@]}")
fi
echo "== pg_regress (${#regress_tests[@]} tests)"
if [ "${#regress_tests[@]}" -gt 0 ] && want regress; then
	if cqrs_create_db contrib_regression >"$W/createdb.log" 2>&1; then
		run_regress_suite regress "$PG_REGRESS" "$W/regress_out" "${regress_tests[@]}" -- \
			--inputdir="$W" --dbname=contrib_regression "${regress_args[@]}"
	else
		fail "regress" "could not create database contrib_regression"
		show_file "$W/createdb.log"
	fi
fi

# ----------------------------------------------------------------- isolation
iso_tests=()
for f in test/isolation/specs/*.spec; do
	[ -e "$f" ] || continue
	iso_tests+=("$(basename "$f" .spec)")
done
echo "== isolation (${#iso_tests[@]} specs)"
if [ "${#iso_tests[@]}" -gt 0 ] && want isolation; then
	if cqrs_create_db isolation_regression >"$W/createdb.log" 2>&1; then
		# A step that blocks where the tester cannot see the wait would
		# otherwise hang for five minutes before being cancelled.
		export PGISOLATIONTIMEOUT=${PGISOLATIONTIMEOUT:-60}
		run_regress_suite isolation "$PG_ISOLATION_REGRESS" "$W/isolation_out" "${iso_tests[@]}" -- \
			--inputdir="$W/test/isolation" --dbname=isolation_regression "${iso_tests[@]}"
	else
		fail "isolation" "could not create database isolation_regression"
		show_file "$W/createdb.log"
	fi
fi

# --------------------------------------------------------------------- pgTAP
# Each file gets a fresh database with pg_cqrs and pgtap created (see the
# convention at the top).
pgtap_files=()
for f in test/pgtap/*.sql; do
	[ -e "$f" ] && pgtap_files+=("$f")
done
echo "== pgTAP (${#pgtap_files[@]} files)"
want pgtap || pgtap_files=()
for f in "${pgtap_files[@]}"; do
	name=pgtap/$(basename "$f" .sql)
	out="$W/pgtap_$(basename "$f" .sql).out"
	if ! cqrs_create_db pgtap_test >/dev/null 2>"$out" ||
	   ! cqrs_psql -d pgtap_test -c 'CREATE EXTENSION pg_cqrs' -c 'CREATE EXTENSION pgtap' >>"$out" 2>&1; then
		fail "$name" "could not prepare its database"
		show_file "$out" 200
		continue
	fi
	if cqrs_as_owner timeout 300 pg_prove --verbose --failures -d pgtap_test \
		--host "$PGHOST" --port "$PGPORT" --username "$CQRS_OWNER" "$W/$f" >>"$out" 2>&1; then
		pass "$name"
	else
		fail "$name"
		echo "---- $name: pg_prove output"
		show_file "$out"
		echo "---- end of $name output"
	fi
done
cqrs_psql -d postgres -c 'DROP DATABASE IF EXISTS pgtap_test WITH (FORCE)' >/dev/null 2>&1

# ---------------------------------------------------------------------- TAP
tap_files=()
for f in test/t/*.pl; do
	[ -e "$f" ] || continue
	case " ${CQRS_TAP:-$(basename "$f" .pl)} " in *" $(basename "$f" .pl) "*) tap_files+=("$f") ;; esac
done
echo "== TAP (${#tap_files[@]} files)"
want tap || tap_files=()
for f in "${tap_files[@]}"; do
	base=$(basename "$f" .pl)
	name=tap/$base
	out="$W/tap_$base.out"
	# TESTDIR: PostgreSQL::Test::Utils keeps its clusters and logs in
	# $TESTDIR/tmp_check.  The PG* variables of our cluster are not passed:
	# the test starts its own.
	(cd "$W/test" && cqrs_as_owner env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE \
		PATH="$CQRS_BINDIR:$PATH" PG_REGRESS="$PG_REGRESS" TESTDIR="$W/test" \
		PERL5LIB="$PG_PERL_LIB${PERL5LIB:+:$PERL5LIB}" \
		timeout 600 prove --verbose "t/$base.pl") >"$out" 2>&1
	rc=$?
	if [ "$rc" -eq 0 ]; then
		pass "$name"
	else
		fail "$name" "prove exited with status $rc"
		echo "---- $name: prove output"
		show_file "$out"
		# tmp_check/log up to PostgreSQL 15, log/ from 16 on
		log="$W/test/tmp_check/log/regress_log_$base"
		[ -f "$log" ] || log="$W/test/log/regress_log_$base"
		if [ -f "$log" ]; then
			echo "---- $name: last lines of $log"
			tail -n 60 "$log"
		fi
		echo "---- end of $name output"
	fi
done

cd "$TOP" || true
finish
