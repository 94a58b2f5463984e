#!/usr/bin/env bash
# test/lib/chroot.sh - run a front-door script against a PostgreSQL major
# version that this machine's Debian does not ship, in a cached chroot
#
# Debian 12 ships PostgreSQL 15 only.  The server binaries of 17 (trixie)
# and 18 (sid) need a newer glibc, so they cannot be installed beside it;
# they run in a chroot of the Debian release that ships them, made with
# mmdebstrap from the same Debian mirror the host uses (with the release's
# -updates and -security suites, where PostgreSQL's point releases are).
#
#   cqrs_chroot_suite MAJOR          the Debian suite shipping MAJOR
#   cqrs_chroot_ensure MAJOR         create (or re-create) the cached chroot
#   cqrs_chroot_exec MAJOR SCRIPT [ARGS...]
#                                    copy this checkout into the chroot and
#                                    run "bash SCRIPT ARGS" there, as root
#
# The chroot lives in $CQRS_CHROOT_CACHE/chroot-MAJOR (default
# /var/cache/pg_cqrs).  It is kept between runs and made again when it is
# absent or when what it should contain changed (suite, mirror, package
# list: their hash is kept in the chroot's /.pg_cqrs-stamp).  A chroot is
# made in a temporary directory and renamed into place only once complete,
# so an interrupted creation never leaves a half-made chroot to be reused.
#
# While a script runs, /proc and a tmpfs on /dev/shm (shared memory of the
# server) are mounted in the chroot; they are unmounted on exit, whatever
# happens.  One run at a time per chroot (an flock, also held while the
# chroot is made): two runs would share the mounts and the copy of the
# checkout.  PostgreSQL runs there as the
# chroot's "postgres" user, as natively.
#
# Only root can do this (chroot(2), mounts, mmdebstrap in root mode).

CQRS_CHROOT_CACHE=${CQRS_CHROOT_CACHE:-/var/cache/pg_cqrs}

cqrs_chroot_suite() {
	case $1 in
		15) echo bookworm ;;
		17) echo trixie ;;
		18) echo sid ;;
		*) return 1 ;;
	esac
}

# The mirror the host's apt uses for Debian (the first deb.debian.org-like
# URI of a "debian" archive in its sources), else Debian's CDN.
cqrs_chroot_mirror() {
	local m
	m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
		sed -n -E -e 's/^URIs: *([^ ]*\/debian)\/?$/\1/p' \
			-e 's/^deb +(\[[^]]*\] +)?([^ ]*\/debian)\/? .*/\2/p' | head -n 1)
	echo "${m:-http://deb.debian.org/debian}"
}

# The security archive the host uses, else Debian's.
cqrs_chroot_security_mirror() {
	local m
	m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
		sed -n -E -e 's/^URIs: *([^ ]*\/debian-security)\/?$/\1/p' \
			-e 's/^deb +(\[[^]]*\] +)?([^ ]*\/debian-security)\/? .*/\2/p' | head -n 1)
	echo "${m:-http://deb.debian.org/debian-security}"
}

# The chroot's apt sources, one "deb" line each.  A released suite also
# gets its -updates and -security suites: Debian ships PostgreSQL's point
# releases there (bookworm's own Packages still has 15.18, which lacks
# settings the suites rely on, such as output_plugin_libraries).
cqrs_chroot_sources() {
	local suite=$1 mirror
	mirror=$(cqrs_chroot_mirror)
	echo "deb $mirror $suite main"
	case $suite in
		sid|unstable|experimental) ;;
		*)
			echo "deb $mirror $suite-updates main"
			echo "deb $(cqrs_chroot_security_mirror) $suite-security main"
			;;
	esac
}

# What the chroot must contain: what test/lib/deps.sh installs natively for
# this major (the same list, so the suites find the same tools), and the
# certificates apt needs for an https mirror.
cqrs_chroot_packages() {
	(
		unset PG PG_CONFIG
		PGMAJOR=$1
		# shellcheck source=test/lib/deps.sh
		source "$(dirname "${BASH_SOURCE[0]}")/deps.sh"
		printf '%s\n' "${CQRS_PACKAGES[@]}" ca-certificates
	)
}

cqrs_chroot_dir() { echo "$CQRS_CHROOT_CACHE/chroot-$1"; }

cqrs_chroot_stamp() {
	{
		cqrs_chroot_suite "$1"
		cqrs_chroot_sources "$(cqrs_chroot_suite "$1")"
		cqrs_chroot_packages "$1"
		echo "variant=apt check-valid-until=false"
	} | md5sum | cut -d' ' -f1
}

