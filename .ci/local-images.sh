#!/usr/bin/env bash
# Builds local stand-ins for the public base images, for machines that cannot pull any image.
# Each is a Debian bookworm root file system (debootstrap) imported with `docker import`:
#
#   lattice-local/postgres:15         Debian's PostgreSQL 15 with the official postgres image's contract
#   lattice-local/rust:1.95-bookworm  for rust:1.95-bookworm: gcc, libc6-dev, pkg-config and this
#                                     machine's Rust 1.95 toolchain in the official image's layout,
#                                     trusting the host's local CAs (/usr/local/share/ca-certificates)
#
# The bot's runtime needs none: it is `scratch`, which is never pulled.
#
# Usage: .ci/local-images.sh [--force] [postgres|rust]...
#   An image that already exists is skipped unless --force. Without names, both are built.
# Needs root, debootstrap and a running Docker Engine. Env: DEBIAN_MIRROR (default deb.debian.org),
# RUST_SYSROOT (the 1.95 toolchain to copy; default: `rustc +1.95.0 --print sysroot`).
set -euo pipefail

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
RUST_VERSION=1.95.0
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/lattice-local/debs
BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

declare -A IMAGE=(
	[postgres]=lattice-local/postgres:15
	[rust]=lattice-local/rust:1.95-bookworm
)

die() {
	echo "error: $*" >&2
	exit 1
}

force=false
wanted=()
for arg in "$@"; do
	case "$arg" in
	--force) force=true ;;
	postgres | rust) wanted+=("$arg") ;;
	-h | --help)
		awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
		exit 0
		;;
	*) die "unknown argument '$arg' (expected --force, postgres or rust)" ;;
	esac
done
if [ ${#wanted[@]} -eq 0 ]; then
	# Postgres first: test suites wait for it.
	wanted=(postgres rust)
fi

# Work directories, unmounted and removed on exit whatever happens.
workdirs=()
cleanup() {
	local dir mnt
	for dir in "${workdirs[@]}"; do
		# debootstrap mounts /proc and /sys inside the target; never delete through a mount.
		while read -r mnt; do
			umount -l "$mnt" 2>/dev/null || true
		done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
		rm -rf --one-file-system "$dir" "$dir.log"
	done
}
trap cleanup EXIT

new_rootfs() {
	local dir
	dir=$(mktemp -d "${TMPDIR:-/var/tmp}/lattice-rootfs.XXXXXX")
	workdirs+=("$dir")
	ROOTFS=$dir
}

# debootstrap minbase into $ROOTFS, with extra packages (comma list, may be empty).
bootstrap() {
	local include=$1
	local -a args=(--variant=minbase "--cache-dir=$CACHE")
	if [ -n "$include" ]; then
		args+=("--include=$include")
	fi
	mkdir -p "$CACHE"
	echo "  debootstrap $SUITE${include:+ (+ $include)}"
	if ! debootstrap "${args[@]}" "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1; then
		tail -n 40 "$ROOTFS.log" >&2
		die "debootstrap failed (its last lines are above; is $MIRROR reachable?)"
	fi
	# Like the official slim images: no package lists or downloaded packages left behind.
	rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb
}

# Imports $ROOTFS as image $1; the remaining arguments are `--change` instructions.
import_rootfs() {
	local name=$1
	shift
	local -a changes=()
	local change
	for change in "$@"; do
		changes+=(--change "$change")
	done
	tar -C "$ROOTFS" --numeric-owner -c . | docker import "${changes[@]}" - "$name" >/dev/null
}

build_postgres() {
	new_rootfs
	bootstrap postgresql-15
	# The package's postinst may have made a "main" cluster; the image initialises its own in $PGDATA.
	rm -rf "$ROOTFS"/etc/postgresql/15/main "$ROOTFS"/var/lib/postgresql/15
	install -m 0755 "$HERE/postgres-entrypoint.sh" "$ROOTFS/usr/local/bin/docker-entrypoint.sh"
	mkdir -p "$ROOTFS/var/lib/postgresql/data" "$ROOTFS/docker-entrypoint-initdb.d"
	chroot "$ROOTFS" chown postgres:postgres /var/lib/postgresql/data
	chmod 1777 "$ROOTFS/var/lib/postgresql/data"
	import_rootfs "${IMAGE[postgres]}" \
		"ENV PATH=/usr/lib/postgresql/15/bin:$BASE_PATH" \
		'ENV PGDATA=/var/lib/postgresql/data' \
		'ENV LANG=C.UTF-8' \
		'VOLUME /var/lib/postgresql/data' \
		'EXPOSE 5432' \
		'ENTRYPOINT ["docker-entrypoint.sh"]' \
		'CMD ["postgres"]'
	# `docker import` cannot set STOPSIGNAL. SIGINT is postgres' fast shutdown (as in the official
	# image); SIGTERM would wait for every client to disconnect and be cut off by the stop timeout.
	# (Its output is only the legacy builder's deprecation banner, shown on failure.)
	if ! printf 'FROM %s\nSTOPSIGNAL SIGINT\n' "${IMAGE[postgres]}" |
		docker build -q -t "${IMAGE[postgres]}" - >"$ROOTFS.log" 2>&1; then
		cat "$ROOTFS.log" >&2
		die "could not set the stop signal of ${IMAGE[postgres]}"
	fi
}

rust_sysroot() {
	local sysroot=${RUST_SYSROOT:-}
	if [ -z "$sysroot" ]; then
		sysroot=$(rustc "+$RUST_VERSION" --print sysroot 2>/dev/null || rustc --print sysroot 2>/dev/null) ||
			die "no Rust toolchain found: install Rust $RUST_VERSION with rustup, or set RUST_SYSROOT"
	fi
	local version
	version=$("$sysroot/bin/rustc" --version 2>/dev/null) || die "$sysroot/bin/rustc does not run"
	case "$version" in
	"rustc $RUST_VERSION "*) ;;
	*) die "$sysroot is '$version', not Rust $RUST_VERSION: set RUST_SYSROOT to a $RUST_VERSION toolchain" ;;
	esac
	echo "$sysroot"
}

