#!/usr/bin/env bash
# test/lib/deps.sh - install what pg_cqrs needs to build, test, demo and bench
#
# As root, missing Debian packages are installed with apt-get.  Otherwise the
# missing ones are listed with the command that installs them, and we stop.
# Then the extension is built (-Werror) and installed into the server found
# by pg_config.  Sourced by test/run.sh, examples/demo.sh and bench/run.sh;
# also "make deps".
#
# Which PostgreSQL: the major version comes from PG (as in "make check
# PG=17"), else PGMAJOR, else the version of $PG_CONFIG when that is set
# ("make check PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config"), else 15.
# A version this machine's Debian does not ship runs in a chroot (see
# cqrs_enter_version and test/lib/chroot.sh).
set -euo pipefail

# The major version of a pg_config ("PostgreSQL 17.6 (Debian ...)" -> 17).
cqrs_pg_config_major() {
	"$1" --version 2>/dev/null | sed -n -E 's/^PostgreSQL ([0-9]+)[^0-9]?.*/\1/p'
}

cqrs_resolve_major() {
	local asked=${PG:-${PGMAJOR:-}} from_config=""
	if [ -n "${PG_CONFIG:-}" ]; then
		from_config=$(cqrs_pg_config_major "$PG_CONFIG")
		if [ -z "$from_config" ]; then
			echo "pg_cqrs: PG_CONFIG=$PG_CONFIG does not run or does not say its version" >&2
			return 1
		fi
	fi
	if [ -n "$asked" ] && [ -n "$from_config" ] && [ "$asked" != "$from_config" ]; then
		echo "pg_cqrs: PostgreSQL $asked asked for, but PG_CONFIG=$PG_CONFIG is PostgreSQL $from_config" >&2
		return 1
	fi
	PGMAJOR=${asked:-${from_config:-15}}
	case $PGMAJOR in
		''|*[!0-9]*) echo "pg_cqrs: not a PostgreSQL major version: \"$PGMAJOR\"" >&2; return 1 ;;
	esac
	export PGMAJOR
}
cqrs_resolve_major

CQRS_PACKAGES=(
	build-essential
	"postgresql-$PGMAJOR"
	"postgresql-server-dev-$PGMAJOR"
	"postgresql-$PGMAJOR-pgtap"
	"postgresql-$PGMAJOR-wal2json"
	libtap-parser-sourcehandler-pgtap-perl
	libipc-run-perl
	# pg_cqrs_relay (src/relay) and its tests: libpq, the NATS C client,
	# and the server the tests start with -js
	libpq-dev
	libnats-dev
	nats-server
)

cqrs_missing_packages() {
	local p
	for p in "${CQRS_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"
	done
}

cqrs_install_deps() {
	local missing
	missing=$(cqrs_missing_packages | tr '\n' ' ')
	if [ -n "${missing// /}" ]; then
		if [ "$(id -u)" -eq 0 ]; then
			echo "pg_cqrs: installing $missing"
			export DEBIAN_FRONTEND=noninteractive
			apt-get update -qq >/dev/null
			# shellcheck disable=SC2086
			apt-get install -y -qq --no-install-recommends $missing >/dev/null
		else
			echo "pg_cqrs: these Debian packages are missing: $missing" >&2
			echo "pg_cqrs: run this command as root, or: sudo apt-get install $missing" >&2
			exit 1
		fi
	fi
}

# The pg_config of the PostgreSQL we test against: $PG_CONFIG when set (as
# in "make check PG_CONFIG=..."), else Debian's for $PGMAJOR (the wrapper in
# /usr/bin would pick the newest server-dev installed, whatever its version).
cqrs_pg_config() {
	if [ -n "${PG_CONFIG:-}" ]; then command -v "$PG_CONFIG"
	else echo "/usr/lib/postgresql/$PGMAJOR/bin/pg_config"; fi
}

# Whether PostgreSQL $PGMAJOR can run on this machine itself: it is
# installed, or this Debian has its packages.  Otherwise it needs a chroot.
cqrs_native_possible() {
	[ -n "${PG_CONFIG:-}" ] && return 0
	[ -x "/usr/lib/postgresql/$PGMAJOR/bin/pg_config" ] &&
		[ -x "/usr/lib/postgresql/$PGMAJOR/bin/postgres" ] && return 0
	local p candidate
	command -v apt-cache >/dev/null || return 1
	for p in "postgresql-$PGMAJOR" "postgresql-server-dev-$PGMAJOR"; do
		candidate=$(apt-cache policy "$p" 2>/dev/null | sed -n -E 's/^ +Candidate: +//p')
		case $candidate in ''|'(none)') return 1 ;; esac
	done
}

# cqrs_enter_version SCRIPT ARGS...: called first thing by the front-door
# scripts (SCRIPT is the caller's path from the top of the checkout).
# Returns when PostgreSQL $PGMAJOR runs here; otherwise runs SCRIPT in the
# version's chroot (or CQRS_CHROOT=1 forces that) and exits with its status.
cqrs_enter_version() {
	local script=$1 rc
	shift
	if [ -z "${CQRS_CHROOT:-}" ] && cqrs_native_possible; then
		return 0
	fi
	if [ -n "${PG_CONFIG:-}" ]; then
		echo "pg_cqrs: PG_CONFIG names a PostgreSQL on this machine; it cannot be used in a chroot" >&2
		exit 1
	fi
	# shellcheck source=test/lib/chroot.sh
	source "$(dirname "${BASH_SOURCE[0]}")/chroot.sh"
	echo "pg_cqrs: PostgreSQL $PGMAJOR in a Debian $(cqrs_chroot_suite "$PGMAJOR" || echo '?') chroot"
	set +e
	cqrs_chroot_exec "$PGMAJOR" "$script" "$@"
	rc=$?
	exit "$rc"
}

# Install scripts of pg_cqrs that this checkout does not ship, left in the
# server's extension directory by another checkout (another branch's newer
# version): they would change what the upgrade test sees (update paths,
# default version) and are removed, so that the server has exactly this
# checkout's extension.
cqrs_remove_stale_scripts() {
	local pgc=$1 top=$2 f
	for f in "$("$pgc" --sharedir)"/extension/pg_cqrs--*.sql; do
		[ -e "$f" ] || continue
		[ -e "$top/sql/$(basename "$f")" ] || { echo "pg_cqrs: removing $f (not in this checkout)"; rm -f "$f"; }
	done
}

# Build and install.  Each step stops at its first failure: make's errors
# are printed once (a failed "make all" is not followed by a "make install"
# that compiles, and fails, again).
cqrs_build_install() {
	local top pgc libdir
	top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
	pgc=$(cqrs_pg_config)
	make -C "$top" -s PG_CONFIG="$pgc" all >/dev/null || return 1
	libdir=$("$pgc" --pkglibdir) || return 1
	if [ -w "$libdir" ]; then
		make -C "$top" -s PG_CONFIG="$pgc" install >/dev/null || return 1
		cqrs_remove_stale_scripts "$pgc" "$top"
	else
		echo "pg_cqrs: cannot install into $libdir: run as root" >&2
		return 1
	fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	cqrs_enter_version test/lib/deps.sh "$@"
	cqrs_install_deps
	cqrs_build_install
	echo "pg_cqrs: dependencies present, extension built and installed"
fi
