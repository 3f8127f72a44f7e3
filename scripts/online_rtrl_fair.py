"""A fair comparison of the online algorithms with truncated BPTT on the copy task (issue: fair baselines), at the
CPU scale of ``online_rtrl_report.py`` (RHN n = 32, B = 16, OK r = 8; budgets in time steps).

Stages, each a set of ``run.py`` runs under ``<runs dir>/fair/<stage>/<variant>/seed<k>/`` (a finished run is
reused, an unfinished one resumed with ``resume=auto``):

    python scripts/online_rtrl_fair.py sweep      --runs-dir DIR --jobs 2   # lr sweep, one seed, 50k time steps
    python scripts/online_rtrl_fair.py time_steps --runs-dir DIR --jobs 2   # every algorithm, 100k time steps
    python scripts/online_rtrl_fair.py wall_clock --runs-dir DIR --jobs 2   # TBPTT for OK's wall-clock time
    python scripts/online_rtrl_fair.py updates    --runs-dir DIR --jobs 2   # TBPTT for OK's 100k updates
    python scripts/online_rtrl_fair.py report     --runs-dir DIR            # results/online_rtrl/copy_fair.*
    python scripts/online_rtrl_fair.py time_steps --runs-dir DIR --dry-run  # print the commands, run nothing
    python scripts/online_rtrl_fair.py updates    --runs-dir DIR --seeds 0  # only some of the table seeds

- ``sweep``: Adam lr in {10^-4, 10^-3.5, ..., 10^-1.5} (TBPTT: to 10^-1) for OK, KF-RTRL, UORO and TBPTT at each
  truncation k in {5, 25, 50, 100} (one update per window of k steps), seed 100 (not a table seed), 50k time
  steps. The lr kept per algorithm (and per k): the largest curriculum T at the end, ties broken by the earlier
  time step at which that T was reached, then by the lower final training loss.
- ``time_steps``: every algorithm at its kept lr for 100k time steps, seeds 0-2. Online algorithms update every
  step (100k updates); TBPTT every k steps (100k / k updates).
- ``wall_clock``: TBPTT at each k for as long as OK took: ``trainer.max_cpu_time_s`` = the mean CPU time of the OK
  runs of ``time_steps``. Every run has one thread, so its CPU time is the wall clock it would take alone on one
  core, whatever else shares the machine (the wall times, which depend on that, are reported beside).
- ``updates``: TBPTT at each k for OK's 100k updates, so k x 100k time steps.

The default ``--jobs 2`` runs two single-thread runs at once (the 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import online_rtrl_report as common  # noqa: E402

REPO = common.REPO
BASE = ["model.hidden_size=32", "algorithm.ok.rank=8"]  # the cpu scale of online_rtrl_report.py
ONLINE = ("ok", "kf_rtrl", "uoro")
TRUNCATIONS = (5, 25, 50, 100)
LR_EXPONENTS = (-4.0, -3.5, -3.0, -2.5, -2.0, -1.5)
# TBPTT's long windows were still improving at 10^-1.5, so its grid goes one step further
TBPTT_LR_EXPONENTS = (*LR_EXPONENTS, -1.0)


def lr_grid(algorithm: str) -> tuple[float, ...]:
    return TBPTT_LR_EXPONENTS if algorithm == "tbptt" else LR_EXPONENTS
SWEEP_SEED, TABLE_SEEDS = 100, (0, 1, 2)
SWEEP_STEPS, TABLE_STEPS, EVAL_EVERY = 50_000, 100_000, 5_000  # time steps
STAGES = ("sweep", "time_steps", "wall_clock", "updates")
# glibc's default malloc returns the large influence buffers to the OS after each step and page-faults them back
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def variant_name(algorithm: str, k: int | None, lr_exp: float) -> str:
    return f"{algorithm}{'' if k is None else f'_k{k}'}_lr{lr_exp:+.1f}"


def methods() -> list[tuple[str, int | None]]:
    return [(a, None) for a in ONLINE] + [("tbptt", k) for k in TRUNCATIONS]


def label(algorithm: str, k: int | None) -> str:
    return common.LABELS[algorithm] + ("" if k is None else f"-{k}")


def run_folder(runs_dir: str, stage: str, variant: str, seed: int) -> str:
    return os.path.join(runs_dir, "fair", stage, variant, f"seed{seed}")


def command(algorithm: str, k: int | None, lr_exp: float, seed: int, out: str, stage: str, *,
            time_steps: int | None = None, updates: int | None = None, cpu_seconds: float | None = None,
            eval_every: int = EVAL_EVERY) -> list[str]:
    """run.py for one variant. Budgets: time steps (online: one update each; TBPTT: one per k), updates, or
    CPU seconds (then the step budget is only a cap that is never reached)."""
    per_update = k or 1
    if updates is None:
        updates = time_steps // per_update if time_steps is not None else 10**9 // per_update
    cmd = [sys.executable, os.path.join(REPO, "run.py"), f"experiment=online_rtrl/copy_{algorithm}", *BASE,
           f"optimizer.lr={10 ** lr_exp!r}", f"trainer.max_steps={updates}",
           f"trainer.eval_every_n_steps={max(eval_every // per_update, 1)}", f"seed={seed}", "meta.tier=cpu",
           f"meta.row={label(algorithm, k)}", f"output_dir={out}", "trainer.progress_bar=false",
           "trainer.num_threads=1"]
    if k is not None:
        cmd += [f"algorithm.tbptt.truncation={k}", f"data.chunk_len={k}"]
    if cpu_seconds is not None:
        cmd.append(f"trainer.max_cpu_time_s={cpu_seconds:.1f}")
    if os.path.exists(os.path.join(out, "last.pt")):
        cmd.append("resume=auto")
    return cmd


def finished(out: str) -> bool:
    path = os.path.join(out, "summary.json")
    return os.path.exists(path) and json.load(open(path)).get("status") == "completed"


def run_all(jobs: list[tuple[list[str], str]], parallel: int) -> None:
    """Runs the commands, ``parallel`` at a time, each logging to run.log in its output folder."""
    pending = [(cmd, out) for cmd, out in jobs if not finished(out)]
    for _, out in jobs:
        if finished(out):
            print(f"reuse {out}")
    running: list[tuple[subprocess.Popen, str]] = []
    env = {**os.environ, **ALLOCATOR}
    while pending or running:
        while pending and len(running) < parallel:
            cmd, out = pending.pop(0)
            os.makedirs(out, exist_ok=True)
            print(" ".join(cmd[2:]), flush=True)
            log = open(os.path.join(out, "run.log"), "a")
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env), out))
        time.sleep(2)
        for proc, out in list(running):
            if proc.poll() is not None:
                running.remove((proc, out))
                print(f"{'done' if proc.returncode == 0 else f'FAILED ({proc.returncode})'}: {out}", flush=True)


def load(out: str) -> tuple[dict, pd.DataFrame] | None:
    if not finished(out):
        return None
    return json.load(open(os.path.join(out, "summary.json"))), pd.read_csv(os.path.join(out, "metrics.csv"))


def curve(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[metrics.split == "train"][["step", "time_steps", "curriculum_T", "loss", "wall_time_s"]].dropna(
        subset=["curriculum_T"])


def sweep_choice(runs_dir: str) -> dict[tuple[str, int | None], dict]:
    """Per method, every swept lr's outcome and the lr kept (module docstring), from the finished sweep runs."""
    out = {}
    for algorithm, k in methods():
        results = []
        for e in lr_grid(algorithm):
            loaded = load(run_folder(runs_dir, "sweep", variant_name(algorithm, k, e), SWEEP_SEED))
            if loaded is None:
                continue
            summary, metrics = loaded
            c = curve(metrics)
            T = int(c.curriculum_T.iloc[-1])
            first = int(c[c.curriculum_T >= T].time_steps.iloc[0])
            results.append({"lr_exp": e, "T": T, "first": first, "loss": float(c.loss.iloc[-1]),
                            "status": summary["status"], "summary": summary})
        if len(results) == len(lr_grid(algorithm)):
            best = max(results, key=lambda r: (r["T"], -r["first"], -r["loss"]))
            out[(algorithm, k)] = {"results": results, "lr_exp": best["lr_exp"]}
    return out


