# The vfleet image, for those with a Docker engine. scripts/image/build.sh builds the same
# contents without one (mmdebstrap + an OCI archive): the same Debian packages
# (scripts/image/packages.txt, dpkg filters scripts/image/dpkg-slim.cfg), the same install
# script (scripts/image/setup-rootfs.sh), the same config and labels (scripts/image/oci.py;
# tests/test_image.py checks that this file agrees with it).
#   docker build --build-arg VERSION=0.1.0 -t REGISTRY/vfleet:0.1.0 .
#   vfleet k8s install -f values.yaml --set routerSpec.image.repository=REGISTRY/vfleet
# (engines run the vLLM image; this one holds only vfleet.)

# Build stage: a C compiler, so `pip wheel` compiles the router's hot path with mypyc, and
# every dependency as a wheel, for an offline install in the image.
FROM python:3.11-bookworm AS build
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY src ./src
COPY charts ./charts
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM debian:bookworm-slim
COPY scripts/image/packages.txt scripts/image/dpkg-slim.cfg scripts/image/setup-rootfs.sh /tmp/vfleet-setup/
RUN cp /tmp/vfleet-setup/dpkg-slim.cfg /etc/dpkg/dpkg.cfg.d/vfleet-slim \
    && apt-get update \
    && grep -v '^#' /tmp/vfleet-setup/packages.txt | grep . \
       | xargs apt-get install -y --no-install-recommends \
    && rm /etc/dpkg/dpkg.cfg.d/vfleet-slim
COPY --from=build /wheels /tmp/vfleet-wheels
RUN sh /tmp/vfleet-setup/setup-rootfs.sh /tmp/vfleet-wheels \
    && rm -rf /tmp/vfleet-wheels /tmp/vfleet-setup

ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""
ENV PATH=/opt/vfleet/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/home/vfleet \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1
LABEL org.opencontainers.image.title="vfleet" \
      org.opencontainers.image.description="vfleet: router, downloader, simulator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/vfleet/vfleet" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
WORKDIR /home/vfleet
USER 10001:10001
ENTRYPOINT ["/opt/vfleet/bin/vfleet"]
