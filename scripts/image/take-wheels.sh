#!/bin/sh
# A customize hook of build.sh's mmdebstrap run (on the host, before the install in the chroot):
# waits for the wheel directory SRC, copies its wheels to DST and checks that vfleet's is the
# compiled one. Waiting is what lets the Debian packages install while the wheels are still being
# built (by build.sh in the background, or by CI for its own venv): SRC must appear whole (its
# maker renames it into place), and SRC.failed says it never will.
#   sh take-wheels.sh SRC DST VERSION WAIT_S
set -eu
SRC=${1:?usage: take-wheels.sh SRC DST VERSION WAIT_S} DST=$2 VERSION=$3 WAIT_S=$4
waited=0
while [ ! -d "$SRC" ]; do
    if [ -e "$SRC.failed" ]; then
        echo "take-wheels.sh: the wheels for $SRC were not built ($SRC.failed)" >&2
        exit 1
    fi
    if [ "$waited" -ge "$WAIT_S" ]; then
        echo "take-wheels.sh: no $SRC after $WAIT_S s" >&2
        exit 1
    fi
    sleep 1
    waited=$((waited + 1))
done
mkdir -p "$DST"
cp "$SRC"/*.whl "$DST"/
date +%s >"$DST.at"
set -- "$DST"/vfleet-"$VERSION"-*.whl
[ -e "$1" ] || { echo "take-wheels.sh: no vfleet-$VERSION wheel in $SRC" >&2; exit 1; }
case $1 in
    *-cp311-*) ;;
    *)
        if [ "${VFLEET_MYPYC:-auto}" != 0 ]; then
            echo "take-wheels.sh: $1 is not compiled (no C compiler? set VFLEET_MYPYC=0 to accept)" >&2
            exit 1
        fi
        ;;
esac
