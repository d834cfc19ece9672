"""Opt-in simulated backend for developing the workflow without an engine.

Its numbers are not measurements of any engine: every artifact it touches says
``backend_mode: simulated`` and comparisons refuse to mix it with real rows.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..io import write_text
from ..records import GenerationRequest, RequestRecord, finalize_timing
from .base import ServingBackend


class SimulatedBackend(ServingBackend):
    mode = "simulated"

    # A fixed latency model (seconds): TTFT = base + per_prompt_token * n; TPOT constant.
    TTFT_BASE_S = 0.002
    TTFT_PER_TOKEN_S = 2e-6
    TPOT_S = 0.001

    def start(self) -> None:
        write_text(self.log_path, "simulated backend: no engine was started; timings are synthetic\n")

    def stop(self) -> None:
        pass

    async def generate(self, req: GenerationRequest, run_t0: float) -> RequestRecord:
        n_prompt = len(req.prompt) if isinstance(req.prompt, list) else len(str(req.prompt).split())
        record = RequestRecord(request_id=req.request_id, prompt_tokens_target=req.prompt_tokens_target,
                               max_tokens=req.max_tokens, scheduled_offset_s=req.scheduled_offset_s)
        send = time.perf_counter()
        record.start_s = send - run_t0
        await asyncio.sleep(self.TTFT_BASE_S + self.TTFT_PER_TOKEN_S * n_prompt)
        times = [time.perf_counter()]
        for _ in range(req.max_tokens - 1):
            await asyncio.sleep(self.TPOT_S)
            times.append(time.perf_counter())
        record.prompt_tokens = n_prompt
        record.output_tokens = req.max_tokens
        record.token_ids = [(n_prompt + i) % 1000 for i in range(req.max_tokens)]
        record.text = " ".join(f"t{i}" for i in record.token_ids)
        record.finish_reason = "length"
        return finalize_timing(record, send, times, [1] * len(times))

    def info(self) -> dict[str, Any]:
        return {"mode": self.mode, "note": "synthetic latency model; not a measurement"}