# Create the chroot for MAJOR unless the cached one is current.  Prints
# how long creation took when it did create one.
cqrs_chroot_ensure() {
	local major=$1 dir suite stamp tmp start
	dir=$(cqrs_chroot_dir "$major")
	suite=$(cqrs_chroot_suite "$major") || {
		echo "pg_cqrs: no Debian suite known to ship PostgreSQL $major" >&2
		return 1
	}
	stamp=$(cqrs_chroot_stamp "$major")
	if [ -f "$dir/.pg_cqrs-stamp" ] && [ "$(cat "$dir/.pg_cqrs-stamp")" = "$stamp" ]; then
		return 0
	fi
	if ! command -v mmdebstrap >/dev/null; then
		echo "pg_cqrs: installing mmdebstrap"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null ||
			{ apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null; } ||
			{ echo "pg_cqrs: could not install mmdebstrap" >&2; return 1; }
	fi
	mkdir -p "$CQRS_CHROOT_CACHE"
	tmp=$(mktemp -d "$CQRS_CHROOT_CACHE/.chroot-$major.XXXXXX")
	start=$(date +%s)
	echo "pg_cqrs: creating the PostgreSQL $major chroot (Debian $suite) in $dir"
	# Check-Valid-Until: sid's Release file may be past its Valid-Until
	# date on a mirror that lags; the signature is still checked.
	local sources=()
	mapfile -t sources < <(cqrs_chroot_sources "$suite")
	if ! mmdebstrap --variant=apt --mode=root --quiet \
		--aptopt='Acquire::Check-Valid-Until "false"' \
		--aptopt='APT::Install-Recommends "false"' \
		--dpkgopt='path-exclude=/usr/share/doc/*' \
		--dpkgopt='path-exclude=/usr/share/man/*' \
		--dpkgopt='path-exclude=/usr/share/locale/*' \
		--include="$(cqrs_chroot_packages "$major" | paste -sd,)" \
		"$suite" "$tmp" "${sources[@]}" >"$tmp.log" 2>&1; then
		tail -n 40 "$tmp.log" >&2
		echo "pg_cqrs: mmdebstrap failed (log above, full log in $tmp.log)" >&2
		rm -rf "$tmp"
		return 1
	fi
	rm -f "$tmp.log"
	echo "$stamp" >"$tmp/.pg_cqrs-stamp"
	[ -d "$dir" ] && cqrs_chroot_umount "$dir"
	rm -rf "$dir"
	mv "$tmp" "$dir"
	echo "pg_cqrs: PostgreSQL $major chroot created in $(($(date +%s) - start)) s"
}

# Unmount what cqrs_chroot_exec mounted (deepest first), also what a run
# killed before its trap could run left behind; harmless when nothing is
# mounted.
cqrs_chroot_umount() {
	local dir=$1 m
	for m in dev/shm proc; do
		for _ in 1 2 3 4; do
			mountpoint -q "$dir/$m" 2>/dev/null || break
			umount "$dir/$m" 2>/dev/null || umount -l "$dir/$m"
		done
	done
}

# Run "bash SCRIPT ARGS" from a fresh copy of this checkout inside the
# chroot of MAJOR, with PGMAJOR=MAJOR.  The environment passed in is a
# short, explicit list: the host's PATH or PG_CONFIG mean nothing there.
cqrs_chroot_exec() {
	local major=$1 script=$2 top dir rc lockfd v
	shift 2
	top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
	if [ "$(id -u)" -ne 0 ]; then
		echo "pg_cqrs: PostgreSQL $major is not installed here and only root can make and enter its chroot" >&2
		return 1
	fi
	dir=$(cqrs_chroot_dir "$major")
	mkdir -p "$CQRS_CHROOT_CACHE"
	# The lock also covers making the chroot: never two at once, and
	# never remade under a run that uses it.
	exec {lockfd}>"$dir.lock"
	flock "$lockfd"
	cqrs_chroot_ensure "$major" || { exec {lockfd}>&-; return 1; }
	# Keep what we pass on: suite options and timeouts, not the host's paths.
	local envs=(PGMAJOR="$major" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
		HOME=/root LANG=C.UTF-8 TERM=dumb)
	# The copy has no .git: say which revision it is (make bench prints it).
	[ -n "${CQRS_REVISION:-}" ] ||
		envs+=(CQRS_REVISION="$(git -C "$top" describe --always --dirty 2>/dev/null || echo "not a git checkout")")
	for v in $(compgen -e); do
		case $v in
			CQRS_CHROOT|CQRS_CHROOT_CACHE|CQRS_NATIVE_LOCK) ;;
			CQRS_*|BENCH_*|PG_TEST_*|PGISOLATIONTIMEOUT|CI) envs+=("$v=${!v}") ;;
		esac
	done
	(
		trap 'cqrs_chroot_umount "$dir"' EXIT
		trap 'exit 130' INT TERM
		cqrs_chroot_umount "$dir"
		mount -t proc proc "$dir/proc" &&
		mkdir -p "$dir/dev/shm" &&
		mount -t tmpfs -o mode=1777,nosuid,nodev shm "$dir/dev/shm" || exit 1
		cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null
		# A copy of the working tree as it is (uncommitted changes
		# included), without git's data or build products.
		rm -rf "$dir/build/pg_cqrs" && mkdir -p "$dir/build/pg_cqrs" &&
		tar -C "$top" --exclude=./.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
			-cf - . | tar -C "$dir/build/pg_cqrs" -xf - || exit 1
		chroot "$dir" /usr/bin/env -i "${envs[@]}" \
			bash -c 'cd /build/pg_cqrs && exec bash "$@"' bash "$script" "$@"
	)
	rc=$?
	exec {lockfd}>&-
	return "$rc"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	# bash test/lib/chroot.sh MAJOR: just make sure the chroot exists.
	set -euo pipefail
	cqrs_chroot_ensure "${1:?usage: chroot.sh MAJOR}"
fi
