"""One line per E2 run of this folder: mode, closed-loop concurrency 8's TTFT p50, streams read
whole, the capacity, and (runs with the send-lag check) the open-loop points sent late."""
import csv
import sys
from pathlib import Path

here = Path(__file__).parent
print("| run | how it was driven | conc. 8 TTFT p50 (ms) | streams read whole | capacity (req/s) | probes | open-loop points sent late |")
print("|---|---|---|---|---|---|---|")
for line in (here / "runs.txt").read_text().splitlines():
    label, mode = line.split()[:2]
    rows = list(csv.DictReader(open(here / label / "concurrency.csv")))
    cap = next(csv.DictReader(open(here / label / "capacity.csv")))
    c8 = next(r for r in rows if r["mode"] == "concurrency" and float(r["level"]) == 8)
    whole = sum(int(r["n_read_whole"]) for r in rows)
    n = sum(int(r["n_ok"]) for r in rows)
    open_loop = [r for r in rows if r["mode"] != "concurrency"]
    late = (f"{sum('send lag' in (r['reason'] or '') for r in open_loop)} of {len(open_loop)}"
            if "send_lag_ms_p90" in rows[0] else "not checked yet")
    print(f"| {label} | {mode} | {float(c8['ttft_ms_p50']):.1f} | {whole} of {n} | {float(cap['capacity_rps']):.1f} | "
          f"{cap['probes']} | {late} |")
