"""Stream delivery summary of one or more requests.csv: whole-stream bursts, waiting chunks,
client TPOT (as recorded) vs vLLM's per-request ITL."""
import sys, json
import pandas as pd
rows = []
for label, fn in (a.split("=", 1) for a in sys.argv[1:]):
    r = pd.read_csv(fn)
    r = r[r["ok"] & r["itl_s"].notna() & r["engine_itl_ms"].notna()]
    n = len(r); whole = waiting = flagged = 0; gaps_total = gaps_small = 0; max_late = 0.0
    for _, x in r.iterrows():
        g = [float(v) for v in str(x.itl_s).split(",") if v]
        if not g: continue
        gaps_total += len(g); gaps_small += sum(v < 0.0003 for v in g)
        if max(g) < 0.001: whole += 1
        if x.tpot_s == x.tpot_s and x.tpot_s * 1000 < 0.8 * x.engine_itl_ms: flagged += 1
        late = x.ttft_s * 1000 - (x.engine_ttft_ms + (x.engine_queue_ms if x.engine_queue_ms == x.engine_queue_ms else 0))
        max_late = max(max_late, late)
    rows.append({"run": label, "requests": n, "whole_stream_bursts": whole, "tpot_below_0.8_itl": flagged,
                 "gaps_under_0.3ms_pct": round(100 * gaps_small / max(gaps_total, 1), 1),
                 "max_client_minus_engine_ttft_ms": round(max_late, 1),
                 "engine_itl_ms_median": round(float(r["engine_itl_ms"].median()), 3)})
print(pd.DataFrame(rows).to_markdown(index=False))
