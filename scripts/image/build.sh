#!/usr/bin/env bash
# Builds the vfleet image as an OCI image archive without Docker and without pulling a base
# image: mmdebstrap assembles a Debian bookworm root filesystem from Debian packages
# (packages.txt), setup-rootfs.sh installs the compiled vfleet wheel and its dependencies into
# /opt/vfleet inside it, and oci.py writes the archive (config: user 10001, entrypoint vfleet,
# org.opencontainers.image.* labels). The Debian packages install while the wheels build: the
# mypyc compile keeps one core busy for minutes, and the packages need none of it.
#
#   scripts/image/build.sh [--out DIR] [--ref REPO:TAG] [--apt-cache DIR] [--rev REV | --worktree]
#                          [--wheels DIR [--wait-wheels S]]
#
#   --rev REV        build this commit (default HEAD: what is committed, not the working tree)
#   --worktree       build the working tree as it is (tracked and untracked, not ignored files)
#   --wheels DIR     install these wheels (vfleet's and every dependency's) instead of building
#                    them: an offline build, or CI reusing the wheels it builds for its tests.
#                    DIR may appear later (renamed into place whole; DIR.failed: it never will):
#                    the packages install meanwhile, waiting for it up to --wait-wheels seconds
#   --wait-wheels S  how long to wait for the wheels (default 1800 seconds)
#   --out DIR        where vfleet-VERSION.oci.tar goes (default: dist/)
#   --ref REPO:TAG   the name `docker load` / `podman load` give it (default vfleet/vfleet:VERSION)
#   --apt-cache DIR  keep downloaded .deb files here and reuse them on the next build
#
# Environment: PYTHON (a CPython 3.11 with pip, default python3) builds the wheels;
# MIRROR (default deb.debian.org) is the Debian mirror; SOURCE_DATE_EPOCH (default: the last
# commit's time) dates the image and clamps file times. As root mmdebstrap runs in root mode, else in
# unshare mode (needs unprivileged user namespaces). Then:
#   skopeo copy oci-archive:dist/vfleet-VERSION.oci.tar docker://REGISTRY/vfleet:VERSION
#   docker load -i dist/vfleet-VERSION.oci.tar     (or podman load -i ...)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=$REPO/dist
REF=""
REV=HEAD
WORKTREE=0
WHEELS=""
WAIT_WHEELS=1800
APT_CACHE=""
PYTHON=${PYTHON:-python3}
MIRROR=${MIRROR:-http://deb.debian.org}
SUITE=bookworm

die() { echo "build.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
    case $1 in
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --ref) REF=${2:?--ref needs REPO:TAG}; shift 2 ;;
        --apt-cache) APT_CACHE=${2:?--apt-cache needs a directory}; shift 2 ;;
        --rev) REV=${2:?--rev needs a commit}; shift 2 ;;
        --worktree) WORKTREE=1; shift ;;
        --wheels) WHEELS=${2:?--wheels needs a directory}; shift 2 ;;
        --wait-wheels) WAIT_WHEELS=${2:?--wait-wheels needs seconds}; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^set -euo/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done

if ! command -v mmdebstrap >/dev/null; then
    [ "$(id -u)" = 0 ] || die "mmdebstrap is missing: apt-get install mmdebstrap"
    echo "build.sh: installing mmdebstrap" >&2
    apt-get install -y -qq --no-install-recommends mmdebstrap >&2 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends mmdebstrap; } >&2
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PYTHON is not Python 3.11 (the image's Debian python3 is; set PYTHON)"
"$PYTHON" -m pip --version >/dev/null || die "$PYTHON has no pip"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vfleet-image.XXXXXX")
WHEEL_PID=""
cleanup() {
    # a failed build stops its wheel build too (pip, and the build backend pip runs)
    if [ -n "$WHEEL_PID" ]; then
        pkill -P "$WHEEL_PID" 2>/dev/null || true
        kill "$WHEEL_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
START=$(date +%s)

# 1. Wheels: vfleet (its hot path compiled by mypyc, see setup.py) and every dependency,
# built in the background from a copy of the sources, so no build output lands in the tree;
# take-wheels.sh, a hook of step 2, waits for them.
mkdir -p "$WORK/src"
REVISION=""
if ! git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$REPO" && tar -cf - pyproject.toml setup.py MANIFEST.in README.md src charts) \
        | tar -xf - -C "$WORK/src"
elif [ "$WORKTREE" = 1 ]; then
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
        | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
    REVISION="$(git -C "$REPO" rev-parse HEAD)"
    [ -z "$(git -C "$REPO" status --porcelain)" ] || REVISION="$REVISION-dirty"
else
    REVISION=$(git -C "$REPO" rev-parse --verify "$REV^{commit}") || die "no commit $REV"
    git -C "$REPO" archive "$REVISION" | tar -xf - -C "$WORK/src"
    export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct "$REVISION")}
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}
VERSION=$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$WORK/src/pyproject.toml")
if [ -z "$WHEELS" ]; then
    echo "build.sh: building wheels" >&2
    WHEELS=$WORK/built
    ("$PYTHON" -m pip wheel --quiet --no-cache-dir --wheel-dir "$WHEELS.partial" "$WORK/src" >&2 \
        && mv "$WHEELS.partial" "$WHEELS") || touch "$WHEELS.failed" &
    WHEEL_PID=$!
