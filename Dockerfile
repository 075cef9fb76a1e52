# The vfleet image the Helm chart runs for the router, the download Job and `helm test`:
#   docker build -t REGISTRY/vfleet:0.1.0 .
#   helm install vfleet charts/vfleet -f values.yaml --set routerSpec.image.repository=REGISTRY/vfleet
# (engines run the vLLM image; this one holds only vfleet.)

# Build stage: a C compiler, so `pip wheel` compiles the router's hot path with mypyc.
FROM python:3.11-bookworm AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# git and git-lfs: `vfleet download git+https://...`
RUN apt-get update \
    && apt-get install -y --no-install-recommends git git-lfs ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY charts /opt/vfleet/charts
ENV VFLEET_CHART=/opt/vfleet/charts/vfleet
# The chart runs these containers as user 10001 (runAsNonRoot).
RUN useradd --uid 10001 --create-home vfleet
USER 10001
ENTRYPOINT ["vfleet"]
