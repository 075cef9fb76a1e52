"""`vfleet bench`: load any OpenAI-compatible endpoint the way users judge it, and plan a fleet.

Pure parts (workloads and arrival times, statistics, Prometheus text, reports, and `plan`, the
fleet in virtual time) are separate modules with no I/O; `client` (a small streaming HTTP/1.1
client) and `runner` (the load generator) do the I/O; `plots` draws PNGs; `command` is the click
group with `run` and `compare`, `plancmd` the `plan` command, `options` the workload options they
share. Nothing else in vfleet imports this package but the CLI.
"""
