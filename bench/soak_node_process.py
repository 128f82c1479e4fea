"""Runs the node-process tests (test/test_node_process.py) N times in a row beside busy processes, as a loaded CI
machine would, and reports every run's result and every service answer that did not arrive in time.

    python bench/soak_node_process.py [--runs 20] [--busy 2] [-k lifecycle]

The busy processes are pure-Python loops (one core each). A lost answer is logged by the tests' lifecycle client
(which asks again) with whether the node had made the transition: if it had, the request reached the node and
its answer was lost on the way back, not in the node.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 31 + 7) % 1_000_003


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--busy", type=int, default=2, help="busy processes beside the tests")
    ap.add_argument("-k", default="", help="pytest -k expression (default: every node-process test)")
    args = ap.parse_args()
    stop = mp.Event()
    busy = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for p in busy:
        p.start()
    log = Path(tempfile.mkdtemp()) / "lost_answers.log"
    env = dict(os.environ, SPIDEPTH_LOST_ANSWERS_LOG=str(log))
    failed = 0
    try:
        for run in range(1, args.runs + 1):
            t0 = time.monotonic()
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test/test_node_process.py"]
            if args.k:
                cmd += ["-k", args.k]
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
            failed += proc.returncode != 0
            lost = log.read_text().splitlines() if log.exists() else []
            print(f"run {run:2d}/{args.runs}: exit {proc.returncode}, {summary.strip('= ')}, "
                  f"{time.monotonic() - t0:.0f} s, lost answers so far {len(lost)}", flush=True)
            if proc.returncode != 0:
                print(proc.stdout[-4000:], flush=True)
    finally:
        stop.set()
        for p in busy:
            p.join(timeout=5)
    lost = log.read_text().splitlines() if log.exists() else []
    print(f"{args.runs - failed} of {args.runs} runs passed beside {args.busy} busy processes; "
          f"{len(lost)} service answers were asked again")
    for line in lost:
        print(f"  {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
