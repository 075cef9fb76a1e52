"""Latency profiles: how long one engine step takes for a given batch.

A step's time is `step_base_s + per_seq_s * seqs + prefill_token_s * prefill_tokens +
context_token_s * context_tokens`, where `context_tokens` is the sum of the context lengths the
step's sequences attend over. The base term is the weight read of a memory-bound decode step; the
context term makes decode slower as batches and contexts grow; the prefill term makes time to first
token proportional to uncached prompt tokens.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    name: str
    step_base_s: float  # seconds per step regardless of batch (weights read once per step)
    per_seq_s: float  # seconds per sequence in the step (sampling, per-seq overhead)
    prefill_token_s: float  # seconds per uncached prompt token computed
    context_token_s: float  # seconds per context token attended by the step's sequences
    description: str = ""
    # Seconds from a request's arrival until the engine can schedule it: vLLM's API server
    # parses, renders and tokenizes, then hands the request to the engine process.
    request_overhead_s: float = 0.0

    def step_time(self, num_seqs: int, prefill_tokens: int, context_tokens: int) -> float:
        if num_seqs == 0:
            return 0.0
        return (
            self.step_base_s
            + self.per_seq_s * num_seqs
            + self.prefill_token_s * prefill_tokens
            + self.context_token_s * context_tokens
        )

    def decode_ends(self, start: float, num_seqs: int, context: int, steps: int) -> list[float]:
        """When each of `steps` back-to-back decode steps of `num_seqs` sequences ends, from
        `start`, the first attending over `context` tokens and each next over `num_seqs` more.

        Bit for bit what summing `step_time(num_seqs, 0, ctx)` step by step gives (the same
        float operations in the same order, the constant part of the sum computed once): a
        planned hour of traffic decides millions of such steps."""
        if num_seqs == 0:
            return [start] * max(0, steps)
        head = self.step_base_s + self.per_seq_s * num_seqs + self.prefill_token_s * 0
        per_token = self.context_token_s
        end = start
        ends = []
        for ctx in range(context, context + steps * num_seqs, num_seqs):
            end += head + per_token * ctx
            ends.append(end)
        return ends


PROFILES: dict[str, LatencyProfile] = {
    p.name: p
    for p in (
        LatencyProfile(
            "instant",
            0.0,
            0.0,
            0.0,
            0.0,
            "No modelled latency: steps run back to back; for router and load benchmarks.",
        ),
        LatencyProfile(
            "small",
            0.0011,
            1e-5,
            1e-5,
            5e-9,
            "A ~0.4B model on one H200, fitted to vLLM 0.26 serving a 0.35B Qwen3 there: "
            "~1.2 ms decode steps alone, ~1.9 ms at batch 64, ~10 ms time to first token.",
            request_overhead_s=0.006,
        ),
        LatencyProfile(
            "llama-8b-h100",
            0.0065,
            5e-5,
            7e-5,
            2e-8,
            "An 8B dense model in bf16 on one H100: ~7 ms decode steps at small batch, ~14k "
            "prefill tok/s, decode slowing with batch size and context length.",
            request_overhead_s=0.006,
        ),
    )
}


def custom_profile(
    step_base_s: float,
    per_seq_s: float,
    prefill_token_s: float,
    context_token_s: float,
    request_overhead_s: float = 0.0,
) -> LatencyProfile:
    for v in (step_base_s, per_seq_s, prefill_token_s, context_token_s, request_overhead_s):
        if v < 0:
            raise ValueError("profile costs must be >= 0")
    return LatencyProfile(
        "custom",
        step_base_s,
        per_seq_s,
        prefill_token_s,
        context_token_s,
        request_overhead_s=request_overhead_s,
    )