build_rust() {
	local sysroot
	sysroot=$(rust_sysroot)
	new_rootfs
	bootstrap gcc,libc6-dev,ca-certificates,pkg-config
	# The official image's layout: toolchains under RUSTUP_HOME, commands in CARGO_HOME/bin.
	local toolchain=/usr/local/rustup/toolchains/$RUST_VERSION-x86_64-unknown-linux-gnu
	echo "  copying Rust $RUST_VERSION from $sysroot (without docs and sources)"
	mkdir -p "$ROOTFS$toolchain" "$ROOTFS/usr/local/cargo/bin"
	tar -C "$sysroot" -c --exclude=./share/doc --exclude=./lib/rustlib/src . | tar -C "$ROOTFS$toolchain" -x
	local bin
	for bin in "$ROOTFS$toolchain"/bin/*; do
		ln -s "$toolchain/bin/$(basename "$bin")" "$ROOTFS/usr/local/cargo/bin/"
	done
	# Trust what the host trusts: where crates.io is reached through a TLS-inspecting proxy, its CA
	# sits in /usr/local/share/ca-certificates, and cargo inside the image needs it too.
	local ca
	for ca in /usr/local/share/ca-certificates/*.crt; do
		[ -e "$ca" ] || continue
		install -m 0644 "$ca" "$ROOTFS/usr/local/share/ca-certificates/"
	done
	chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in the rust image"
	# Any user can run the tools and fill the cargo registry cache, as in the official image.
	chown -R 0:0 "$ROOTFS/usr/local/rustup" "$ROOTFS/usr/local/cargo"
	chmod -R a+rwX "$ROOTFS/usr/local/rustup" "$ROOTFS/usr/local/cargo"
	import_rootfs "${IMAGE[rust]}" \
		'ENV RUSTUP_HOME=/usr/local/rustup' \
		'ENV CARGO_HOME=/usr/local/cargo' \
		"ENV PATH=/usr/local/cargo/bin:$BASE_PATH" \
		"ENV RUST_VERSION=$RUST_VERSION" \
		'CMD ["bash"]'
}

[ "$(id -u)" = 0 ] || die "run as root (debootstrap needs it): sudo $0 $*"
command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install -y debootstrap"
docker info >/dev/null 2>&1 || die "the Docker Engine is not reachable: start it, or check DOCKER_HOST"

for kind in "${wanted[@]}"; do
	name=${IMAGE[$kind]}
	if ! $force && docker image inspect "$name" >/dev/null 2>&1; then
		echo "$name: present, skipped (--force rebuilds it)"
		continue
	fi
	echo "$name: building"
	start=$SECONDS
	"build_$kind"
	size=$(docker image inspect --format '{{.Size}}' "$name")
	echo "$name: built in $((SECONDS - start)) s, $((size / 1000000)) MB"
done
