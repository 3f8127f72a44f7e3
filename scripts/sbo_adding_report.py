"""Runs and renders SBO-RNN's adding-task convergence figure (spec sbo_rnn section 6, figure (a)): training MSE
against optimizer steps at T = 100 and 500 for the six SBO-RNN variants and the vanilla RNN / LSTM baselines, from
runs actually executed, with a verdict on each fact read off the paper's figure.

    python scripts/sbo_adding_report.py run                       # every curve at the presets' 25,000 steps
    python scripts/sbo_adding_report.py run --T 100 --variants dense_sgd dense_snag sparse_sgd rnn lstm
    python scripts/sbo_adding_report.py run --steps 5000 -- trainer.num_threads=1   # Hydra overrides after --
    python scripts/sbo_adding_report.py report                    # results/sbo_rnn/adding_figure_t<T>.{md,csv,png}

``run`` launches ``run.py experiment=sbo_rnn/adding_t<T>_<variant>`` into
``$RNNREPRO_RUNS/sbo_adding/adding_t<T>_<variant>/seed_0`` (default ``runs/``): a finished run is reused, an
unfinished one resumed (``resume=auto``), one with another step budget refused (its directory is kept). The train
rows of metrics.csv hold the mean training MSE over each 250-step interval; the figure plots them.

``report`` writes one figure, table and verdict list per T that has finished runs (``adding_figure_t<T>.*``), so a
later session that runs only T = 500 leaves the committed T = 100 results as they are. A fact is "undecided" when a
curve has not reached the criterion and its run was shorter than the criterion allows (a reduced budget).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("dense_sgd", "dense_shb", "dense_snag", "sparse_sgd", "sparse_shb", "sparse_snag", "rnn", "lstm")
LABELS = {v: v.replace("_", " ").replace("sgd", "SGD").replace("shb", "SHB").replace("snag", "SNAG") for v in VARIANTS}
LABELS.update({"rnn": "vanilla RNN", "lstm": "LSTM"})
PRESET_STEPS = 25_000
# "about 0 MSE" read as below this (harness choice; predicting the constant 1 scores about 0.167)
SOLVED_MSE = 0.01
FIGURE = "[figure: Zhang-VISLab/SBO-RNN-...@a259b96 pic/har2performance.jpg]"
# The facts read off the paper's figure (spec section 6) and the steps they name (x-axis unit 5,000 steps).
FACTS = [
    ("dense SGD / SHB / SNAG reach about 0 MSE by about 1.5k steps", ("dense_sgd", "dense_shb", "dense_snag"), 1500),
    ("sparse SNAG and SHB reach about 0 by about 4.5k steps", ("sparse_snag", "sparse_shb"), 4500),
    ("sparse SGD reaches about 0 by 6-7k steps", ("sparse_sgd",), 7000),
]


def runs_root() -> str:
    return os.path.join(os.environ.get("RNNREPRO_RUNS", os.path.join(REPO, "runs")), "sbo_adding")


def run_dir(T: int, variant: str) -> str:
    return os.path.join(runs_root(), f"adding_t{T}_{variant}", "seed_0")


def _finished_budget(out: str) -> int | None:
    """max_steps of the run that finished (or diverged) in ``out``; None if nothing finished there."""
    summary = os.path.join(out, "summary.json")
    if not os.path.exists(summary) or json.load(open(summary)).get("status") not in ("completed", "diverged"):
        return None
    from omegaconf import OmegaConf

    return int(OmegaConf.load(os.path.join(out, "config.yaml")).trainer.max_steps)


def launch(args: argparse.Namespace) -> None:
    for T in args.T:
        for variant in args.variants:
            out = run_dir(T, variant)
            budget = _finished_budget(out)
            if budget == args.steps:
                print(f"reuse {out}")
                continue
            if budget is not None:
                sys.exit(f"{out} finished with trainer.max_steps={budget}, not {args.steps}: it is kept. Pass "
                         f"--steps {budget}, or set RNNREPRO_RUNS to another folder")
            cmd = [sys.executable, os.path.join(REPO, "run.py"), f"experiment=sbo_rnn/adding_t{T}_{variant}",
                   f"trainer.max_steps={args.steps}", "seed=0", f"hydra.run.dir={out}", "trainer.progress_bar=false",
                   *(["meta.tier=reduced"] if args.steps < PRESET_STEPS else []), *args.extra]
            if os.path.exists(os.path.join(out, "last.pt")):
                cmd.append("resume=auto")
            os.makedirs(out, exist_ok=True)
            print(" ".join(cmd[1:]), flush=True)
            with open(os.path.join(out, "stdout.log"), "a") as log:
                subprocess.run(cmd, check=False, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def load_curves() -> tuple[pd.DataFrame, list[dict]]:
    frames, summaries = [], []
    for T in (100, 500):
        for variant in VARIANTS:
            folder = run_dir(T, variant)
            metrics, summary = os.path.join(folder, "metrics.csv"), os.path.join(folder, "summary.json")
            if not (os.path.exists(metrics) and os.path.exists(summary)):
                continue
            rows = pd.read_csv(metrics)
            rows = rows[rows.split == "train"][["step", "loss"]].rename(columns={"loss": "train_mse"})
            frames.append(rows.assign(T=T, variant=variant))
            summaries.append({**json.load(open(summary)), "T": T, "variant": variant})
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["step", "train_mse", "T", "variant"])
    return curves, summaries


def first_solved(curve: pd.DataFrame) -> int | None:
    """The first logged step whose interval-mean training MSE is below SOLVED_MSE."""
    hit = curve[curve.train_mse < SOLVED_MSE]
    return int(hit.step.iloc[0]) if len(hit) else None


def verdicts(curves: pd.DataFrame, T: int) -> list[str]:
    lines = []
    for fact, variants, steps in FACTS:
        found = {v: curves[(curves["T"] == T) & (curves.variant == v)] for v in variants}
        found = {v: c for v, c in found.items() if len(c)}
        if not found:
            lines.append(f"- *{fact}*: not run at T = {T}.")
            continue
        reached = {v: first_solved(c) for v, c in found.items()}
        run = {v: int(c.step.max()) for v, c in found.items()}
        parts = [f"{LABELS[v]} at {s:,} steps" if s else f"{LABELS[v]} never ({run[v]:,} steps run)"
                 for v, s in reached.items()]
        limit = 2 * steps
        if all(s is not None and s <= limit for s in reached.values()):
            verdict = "holds here"
        elif any((s is not None and s > limit) or (s is None and run[v] >= limit) for v, s in reached.items()):
            verdict = "does not hold here"
        else:  # some curve is still short of the criterion and its run stopped before the limit
            verdict = f"undecided at this budget (a run stopped before {limit:,} steps without reaching it)"
        lines.append(f"- *{fact}*: {verdict} (MSE < {SOLVED_MSE} first reached: {'; '.join(parts)}; the "
                     f"criterion allows up to twice the figure's {steps:,} steps).")
    rnn = curves[(curves["T"] == T) & (curves.variant == "rnn")]
    if len(rnn):
        late = rnn[rnn.step > 1000] if (rnn.step > 1000).any() else rnn
        low, high = float(late.train_mse.min()), float(late.train_mse.max())
        ok = low >= 0.1
        lines.append(f"- *the vanilla RNN stays at about 0.15-0.2 MSE*: {'holds' if ok else 'does not hold'} here "
                     f"(its interval-mean training MSE after 1k steps lies in [{low:.3f}, {high:.3f}]; the criterion "
                     "is that it never falls below 0.1).")
    else:
        lines.append(f"- *the vanilla RNN stays at about 0.15-0.2 MSE*: not run at T = {T}.")
    return lines


def figure(curves: pd.DataFrame, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[plot]'): no figure", file=sys.stderr)
        return
    Ts = sorted(curves["T"].unique())
    fig, axes = plt.subplots(1, len(Ts), figsize=(6 * len(Ts), 4), squeeze=False)
    for ax, T in zip(axes[0], Ts):
        for i, variant in enumerate(VARIANTS):
            c = curves[(curves["T"] == T) & (curves.variant == variant)]
            if len(c):
                style = "--" if variant.startswith("sparse") else ":" if variant in ("rnn", "lstm") else "-"
                ax.plot(c.step, c.train_mse, style, color=f"C{i}", label=LABELS[variant])
        ax.set_title(f"adding task, T = {T}")
        ax.set_xlabel("optimizer steps")
        ax.set_ylabel("training MSE (mean over each 250 steps)")
        ax.set_ylim(0, 0.3)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(out_dir: str) -> list[str]:
    curves, summaries = load_curves()
    if not summaries:
        print(f"no finished runs under {runs_root()}: run `python scripts/sbo_adding_report.py run` first",
              file=sys.stderr)
        return []
    os.makedirs(out_dir, exist_ok=True)
    return [report_T(out_dir, T, curves[curves["T"] == T], [s for s in summaries if s["T"] == T])
            for T in sorted({int(s["T"]) for s in summaries})]


def report_T(out_dir: str, T: int, curves: pd.DataFrame, summaries: list[dict]) -> str:
    """adding_figure_t<T>.{md,csv,png} from the finished runs at this T."""
    name = f"adding_figure_t{T}"
    base = os.path.join(out_dir, name)
    curves.to_csv(base + ".csv", index=False)
    figure(curves, base + ".png")
    rows = []
    for s in summaries:
        c = curves[curves.variant == s["variant"]]
        solved = first_solved(c)
        rows.append({"curve": LABELS[s["variant"]], "steps run": s.get("steps"),
                     "budget": "full (25,000)" if s.get("steps") == PRESET_STEPS else f"reduced: {s.get('steps'):,} "
                     f"of {PRESET_STEPS:,}", f"first step with MSE < {SOLVED_MSE}": solved if solved else "never",
                     "final train MSE": f"{float(c.train_mse.iloc[-1]):.2g}" if len(c) else None,
                     "val MSE (best)": f"{float(s.get('best_val', np.nan)):.2g}",
                     "wall time (min)": round(float(s.get("wall_time_s", 0)) / 60, 1), "status": s.get("status")})
    shas = sorted({str(s.get("git_sha"))[:10] + ("+dirty" if s.get("git_dirty") else "") for s in summaries})
    reduced = any(s.get("steps") != PRESET_STEPS for s in summaries)
    lines = [f"# SBO-RNN adding-task convergence at T = {T} (figure (a) of the paper)", "",
             f"Training MSE against optimizer steps, from the runs listed below (`{os.path.basename(__file__)}`). "
             f"The paper's figure has no numbers: its facts were read by eye ({FIGURE}, spec section 6) and each "
             "is checked below. Settings: the `sbo_rnn/adding_t<T>_<variant>` presets (their headers say what is "
             "sourced and what is a harness choice).", ""]
    if reduced:
        lines += ["**Some runs used a reduced budget** (the table's budget column). A reduced SBO-RNN run's linear "
                  "weight-decay schedule spans its own steps, so it decays faster than the preset's 25,000-step one.",
                  ""]
    lines += [f"![curves]({name}.png)", "", "## Facts read off the paper's figure", "", *verdicts(curves, T), "",
              "## Runs", "", pd.DataFrame(rows).sort_values("curve").to_markdown(index=False), "",
              "Provenance", "", f"- git SHA(s): {', '.join(shas)}",
              f"- device(s): {', '.join(sorted({str(s.get('device_name')) for s in summaries}))}",
              f"- torch: {', '.join(sorted({str(s.get('torch_version')) for s in summaries}))}",
              f"- finished: {min(str(s.get('finished_at')) for s in summaries)} to "
              f"{max(str(s.get('finished_at')) for s in summaries)}",
              "- configs: each run's `config.yaml` and `summary.json` under `$RNNREPRO_RUNS/sbo_adding/` (not "
              f"committed); the curves are `{name}.csv` beside this file", ""]
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines))
    return base + ".md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--T", nargs="+", type=int, choices=[100, 500], default=[100, 500])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=PRESET_STEPS, help="optimizer steps per run (preset: 25,000)")
    parser.add_argument("--out", default=os.path.join(REPO, "results", "sbo_rnn"))
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.extra = argv[split + 1 :]
    if args.command == "run":
        if args.steps < 1:
            parser.error(f"--steps must be >= 1, got {args.steps}")
        launch(args)
    else:
        for path in report(args.out):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
