"""Runs (or reuses) the runs behind each paper table and renders results/<paper>/<table>.md and .csv.

    python scripts/reproduce_tables.py --tier smoke|full [--paper NAME|all] [--jobs N] [--dry-run]

Every table cell in results/expected/<paper>.csv names the experiment preset that reproduces it. Each preset runs
once per seed in ``meta.seeds`` (smoke: the first two) through the normal CLI, ``python run.py experiment=...``,
into runs/reproduce/<tier>/<experiment>/seed_<k>/. A finished run whose request (overrides) is unchanged is reused;
an interrupted one resumes from its last.pt. The smoke tier caps training at a few steps so that the whole pipeline
runs on a 2-core CPU in minutes; its tables are written to <table>.smoke.md and labelled as a pipeline check.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rnnrepro.results.aggregate import (  # noqa: E402
    list_papers,
    load_expected,
    load_summaries,
    summarise_cell,
    write_table,
)

RESULTS = REPO / "results"
SMOKE_OVERRIDES = ["trainer.max_epochs=1", "trainer.max_steps=10", "trainer.limit_eval_batches=2",
                   "trainer.progress_bar=false"]
SMOKE_SEEDS = 2


def preset_seeds(experiment: str) -> list[int]:
    """meta.seeds of a preset (read from its YAML; default [0, 1, 2])."""
    with open(REPO / "conf" / "experiment" / f"{experiment}.yaml") as f:
        data = yaml.safe_load(f) or {}
    return list((data.get("meta") or {}).get("seeds", [0, 1, 2]))


def plan_runs(paper: str, tier: str, runs_dir: Path, extra: list[str]) -> list[dict]:
    runs = []
    for _, cell in load_expected(str(RESULTS), paper).iterrows():
        seeds = preset_seeds(cell["experiment"])
        if tier == "smoke":
            seeds = seeds[:SMOKE_SEEDS]
        for seed in seeds:
            run_dir = runs_dir / tier / cell["experiment"] / f"seed_{seed}"
            overrides = [f"experiment={cell['experiment']}", f"seed={seed}", f"meta.tier={tier}"]
            overrides += (SMOKE_OVERRIDES if tier == "smoke" else []) + extra
            runs.append({"experiment": cell["experiment"], "seed": seed, "dir": run_dir, "overrides": overrides})
    return runs


def run_state(run: dict) -> str:
    """done (reuse) | resume (interrupted, same request) | fresh (nothing, or a different request)."""
    request = run["dir"] / "request.json"
    if not request.exists() or json.loads(request.read_text()) != run["overrides"]:
        return "fresh"
    summary = run["dir"] / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") in ("completed", "diverged"):
        return "done"
    return "resume" if (run["dir"] / "last.pt").exists() else "fresh"


def execute(run: dict, threads: int | None) -> int:
    state = run_state(run)
    if state == "done":
        print(f"reuse   {run['dir']}")
        return 0
    if state == "fresh" and run["dir"].exists():
        for name in ("metrics.csv", "summary.json", "last.pt", "best.pt", "config.yaml", "request.json"):
            (run["dir"] / name).unlink(missing_ok=True)
    run["dir"].mkdir(parents=True, exist_ok=True)
    (run["dir"] / "request.json").write_text(json.dumps(run["overrides"]))
    cmd = [sys.executable, str(REPO / "run.py"), *run["overrides"], f"hydra.run.dir={run['dir']}"]
    if state == "resume":
        cmd.append("resume=auto")
    if threads:
        cmd.append(f"trainer.num_threads={threads}")
    print(f"{state:7s} {shlex.join(cmd[1:])}", flush=True)
    with open(run["dir"] / "run.log", "a") as log:
        return subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode


def render(paper: str, tier: str, runs: list[dict], command: str) -> list[str]:
    expected = load_expected(str(RESULTS), paper)
    written = []
    for table, cells in expected.groupby("table", sort=False):
        rows = []
        for _, cell in cells.iterrows():
            dirs = [str(r["dir"]) for r in runs if r["experiment"] == cell["experiment"]]
            rows.append(summarise_cell(cell, load_summaries(dirs), planned=len(dirs)))
        written.append(write_table(str(RESULTS), paper, str(table), tier, pd.DataFrame(rows), command))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", choices=["smoke", "full"], default="smoke")
    parser.add_argument("--paper", default="all", help="a file name under results/expected/ (without .csv), or all")
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "reproduce"))
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (CPU threads are split between them)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing, render nothing")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run, e.g. data.root=/data")
    args = parser.parse_args(argv)

    papers = list_papers(str(RESULTS)) if args.paper == "all" else [args.paper]
    unknown = [p for p in papers if p not in list_papers(str(RESULTS))]
    if unknown:
        parser.error(f"unknown paper {unknown}; choose from {list_papers(str(RESULTS))} or all")
    command = "make reproduce-tables " + f"TIER={args.tier} PAPER={args.paper}"
    plans = {p: plan_runs(p, args.tier, Path(args.runs_dir), args.overrides) for p in papers}
    if args.dry_run:
        for paper, runs in plans.items():
            for r in runs:
                print(f"{run_state(r):7s} {paper}: {shlex.join(r['overrides'])} -> {r['dir']}")
        return 0
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    all_runs = [r for runs in plans.values() for r in runs]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        codes = list(pool.map(lambda r: execute(r, threads), all_runs))
    failed = [r["dir"] for r, c in zip(all_runs, codes) if c != 0]
    for paper, runs in plans.items():
        for path in render(paper, args.tier, runs, command):
            print(f"wrote {path}")
    if failed:
        print(f"{len(failed)} run(s) failed; see run.log in: " + ", ".join(map(str, failed)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