fi
WHEELS=$(realpath -m "$WHEELS")

# 2. The root filesystem, as a tar (owners kept in either mode), /dev left to the runtime.
MODE=root
[ "$(id -u)" = 0 ] || MODE=unshare
DPKG_OPTS=()
while read -r line; do
    case $line in ''|'#'*) ;; *) DPKG_OPTS+=("--dpkgopt=$line") ;; esac
done < "$HERE/dpkg-slim.cfg"
CACHE_HOOKS=()
if [ -n "$APT_CACHE" ]; then
    mkdir -p "$APT_CACHE"
    APT_CACHE=$(cd "$APT_CACHE" && pwd)
    CACHE_HOOKS=(
        --skip=essential/unlink
        --setup-hook='mkdir -p "$1"/var/cache/apt/archives/'
        --setup-hook="sync-in $APT_CACHE /var/cache/apt/archives/"
        --customize-hook="sync-out /var/cache/apt/archives $APT_CACHE"
    )
fi
echo "build.sh: assembling the root filesystem (mmdebstrap --mode=$MODE)" >&2
# Debian's own PATH: mmdebstrap runs helpers through `env python3`, which must be Debian's
# interpreter, not a shim of a Python version manager (pyenv's cost a quarter of the time
# here). The install in the chroot gets a clean environment: the builder's PIP_* and PYTHON*
# settings (an index, find-links, certificates on the host) are no part of the image.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
mmdebstrap --mode="$MODE" --variant=minbase --format=tar --skip=output/dev \
    --include="$(grep -v '^#' "$HERE/packages.txt" | grep . | paste -sd, -)" \
    "${DPKG_OPTS[@]}" "${CACHE_HOOKS[@]}" \
    --customize-hook="sh $HERE/take-wheels.sh $WHEELS $WORK/wheels $VERSION $WAIT_WHEELS" \
    --customize-hook='mkdir -p "$1/tmp/vfleet-wheels" "$1/tmp/vfleet-setup"' \
    --customize-hook="sync-in $WORK/wheels /tmp/vfleet-wheels" \
    --customize-hook="copy-in $HERE/setup-rootfs.sh /tmp/vfleet-setup" \
    --customize-hook='chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 sh /tmp/vfleet-setup/setup-rootfs.sh /tmp/vfleet-wheels' \
    --customize-hook='rm -rf "$1/tmp/vfleet-wheels" "$1/tmp/vfleet-setup"' \
    "$SUITE" "$WORK/rootfs.tar" \
    "deb $MIRROR/debian $SUITE main" \
    "deb $MIRROR/debian $SUITE-updates main" \
    "deb $MIRROR/debian-security $SUITE-security main" >&2
ROOTFS_DONE=$(date +%s)
WHEELS_DONE=$(cat "$WORK/wheels.at")

# 3. The OCI image archive.
ARCHIVE=$OUT/vfleet-$VERSION.oci.tar
"$PYTHON" "$HERE/oci.py" --rootfs "$WORK/rootfs.tar" --out "$ARCHIVE" --version "$VERSION" \
    --revision "$REVISION" --ref "${REF:-vfleet/vfleet:$VERSION}" --created "$SOURCE_DATE_EPOCH"
END=$(date +%s)
echo "build.sh: $ARCHIVE: $(du -m "$ARCHIVE" | cut -f1) MB (root filesystem $(du -m "$WORK/rootfs.tar" | cut -f1) MB);" \
    "$((END - START)) s: packages in and wheels taken at $((WHEELS_DONE - START)) s, root filesystem done at $((ROOTFS_DONE - START)) s, archive $((END - ROOTFS_DONE)) s" >&2
echo "$ARCHIVE"
