#!/usr/bin/env bash
# test/lib/deps.sh - install what pg_cqrs needs to build, test, demo and bench
#
# As root, missing Debian packages are installed with apt-get.  Otherwise the
# missing ones are listed with the command that installs them, and we stop.
# Then the extension is built (-Werror) and installed into the server found
# by pg_config.  Sourced by test/run.sh, examples/demo.sh and bench/run.sh;
# also "make deps".
set -euo pipefail

PGMAJOR=${PGMAJOR:-15}
CQRS_PACKAGES=(
	build-essential
	"postgresql-$PGMAJOR"
	"postgresql-server-dev-$PGMAJOR"
	"postgresql-$PGMAJOR-pgtap"
	"postgresql-$PGMAJOR-wal2json"
	libtap-parser-sourcehandler-pgtap-perl
	libipc-run-perl
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
# /usr/bin would pick the newest server-dev installed).
cqrs_pg_config() {
	local c="/usr/lib/postgresql/$PGMAJOR/bin/pg_config"
	if [ -n "${PG_CONFIG:-}" ] && [ "$PG_CONFIG" != pg_config ]; then echo "$PG_CONFIG"
	elif [ -x "$c" ]; then echo "$c"; else command -v pg_config; fi
}

cqrs_build_install() {
	local top pgc
	top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
	pgc=$(cqrs_pg_config)
	make -C "$top" -s PG_CONFIG="$pgc" all >/dev/null
	if [ -w "$("$pgc" --pkglibdir)" ]; then
		make -C "$top" -s PG_CONFIG="$pgc" install >/dev/null
	else
		echo "pg_cqrs: cannot install into $("$pgc" --pkglibdir): run as root" >&2
		exit 1
	fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	cqrs_install_deps
	cqrs_build_install
	echo "pg_cqrs: dependencies present, extension built and installed"
fi