def stage_jobs(stage: str, runs_dir: str, seeds: tuple[int, ...] = ()) -> list[tuple[list[str], str]]:
    """The stage's runs; seeds: a subset of the table seeds (default all of them; the sweep has its own seed)."""
    seeds = tuple(seeds) or TABLE_SEEDS
    if not set(seeds) <= set(TABLE_SEEDS):
        raise SystemExit(f"--seeds must be among the table seeds {TABLE_SEEDS}, got {seeds}")
    if stage == "sweep":
        return [(command(a, k, e, SWEEP_SEED, out, stage, time_steps=SWEEP_STEPS), out)
                for a, k in methods() for e in lr_grid(a)
                for out in [run_folder(runs_dir, stage, variant_name(a, k, e), SWEEP_SEED)]]
    chosen = sweep_choice(runs_dir)
    missing = [label(a, k) for a, k in methods() if (a, k) not in chosen]
    if missing:
        raise SystemExit(f"the lr sweep is not finished for {', '.join(missing)}: run the sweep stage first")
    if stage == "time_steps":
        return [(command(a, k, chosen[(a, k)]["lr_exp"], s, out, stage, time_steps=TABLE_STEPS), out)
                for a, k in methods() for s in seeds
                for out in [run_folder(runs_dir, stage, variant_name(a, k, chosen[(a, k)]["lr_exp"]), s)]]
    tbptt = [(a, k) for a, k in methods() if a == "tbptt"]
    if stage == "updates":
        return [(command(a, k, chosen[(a, k)]["lr_exp"], s, out, stage, updates=TABLE_STEPS,
                         eval_every=EVAL_EVERY * k), out)
                for a, k in tbptt for s in seeds
                for out in [run_folder(runs_dir, stage, variant_name(a, k, chosen[(a, k)]["lr_exp"]), s)]]
    budget = ok_cpu_time(runs_dir, chosen)
    return [(command(a, k, chosen[(a, k)]["lr_exp"], s, out, stage, cpu_seconds=budget), out)
            for a, k in tbptt for s in seeds
            for out in [run_folder(runs_dir, stage, variant_name(a, k, chosen[(a, k)]["lr_exp"]), s)]]


