"""Fuzz scope's readers: `python scripts/fuzz_artifacts.py N [--seed S]` breaks N valid artifacts and runs
info/validate/show/query/diff/export on each; prints how many ended in clean one-line errors and lists
anything else (internal errors, tracebacks, stderr noise, hangs, memory blow-ups) with the case to replay.

Memory: a command that grows the worker's RSS more than --growth-mb (1024) over its baseline (after imports,
before the first case) is a blow-up; the summary gives the largest growth seen (peak RSS, VmHWM, per command).

Only attribute damage:  python scripts/fuzz_artifacts.py 300 --attributes   (or --mutation KIND, repeated)
Replay one case:  python scripts/fuzz_artifacts.py --replay CASE --seed S [the same --mutation / --attributes]
(writes case.h5 here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from artifact_fuzz import ALL_MUTATIONS, ATTR_MUTATIONS, case_file, fuzz  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=1000, help="cases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case number (split a long run over processes)")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per command before it counts as a hang")
    ap.add_argument("--growth-mb", type=float, default=1024.0,
                    help="RSS growth of the worker over its baseline (MiB) that counts as a blow-up")
    ap.add_argument("--rss-mb", type=float, default=None, help="also an absolute RSS limit (MiB), off by default")
    ap.add_argument("--mutation", action="append", choices=ALL_MUTATIONS, help="only these mutation kinds")
    ap.add_argument("--attributes", action="store_true", help="only the attribute-damage kinds: " + ", ".join(ATTR_MUTATIONS))
    ap.add_argument("--replay", type=int, default=None, help="write case.h5 for this case number and exit")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.attributes:
        args.mutation = (args.mutation or []) + [k for k in ATTR_MUTATIONS if k not in (args.mutation or [])]
    if args.replay is not None:
        base, desc = case_file(args.seed, args.replay, "case.h5", args.mutation)
        print(f"case {args.replay}: {desc}; wrote case.h5 (diff partner: {base})")
        return
    last = [time.perf_counter()]

    def tick(rep):
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"  {rep.cases}/{args.n} cases, {dict(rep.case_verdicts)}", file=sys.stderr, flush=True)

    rep = fuzz(args.n, seed=args.seed, start=args.start, timeout_s=args.timeout, growth_limit_mb=args.growth_mb,
               rss_limit_mb=args.rss_mb, mutations=args.mutation,
               on_case=tick, on_failure=lambda f: print(f"  FOUND case {f[0]} [{f[1]}] {f[2]}: {f[3]}: {f[4][-300:]}",
                                                        file=sys.stderr, flush=True))
    clean_cases = rep.case_verdicts["ok"] + rep.case_verdicts["clean"]
    summary = {
        "cases": rep.cases, "first_case": args.start, "seed": args.seed, "commands_run": rep.commands, "seconds": round(rep.seconds, 1),
        "cases_all_clean": clean_cases, "cases_other": rep.cases - clean_cases,
        "command_verdicts": dict(rep.verdicts), "case_verdicts": dict(rep.case_verdicts),
        "by_mutation": {f"{k}/{v}": n for (k, v), n in sorted(rep.by_mutation.items())},
        "mutations": args.mutation or "all",
        "memory": {"method": rep.memory_method, "growth_limit_mib": args.growth_mb, "absolute_limit_mib": args.rss_mb,
                   "worker_baseline_mib": round(rep.baseline_mb, 1), "peak_growth_mib": round(rep.peak_growth_mb, 1),
                   "peak_at": dict(zip(("case", "mutation", "command"), rep.peak_at))},
        "failures": [{"case": c, "mutation": d, "command": cmd, "verdict": v, "stderr": e}
                     for c, d, cmd, v, e in rep.failures[:200]],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{rep.cases} cases ({rep.commands} commands) in {rep.seconds:.0f} s, seed {args.seed}")
        print(f"  every command exited 0 or with one clean error line: {clean_cases} cases")
        print(f"  anything else: {rep.cases - clean_cases} cases")
        print(f"  per command: {dict(rep.verdicts)}")
        print(f"  per case: {dict(rep.case_verdicts)}")
        at = f" (case {rep.peak_at[0]} {rep.peak_at[2]}: {rep.peak_at[1]})" if rep.peak_at else ""
        print(f"  peak RSS growth {rep.peak_growth_mb:.0f} MiB over a worker baseline of {rep.baseline_mb:.0f} MiB{at}; "
              f"limit {args.growth_mb:.0f} MiB; {rep.memory_method}")
        for f in summary["failures"][:40]:
            print(f"  case {f['case']} [{f['mutation']}] {f['command']}: {f['verdict']}: {f['stderr'][-300:]}")
    sys.exit(0 if clean_cases == rep.cases else 1)


if __name__ == "__main__":
    main()
