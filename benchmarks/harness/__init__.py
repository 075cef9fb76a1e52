"""The project's router benchmark harness: everything benchmarks/router_*.py need, in this repo.

fakeengine.py  a stand-in vLLM engine that answers at once (run as a script)
loadgen.py     open-loop fixed-rate, closed-loop streaming and probe phases (run as a script)
wrk.py         wrk's command line, the request it sends (chat.lua) and its report's parser
procstat.py    CPU time, RSS and per-core load read from /proc
systems.py     the systems compared (direct, nginx, the Rust vllm-router, vfleet)
run.py         the orchestrator: pinning, interleaved repetitions, phases, results.jsonl
report.py      results -> markdown tables (pure)
setup.sh       installs wrk, nginx and the pinned vllm-router venv
"""
