#!/bin/sh
# Runs as root inside the image's root filesystem, the last step of both builds: mmdebstrap's
# chroot hook in scripts/image/build.sh, and the Dockerfile's RUN. WHEELS holds the vfleet wheel
# and every dependency's wheel; nothing is fetched from the network here.
#   sh setup-rootfs.sh WHEELS
set -eu
WHEELS=${1:?usage: setup-rootfs.sh WHEELS}
VENV=/opt/vfleet

python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --no-cache-dir --no-index --find-links "$WHEELS" vfleet
# What went in, pinned, for whoever audits the image.
"$VENV/bin/python" -m pip freeze --all --exclude pip --exclude setuptools > "$VENV/requirements.lock"
# The image installs nothing at run time: no pip to leave behind.
"$VENV/bin/python" -m pip uninstall --yes --quiet pip setuptools
# Wheels cannot hold symbolic links: the Helm SDK's libhelm_c.so, .so.0 and .so.0.2.2 arrive as
# three 85 MB copies. Identical files become hard links to one (the layer keeps them linked).
"$VENV/bin/python" - "$VENV" <<'PY'
import hashlib, os, sys
seen = {}
for top, _, files in os.walk(sys.argv[1]):
    for name in sorted(files):
        path = os.path.join(top, name)
        st = os.lstat(path)
        if not os.path.isfile(path) or os.path.islink(path) or st.st_size < 1 << 20:
            continue
        with open(path, "rb") as fh:
            key = (st.st_size, st.st_mode, hashlib.sha256(fh.read()).hexdigest())
        if key in seen:
            os.unlink(path)
            os.link(seen[key], path)
        else:
            seen[key] = path
PY
"$VENV/bin/vfleet" --version

# The chart runs vfleet's containers as 10001:10001 (runAsNonRoot).
groupadd --gid 10001 vfleet
useradd --uid 10001 --gid 10001 --create-home --home-dir /home/vfleet --shell /usr/sbin/nologin vfleet

# No package lists, caches or logs from the build.
find /var/lib/apt/lists /var/cache/apt -type f -delete
rm -rf /var/cache/debconf/*-old /var/log/apt/* \
    /var/log/dpkg.log /var/log/alternatives.log /root/.cache
