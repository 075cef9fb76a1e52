#!/usr/bin/env bash
# Regenerates the Python modules of KEDA's external scaler protocol from
# src/vfleet/router/keda/externalscaler.proto. The generated files are committed, so only this
# script needs grpcio-tools: `pip install grpcio-tools==1.85.1` (the version that matches the
# grpcio pin in pyproject.toml; its output requires grpcio >= its own version).
set -euo pipefail
cd "$(dirname "$0")/../src"
python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
    vfleet/router/keda/externalscaler.proto
