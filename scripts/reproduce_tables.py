"""Runs (or reuses) the runs behind each paper table and renders results/<paper>/<table>.md and .csv.

    python scripts/reproduce_tables.py --tier smoke|reduced|full [--paper NAME|all] [--jobs N] [--dry-run]
        [--launcher local|slurm] [--slurm-args "--partition=gpu --gres=gpu:1"]

Every table cell in results/expected/<paper>.csv names the experiment preset that reproduces it. Each preset runs
once per seed in ``meta.seeds`` (smoke: the first two) through the normal CLI, ``python run.py experiment=...``,
into <runs-dir>/<tier>/<experiment>/seed_<k>/ (``--runs-dir``, default ``$RNNREPRO_RUNS`` or runs/reproduce; keep it
outside the checkout for runs that span sessions).

Reuse is decided from the resolved config, not from the override strings: the request is composed in-process and
compared with the run's config.yaml, leaving out keys that do not change results (data.root, threads, logging). A key
that the run's config lacks was added to a schema after the run; it matches when the request holds that key's schema
default (new features default to off), or, for the keys whose default is not the old behaviour
(`rnnrepro.config_diff.LEGACY_BEHAVIOUR`: trainer.flush_denormal), the old value. Then:

- same config, finished (completed / diverged): reused;
- same config, interrupted (last.pt): resumed;
- different config: the old directory is moved aside to ``seed_<k>.superseded-<UTC time>`` (never deleted) and the run
  starts fresh.

The reduced tier runs only the presets that declare ``meta.reduced``, a list of overrides giving a stated smaller
budget (for presets whose full budget does not fit the machine), for the seeds in ``meta.reduced_seeds`` (default:
``meta.seeds``); its tables are <table>.reduced.md, labelled as not
the paper's budget, with the overrides in each cell's notes.

The reduced and full tiers also write each table's learning curves, <stem>.curves.csv and .png: the validation
metric at every evaluation of every run behind the table, from its metrics.csv.

``--launcher slurm`` (``make reproduce-tables LAUNCHER=slurm``) fans the runs out over SLURM: each run is one batch
job (``sbatch --wait --requeue``, ``--cpus-per-task`` = the threads per run, plus ``--slurm-args``), at most ``--jobs``
queued at a time, always with ``resume=auto`` so that a requeued (preempted) job continues from its last.pt; its
scheduler output is ``slurm-<job id>.out`` beside console.log.

The smoke tier caps training at a few steps so that the whole pipeline runs on a 2-core CPU in minutes; its tables are
written to <table>.smoke.md and labelled as a pipeline check.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rnnrepro.config_diff import config_differences  # noqa: E402
from rnnrepro.results.aggregate import (  # noqa: E402
    list_papers,
    load_curves,
    load_expected,
    load_summaries,
    summarise_cell,
    write_table,
)

RESULTS = REPO / "results"
SMOKE_OVERRIDES = ["trainer.max_epochs=1", "trainer.max_steps=10", "trainer.limit_eval_batches=2",
                   "trainer.progress_bar=false"]
SMOKE_SEEDS = 2


def preset_meta(experiment: str) -> dict:
    with open(REPO / "conf" / "experiment" / f"{experiment}.yaml") as f:
        return (yaml.safe_load(f) or {}).get("meta") or {}


def preset_seeds(experiment: str) -> list[int]:
    """meta.seeds of a preset (read from its YAML; default [0, 1, 2])."""
    return list(preset_meta(experiment).get("seeds", [0, 1, 2]))


def preset_reduced(experiment: str) -> list[str]:
    """meta.reduced of a preset: the overrides of its reduced tier (empty: it has none)."""
    return [str(o) for o in preset_meta(experiment).get("reduced", [])]


def selected(experiment: str, patterns: list[str] | None) -> bool:
    return not patterns or any(fnmatch.fnmatch(experiment, p) for p in patterns)


def plan_runs(paper: str, tier: str, runs_dir: Path, extra: list[str], only: list[str] | None = None) -> list[dict]:
    runs, planned = [], set()
    for _, cell in load_expected(str(RESULTS), paper).iterrows():
        # several table cells (e.g. valid and test) read the same runs
        if cell["experiment"] in planned or not selected(cell["experiment"], only):
            continue
        planned.add(cell["experiment"])
        seeds = preset_seeds(cell["experiment"])
        if tier == "smoke":
            seeds = seeds[:SMOKE_SEEDS]
        reduced = preset_reduced(cell["experiment"])
        if tier == "reduced" and not reduced:
            continue  # no reduced tier: its cells say "not run here"
        if tier == "reduced":
            seeds = [int(s) for s in preset_meta(cell["experiment"]).get("reduced_seeds") or seeds]
        for seed in seeds:
            run_dir = runs_dir / tier / cell["experiment"] / f"seed_{seed}"
            overrides = [f"experiment={cell['experiment']}", f"seed={seed}", f"meta.tier={tier}"]
            overrides += (SMOKE_OVERRIDES if tier == "smoke" else reduced if tier == "reduced" else []) + extra
            runs.append({"experiment": cell["experiment"], "seed": seed, "dir": run_dir, "overrides": overrides})
    return runs


_COMPOSE_LOCK = threading.Lock()  # Hydra's global state is not thread-safe (runs are planned from a thread pool)


def compose_request(overrides: list[str]):
    """The config a run with these overrides would resolve to (the same composition as run.py)."""
    from hydra import compose, initialize_config_dir

    import rnnrepro.config  # noqa: F401 - registers the schemas the YAML files extend

    with _COMPOSE_LOCK, initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        return compose("config", overrides=list(overrides))


def run_state(run: dict) -> tuple[str, list[str]]:
    """(done | resume | fresh | stale, differences). done: same resolved config, finished; resume: same config,
    interrupted; fresh: nothing there yet; stale: a run of another config occupies the directory."""
    config = run["dir"] / "config.yaml"
    artifacts = [n for n in ("config.yaml", "metrics.csv", "summary.json", "last.pt", "best.pt")
                 if (run["dir"] / n).exists()]
    if not artifacts:
        return "fresh", []
    if not config.exists():
        return "stale", ["the directory holds run files but no config.yaml"]
    diffs = config_differences(compose_request(run["overrides"]), yaml.safe_load(config.read_text()) or {})
    if diffs:
        return "stale", diffs
    summary = run["dir"] / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") in ("completed", "diverged"):
        return "done", []
    if (run["dir"] / "last.pt").exists():
        return "resume", []
    return "stale", ["an earlier attempt stopped before its first checkpoint"]


def set_aside(run_dir: Path) -> Path:
    """Moves a run directory out of the way (never deletes it): <dir>.superseded-<UTC time>."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = run_dir.with_name(f"{run_dir.name}.superseded-{stamp}")
    run_dir.rename(target)
    return target


