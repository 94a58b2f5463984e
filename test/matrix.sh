#!/usr/bin/env bash
# test/matrix.sh - the runner behind "make check-all": every suite on every
# supported PostgreSQL major version
#
# Runs test/run.sh ("make check") once per version, one after the other:
# 15 natively on Debian 12, 17 and 18 in their cached chroots
# (test/lib/chroot.sh; made on the first run, about a minute each).  Each
# version's output is passed through as it comes, under a "=== PostgreSQL
# N" heading.  At the end: one line per version (its count, its time and,
# when one was made, the chroot's), then ONE combined line, always the last:
#
#   N passed, M failed
#
# summed over the versions.  A version whose run did not end with its own
# count (a chroot that could not be made, a crash) counts as one failure.
# The exit status is 0 only when M is 0 and every run exited 0.
#
# Environment:
#   CQRS_VERSIONS      the versions, in order (default "15 17 18")
#   CQRS_NATIVE_LOCK   a file to hold an flock on while a version runs
#                      natively (several checkouts sharing one native
#                      install); chroot runs have their own install
#   and everything test/run.sh reads (CQRS_SUITES, CQRS_KEEP ...).

set -uo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$TOP" || exit 1

VERSIONS=${CQRS_VERSIONS:-15 17 18}
# A version chosen for "make check" must not leak into the matrix.
unset PG PGMAJOR PG_CONFIG

TOTAL_PASSED=0
TOTAL_FAILED=0
STATUS=0
LINES=()
OUT=$(mktemp /tmp/pg_cqrs_matrix.XXXXXX)
trap 'rm -f "$OUT"' EXIT

# Whether version $1 would run natively (test/lib/deps.sh decides).
runs_natively() {
	(
		PGMAJOR=$1
		# shellcheck source=test/lib/deps.sh
		source test/lib/deps.sh
		set +e
		[ -z "${CQRS_CHROOT:-}" ] && cqrs_native_possible
	)
}

ALL_START=$(date +%s)
for v in $VERSIONS; do
	echo
	echo "=== PostgreSQL $v"
	start=$(date +%s)
	if runs_natively "$v" && [ -n "${CQRS_NATIVE_LOCK:-}" ]; then
		PGMAJOR=$v flock "$CQRS_NATIVE_LOCK" bash test/run.sh 2>&1 | tee "$OUT"
	else
		PGMAJOR=$v bash test/run.sh 2>&1 | tee "$OUT"
	fi
	rc=${PIPESTATUS[0]}
	secs=$(($(date +%s) - start))
	made=$(sed -n -E 's/^pg_cqrs: PostgreSQL [0-9]+ chroot created in ([0-9]+) s$/\1/p' "$OUT" | tail -n 1)
	last=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$OUT" | tail -n 1)
	if [ -n "$last" ]; then
		p=${last%% passed*}
		f=${last#*passed, }
		f=${f%% failed*}
	else
		p=0
		f=1
		last="did not finish (exit status $rc)"
	fi
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		f=1
		last="$last, but exited with status $rc"
	fi
	[ "$rc" -eq 0 ] || STATUS=1
	TOTAL_PASSED=$((TOTAL_PASSED + p))
	TOTAL_FAILED=$((TOTAL_FAILED + f))
	LINES+=("$(printf 'PostgreSQL %-3s %-40s %4d s%s' "$v" "$last" "$secs" \
		"${made:+ (of which $made s making its chroot)}")")
done

echo
echo "=== all versions ($(($(date +%s) - ALL_START)) s)"
printf '%s\n' "${LINES[@]}"
echo
echo "$TOTAL_PASSED passed, $TOTAL_FAILED failed"
[ "$TOTAL_FAILED" -eq 0 ] && [ "$STATUS" -eq 0 ]