def ok_cpu_time(runs_dir: str, chosen: dict) -> float:
    """The mean CPU time of the OK runs of the time_steps stage (the wall-clock stage's budget)."""
    variant = variant_name("ok", None, chosen[("ok", None)]["lr_exp"])
    times = [load(run_folder(runs_dir, "time_steps", variant, s)) for s in TABLE_SEEDS]
    if any(t is None for t in times):
        raise SystemExit("the OK runs of the time_steps stage are not finished: run that stage first")
    return float(np.mean([s["cpu_time_s"] for s, _ in times]))


# ----------------------------------------------------------------------------------------------------- report
def _stage_rows(runs_dir: str, stage: str, chosen: dict) -> list[dict]:
    rows = []
    for a, k in methods():
        if stage in ("wall_clock", "updates") and a != "tbptt":
            continue
        variant = variant_name(a, k, chosen[(a, k)]["lr_exp"])
        for s in TABLE_SEEDS:
            loaded = load(run_folder(runs_dir, stage, variant, s))
            if loaded is not None:
                summary, metrics = loaded
                c = curve(metrics)
                rows.append({"method": label(a, k), "stage": stage, "seed": s, "T": int(c.curriculum_T.iloc[-1]),
                             "time_steps": int(summary["time_steps"]), "updates": int(summary["steps"]),
                             "wall_s": float(summary["wall_time_s"]), "cpu_s": float(summary["cpu_time_s"]),
                             "summary": summary, "curve": c})
    return rows


