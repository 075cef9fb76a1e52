"""KEDA's external scaler served by the router: demand per model, summed over router replicas.

`query` (pure: trigger metadata, demand sums, rates), `peers` (other routers' demand over HTTP),
`server` (the gRPC service; imports grpcio, so only loaded with `--keda-port`). The
`externalscaler_pb2*` modules are generated from `externalscaler.proto` by
scripts/gen_keda_stubs.sh and committed.
"""
