-- wrk request for the router benchmarks: one small, non-streamed chat completion per request.
-- BENCH_MODEL picks the model name (default fake-model, what benchmarks/harness/fakeengine.py serves).
local model = os.getenv("BENCH_MODEL") or "fake-model"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"' .. model .. '","max_tokens":6,'
    .. '"messages":[{"role":"user","content":"Reply with a short greeting."}]}'