def report(runs_dir: str, out_dir: str) -> str | None:
    chosen = sweep_choice(runs_dir)
    if not chosen:
        return None
    sweep_rows = []
    for (a, k), entry in chosen.items():
        row = {"method": label(a, k)}
        for r in entry["results"]:
            edge = r["lr_exp"] in (min(lr_grid(a)), max(lr_grid(a)))
            mark = (" (kept, at the grid's edge)" if edge else " (kept)") if r["lr_exp"] == entry["lr_exp"] else ""
            row[f"lr 10^{r['lr_exp']:g}"] = f"T {r['T']} at {r['first']:,}{mark}" if r["status"] == "completed" \
                else r["status"]
        sweep_rows.append(row)
    stages = {stage: _stage_rows(runs_dir, stage, chosen) for stage in STAGES[1:] if len(chosen) == len(methods())}
    budget_rows, summaries = [], [r["summary"] for e in chosen.values() for r in e["results"]]
    for a, k in methods():
        name = label(a, k)
        if (a, k) not in chosen:
            continue
        row = {"method": name, "lr": f"10^{chosen[(a, k)]['lr_exp']:g}"}
        for stage, title in (("time_steps", "equal time steps (100k)"), ("updates", "equal updates (100k)"),
                             ("wall_clock", "equal time (CPU s)")):
            mine = [r for r in stages.get(stage, []) if r["method"] == name]
            summaries += [r["summary"] for r in mine]
            if not mine:  # n/a: the stage runs TBPTT only
                started = any(os.path.exists(os.path.join(run_folder(runs_dir, stage, variant_name(
                    a, k, chosen[(a, k)]["lr_exp"]), s), "last.pt")) for s in TABLE_SEEDS)
                row[f"T, {title}"] = row[f"{title}: time steps / updates / CPU s"] = (
                    "n/a" if stage != "time_steps" and a != "tbptt" else "not finished" if started else "not run")
                continue
            row[f"T, {title}"] = common._mean_std([r["T"] for r in mine])
            if stage != "time_steps" or a == "tbptt":
                row[f"{title}: time steps / updates / CPU s"] = (
                    f"{np.mean([r['time_steps'] for r in mine]):,.0f} / {np.mean([r['updates'] for r in mine]):,.0f}"
                    f" / {np.mean([r['cpu_s'] for r in mine]):,.0f}")
            else:
                row[f"{title}: time steps / updates / CPU s"] = (
                    f"{TABLE_STEPS:,} / {np.mean([r['updates'] for r in mine]):,.0f} / "
                    f"{np.mean([r['cpu_s'] for r in mine]):,.0f}")
        budget_rows.append(row)
    every = [r for rows in stages.values() for r in rows]
    if every:
        pd.concat([r["curve"].assign(method=r["method"], stage=r["stage"], seed=r["seed"]) for r in every],
                  ignore_index=True).to_csv(os.path.join(out_dir, "copy_fair.cpu.csv"), index=False)
    lines = ["# OK paper, copy task: online algorithms against truncated BPTT at equal budgets (cpu)", "",
             "**Scale cpu: RHN n = 32, B = 16, OK r = 8 (symmetric split), every other setting of the "
             "`online_rtrl/copy_*` presets; not the paper setting.**", "",
             "Measured: the curriculum T (string_memo) at the end of each run, mean ± sample std over the seeds "
             "finished (n in each cell; the design is seeds 0-2). "
             "Online algorithms (OK, KF-RTRL, UORO) update the weights every time step; TBPTT-k once per window of "
             "k steps, backpropagating through that window. Budgets: **equal time steps** = 100k time steps for "
             "everyone (TBPTT gets 100k / k updates); **equal updates** = TBPTT for OK's 100k updates (k x 100k "
             "time steps); **equal time** = TBPTT for the mean CPU time of the OK runs at equal time steps "
             "(`trainer.max_cpu_time_s`; every run has one thread, so its CPU time is the wall clock it would take "
             "alone on one core; runs went two at a time on the 2-core machine, so their wall times are longer). Each "
             "method runs at the learning rate its own sweep kept (below).", "",
             pd.DataFrame(budget_rows).to_markdown(index=False), "",
             f"## Learning-rate sweep (seed {SWEEP_SEED}, {SWEEP_STEPS:,} time steps)", "",
             "Adam lr per method; each cell: the curriculum T at the end and the time step at which it was first "
             "reached (train rows every 5k time steps). Kept: the largest T, then the earlier time step, then the "
             "lower final training loss.", "",
             pd.DataFrame(sweep_rows).fillna("—").to_markdown(index=False), "",  # —: not in that method's grid
             "Provenance", *_provenance(summaries), ""]
    if every:
        _figure(every, os.path.join(out_dir, "copy_fair.cpu.png"))
        lines.append("![T against time steps and against CPU time](copy_fair.cpu.png)")
    path = os.path.join(out_dir, "copy_fair.cpu.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _provenance(summaries: list[dict]) -> list[str]:
    shas = sorted({str(seg.get("git_sha"))[:10] + ("+dirty" if seg.get("git_dirty") else "")
                   for s in summaries for seg in (s.get("segments") or [s])})  # every process that trained
    return [f"- git SHA(s): {', '.join(shas)}", f"- runs: {len(summaries)}",
            f"- device(s): {', '.join(sorted({str(s.get('device_name')) for s in summaries}))}; CPU: "
            f"{', '.join(sorted({str(s.get('cpu_model')) for s in summaries}))}",
            f"- torch: {', '.join(sorted({str(s.get('torch_version')) for s in summaries}))}",
            f"- finished: {min(str(s.get('finished_at')) for s in summaries)} to "
            f"{max(str(s.get('finished_at')) for s in summaries)}",
            "- configs: each run's resolved `config.yaml` and `summary.json` in "
            "`<runs dir>/fair/<stage>/<method>_lr<exponent>/seed<k>/` (not committed); the curves are "
            "`copy_fair.cpu.csv`"]


def _figure(rows: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plot]'): no figure", file=sys.stderr)
        return
    names = [label(a, k) for a, k in methods()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        color = f"C{names.index(r['method'])}"
        first = r["seed"] == TABLE_SEEDS[0]
        if r["stage"] == "time_steps":
            axes[0].plot(r["curve"].time_steps, r["curve"].curriculum_T, color=color, alpha=0.8,
                         label=r["method"] if first else None)
        if r["stage"] in ("time_steps", "wall_clock"):
            marker = "o" if r["stage"] == "time_steps" else "s"
            axes[1].scatter(r["cpu_s"], r["T"], color=color, marker=marker, alpha=0.8,
                            label=f"{r['method']} ({'100k time steps' if marker == 'o' else 'OK CPU time'})"
                            if first else None)
    axes[0].set(xlabel="time steps", ylabel="curriculum T", title="equal time steps")
    axes[1].set(xscale="log", xlabel="CPU seconds (one thread)", ylabel="curriculum T at the end",
                title="T against compute")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=[*STAGES, "report"])
    parser.add_argument("--runs-dir", default=os.path.join(REPO, "runs", "online_rtrl"))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out", default=os.path.join(REPO, "results", "online_rtrl"))
    parser.add_argument("--dry-run", action="store_true", help="print the stage's commands and run nothing")
    parser.add_argument("--seeds", type=int, nargs="+", default=[],
                        help=f"run only these of the table seeds {TABLE_SEEDS} (default all)")
    args = parser.parse_args()
    if args.command == "report":
        os.makedirs(args.out, exist_ok=True)
        path = report(args.runs_dir, args.out)
        print(f"wrote {path}" if path else f"no finished sweep runs under {args.runs_dir}/fair/")
        return
    jobs = stage_jobs(args.command, args.runs_dir, tuple(args.seeds))
    if args.dry_run:
        for cmd, out in jobs:
            print(("reuse " if finished(out) else "") + " ".join(cmd[2:]))
        return
    run_all(jobs, args.jobs)


if __name__ == "__main__":
    main()