def slurm_command(cmd: list[str], run_dir: Path, threads: int | None, slurm_args: str) -> list[str]:
    """One SLURM batch job for one run: waits for it, and is requeued on preemption (the run continues)."""
    if "resume=auto" not in cmd:
        cmd = [*cmd, "resume=auto"]
    return ["sbatch", "--wait", "--requeue", "--parsable", f"--job-name=rnnrepro-{run_dir.parent.name}-{run_dir.name}",
            f"--chdir={REPO}", f"--output={run_dir}/slurm-%j.out", f"--cpus-per-task={threads or 1}",
            *shlex.split(slurm_args), "--wrap", shlex.join(cmd)]


def execute(run: dict, threads: int | None, launcher: str = "local", slurm_args: str = "") -> int:
    try:
        state, diffs = run_state(run)
    except Exception as err:  # noqa: BLE001 - e.g. a preset that no longer composes: this run fails, the rest go on
        print(f"failed  {run['dir']}: cannot compose {shlex.join(run['overrides'])}: {err}", flush=True)
        return 1
    if state == "done":
        print(f"reuse   {run['dir']}")
        return 0
    if state == "stale":
        moved = set_aside(run["dir"])
        print(f"stale   {run['dir']} moved to {moved}: " + "; ".join(diffs[:5]), flush=True)
        state = "fresh"
    run["dir"].mkdir(parents=True, exist_ok=True)
    (run["dir"] / "request.json").write_text(json.dumps(run["overrides"]))
    cmd = [sys.executable, str(REPO / "run.py"), *run["overrides"], f"hydra.run.dir={run['dir']}"]
    if state == "resume":
        cmd.append("resume=auto")
    if threads:
        cmd.append(f"trainer.num_threads={threads}")
    if launcher == "slurm":
        cmd = slurm_command(cmd, run["dir"], threads, slurm_args)
    print(f"{state:7s} {shlex.join(cmd[1:])}", flush=True)
    # Hydra writes its own log file (run.log) there; the console output, tracebacks included, goes beside it
    with open(run["dir"] / "console.log", "a") as log:
        return subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode


def render(paper: str, tier: str, runs: list[dict], command: str, only: list[str] | None = None) -> list[str]:
    """Writes every table of ``paper`` that holds a selected experiment."""
    expected = load_expected(str(RESULTS), paper)
    written = []
    for table, cells in expected.groupby("table", sort=False):
        if not any(selected(e, only) for e in cells["experiment"]):
            continue
        rows, curve_runs, curved = [], [], set()
        for _, cell in cells.iterrows():
            dirs = [str(r["dir"]) for r in runs if r["experiment"] == cell["experiment"]]
            if cell["experiment"] not in curved:  # several cells (valid and test) read the same runs
                curved.add(cell["experiment"])
                curve_runs += [(str(cell["row"]), d) for d in dirs]
            started = [d for d in dirs if os.path.isdir(d)]  # a seed never started is "not run", not a failure
            row = summarise_cell(cell, load_summaries(dirs), planned=len(started))
            if started and len(started) < len(dirs):
                row["notes"] = "; ".join(n for n in (row["notes"], f"{len(dirs) - len(started)} of the preset's "
                                                     f"{len(dirs)} seeds not run") if n)
            if tier == "reduced" and dirs:
                budget = "reduced budget: " + " ".join(preset_reduced(cell["experiment"]))
                row["notes"] = "; ".join(n for n in (budget, row["notes"]) if n)
            rows.append(row)
        # learning curves for the tiers that train for real (a smoke run's few steps make no curve)
        curves = None if tier == "smoke" else load_curves(curve_runs)
        written.append(write_table(str(RESULTS), paper, str(table), tier, pd.DataFrame(rows), command, curves))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", choices=["smoke", "reduced", "full"], default="smoke")
    parser.add_argument("--paper", default="all", help="a file name under results/expected/ (without .csv), or all")
    parser.add_argument("--runs-dir", default=os.environ.get("RNNREPRO_RUNS") or str(REPO / "runs" / "reproduce"),
                        help="where the runs live (default: $RNNREPRO_RUNS, else runs/reproduce in the checkout)")
    parser.add_argument("--render-only", action="store_true", help="render the tables from the runs there, run nothing")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (CPU threads are split between them)")
    parser.add_argument("--experiments", nargs="+", metavar="PATTERN",
                        help="only these presets (shell patterns, e.g. 'baselines/ptb_*'); their tables are rendered")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing, render nothing")
    parser.add_argument("--launcher", choices=["local", "slurm"], default="local",
                        help="local: subprocesses here; slurm: one sbatch job per run (see above)")
    parser.add_argument("--slurm-args", default="", help="extra sbatch options, e.g. '--partition=gpu --gres=gpu:1'")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run, e.g. data.root=/data")
    args = parser.parse_args(argv)

    papers = list_papers(str(RESULTS)) if args.paper == "all" else [args.paper]
    unknown = [p for p in papers if p not in list_papers(str(RESULTS))]
    if unknown:
        parser.error(f"unknown paper {unknown}; choose from {list_papers(str(RESULTS))} or all")
    command = "make reproduce-tables " + f"TIER={args.tier} PAPER={args.paper}"
    if args.experiments:
        command += f" EXPERIMENTS='{' '.join(args.experiments)}'"
    if args.render_only:
        command += " ARGS=--render-only (rendered from finished runs)"
    plans = {p: plan_runs(p, args.tier, Path(args.runs_dir), args.overrides, args.experiments) for p in papers}
    if args.dry_run:
        for paper, runs in plans.items():
            for r in runs:
                state, diffs = run_state(r)
                print(f"{state:7s} {paper}: {shlex.join(r['overrides'])} -> {r['dir']}"
                      + (f" ({'; '.join(diffs[:3])})" if diffs else ""))
        return 0
    if args.launcher == "slurm" and shutil.which("sbatch") is None:
        parser.error("--launcher slurm: sbatch is not on PATH here; run on a SLURM login node, or --launcher local")
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    all_runs = [r for runs in plans.values() for r in runs]
    if args.render_only:
        codes = [0] * len(all_runs)
    else:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            codes = list(pool.map(lambda r: execute(r, threads, args.launcher, args.slurm_args), all_runs))
    failed = [r["dir"] for r, c in zip(all_runs, codes) if c != 0]
    for paper, runs in plans.items():
        for path in render(paper, args.tier, runs, command, args.experiments):
            print(f"wrote {path}")
    if failed:
        print(f"{len(failed)} run(s) failed; see console.log in: " + ", ".join(map(str, failed)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
