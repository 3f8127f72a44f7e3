"""MomentumRNN matched-budget comparison: each run's test loss after every epoch beside the authors' logged curves at
the same epoch (their 5-seed min / median / max), with a one-line verdict per run.

    python scripts/momentum_curves.py [--runs-dir DIR] [--tier reduced] [--out results/momentum_rnn/mnist_curves]

Runs: ``<runs-dir>/<tier>/momentum_rnn/<preset>/seed_<k>/`` as ``make reproduce-tables TIER=<tier>
PAPER=momentum_rnn`` writes them (``$RNNREPRO_RUNS``, else runs/reproduce). Each must have run with
``trainer.report_best_test=true`` (the presets set it), which logs a ``test_each_eval`` row after every epoch.

Reference: ``shared/papers/curves/momentum_rnn_eval_curves.csv.gz`` (the authors' TensorBoard exports at
minhtannguyen/MomentumRNN@f185c54, result4plot_final/*.json). Their ``test_loss`` is nn.CrossEntropyLoss in nats, the
mean over test minibatches of 128, logged at 0-based epoch e after e+1 epochs; the harness's test loss is the mean over
the 10,000 test images, logged after epoch k, so harness epoch k is compared with their epoch k-1. A reference curve
is chosen by task, model (the variant), N and the variant's hyperparameters (mu, epsilon = s, mus = beta, restart).

Their protocol trains on all 60k images with no validation split: runs made with ``data.train_on_all=true`` compare
like with like; the table says which protocol each run used. Verdict per run: inside the authors' seed range at every
matched epoch, or at how many, with the epochs where it is above or below.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
CURVES = REPO.parent / "shared" / "papers" / "curves" / "momentum_rnn_eval_curves.csv.gz"
SOURCE = "[log: minhtannguyen/MomentumRNN@f185c54 result4plot_final/*.json]"
MODELS = {"lstm": "LSTM", "momentum": "MomentumLSTM", "adam": "AdamLSTM", "rmsprop": "RMSPropLSTM",
          "nesterov": "SRLSTM"}
TASKS = {"smnist": "mnist", "pmnist": "pmnist"}


def reference_for(config: dict, curves: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The authors' test_loss rows of the run's task, model, N and hyperparameters, and a label for them."""
    model, data = config["model"], config["data"]
    variant = str(model.get("variant", "lstm"))
    rows = curves[(curves.task == TASKS.get(str(data["name"]), "?")) & (curves.model == MODELS.get(variant, "?"))
                  & (curves.metric == "test_loss")]
    n = int(model["hidden_size"])
    size = rows.N.fillna(rows.N_from_notebook)
    rows = rows[size == n]
    wanted = {"mu": model.get("mu"), "epsilon": model.get("step"), "mus": model.get("beta"),
              "restart": model.get("restart")}
    used = {"momentum": ("mu", "epsilon"), "adam": ("mu", "epsilon", "mus"), "rmsprop": ("mu", "epsilon", "mus"),
            "nesterov": ("epsilon", "restart")}.get(variant, ())
    for key in used:
        rows = rows[pd.to_numeric(rows[key], errors="coerce").sub(float(wanted[key])).abs() < 1e-9]
    label = f"{MODELS.get(variant, variant)} N={n}" + "".join(f" {k}={wanted[k]}" for k in used)
    return rows, label


def load_run(run_dir: Path) -> dict | None:
    summary_path, metrics_path = run_dir / "summary.json", run_dir / "metrics.csv"
    if not metrics_path.exists():
        return None
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = pd.read_csv(metrics_path)
    test = metrics[metrics.split == "test_each_eval"][["epoch", "loss", "acc"]]
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return {"dir": run_dir, "config": config, "test": test, "summary": summary}


def verdict(ours: pd.Series, ref: pd.DataFrame) -> str:
    inside = (ours >= ref["min"]) & (ours <= ref["max"])
    if inside.all():
        return f"inside the authors' seed range at every matched epoch (1-{int(ours.index.max())})"
    above = [int(e) for e in ours.index[ours > ref["max"]]]
    below = [int(e) for e in ours.index[ours < ref["min"]]]
    parts = [f"inside at {int(inside.sum())} of {len(ours)} epochs"]
    if above:
        parts.append(f"above the authors' max (worse) at epochs {above}")
    if below:
        parts.append(f"below the authors' min (better) at epochs {below}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", default=os.environ.get("RNNREPRO_RUNS") or str(REPO / "runs" / "reproduce"))
    parser.add_argument("--tier", default="reduced")
    parser.add_argument("--curves", default=str(CURVES), help="the authors' curves (momentum_rnn_eval_curves.csv.gz)")
    parser.add_argument("--out", default=str(REPO / "results" / "momentum_rnn" / "mnist_curves"),
                        help="output stem: <stem>.md, .csv, .png")
    args = parser.parse_args(argv)
    if not Path(args.curves).exists():
        parser.error(f"{args.curves} not found: it is shared/papers/curves/momentum_rnn_eval_curves.csv.gz beside the "
                     "repository; pass --curves PATH")
    curves = pd.read_csv(args.curves)
    root = Path(args.runs_dir) / args.tier / "momentum_rnn"
    runs = [r for d in sorted(root.glob("*/seed_*")) if (r := load_run(d)) is not None and len(r["test"])]
    if not runs:
        parser.error(f"no finished epochs under {root}: run make reproduce-tables TIER={args.tier} PAPER=momentum_rnn")

    rows, lines, figure = [], [], []
    for run in runs:
        ref_rows, label = reference_for(run["config"], curves)
        if ref_rows.empty:
            lines.append(f"- `{run['dir'].parent.name}/{run['dir'].name}`: no reference curve for {label}")
            continue
        # their 0-based epoch e is after e+1 epochs
        ref = ref_rows.assign(after=ref_rows.epoch + 1).groupby("after").value.agg(["min", "median", "max", "count"])
        ours = run["test"].set_index("epoch")["loss"]
        ours = ours[ours.index.isin(ref.index)]
        matched = ref.loc[ours.index]
        protocol = "60k (code)" if run["config"]["data"].get("train_on_all") else "held-out val (honest)"
        seed = int(run["config"]["seed"])
        status = run["summary"].get("status", "running")
        for epoch, value in ours.items():
            r = matched.loc[epoch]
            rows.append({"experiment": run["config"]["meta"]["experiment"], "seed": seed, "epoch": int(epoch),
                         "test_loss": round(float(value), 4), "authors_min": round(float(r["min"]), 4),
                         "authors_median": round(float(r["median"]), 4), "authors_max": round(float(r["max"]), 4),
                         "authors_seeds": int(r["count"]), "inside": bool(r["min"] <= value <= r["max"]),
                         "reference": label, "protocol": protocol})
        figure.append((label, seed, ours, ref))
        segments = run["summary"].get("segments") or []
        sha = ", ".join(sorted({str(s.get("git_sha", "?"))[:10] + ("+dirty" if s.get("git_dirty") else "")
                                for s in segments})) or "?"
        lines.append(f"- **{run['config']['meta']['experiment']} seed {seed}** ({protocol}, {status}, {len(ours)} "
                     f"epochs, code {sha}): {verdict(ours, matched)}.")
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False)
    _plot(figure, out.with_suffix(".png"))

    first = runs[0]["summary"]
    md = [f"# MomentumRNN: test loss per epoch beside the authors' logged curves ({args.tier} tier)", "",
          "Rendered by `python scripts/momentum_curves.py` from runs actually executed "
          f"(`make reproduce-tables TIER={args.tier} PAPER=momentum_rnn`). Reference: the authors' per-epoch test loss "
          f"(nn.CrossEntropyLoss, nats), 5 seeds per setting, {SOURCE}; their epoch e (0-based) is after e+1 "
          "epochs. Not the paper's Table 1 (its values were not found): a matched-budget check of the training "
          "curves.", "",
          f"- device: {first.get('device_name', '?')}; torch {first.get('torch_version', '?')}; threads 1 per run",
          f"- figure: `{out.with_suffix('.png').name}`; every number: `{out.with_suffix('.csv').name}`", "",
          "## Verdicts", "", *lines, "", "## Per epoch", ""]
    for (experiment, seed), group in table.groupby(["experiment", "seed"], sort=False):
        md += [f"### {experiment}, seed {seed} ({group.reference.iloc[0]}; training set {group.protocol.iloc[0]})",
               "", "| epochs | test loss (ours) | authors min | median | max | inside |", "|---|---|---|---|---|---|"]
        md += [f"| {r.epoch} | {r.test_loss:.4f} | {r.authors_min:.4f} | {r.authors_median:.4f} | "
               f"{r.authors_max:.4f} | {'yes' if r.inside else 'no'} |" for r in group.itertuples()]
        md.append("")
    out.with_suffix(".md").write_text("\n".join(md))
    print(f"wrote {out.with_suffix('.md')}")
    return 0


def _plot(figure, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({label for label, *_ in figure})
    fig, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 4), squeeze=False)
    for ax, label in zip(axes[0], labels):
        parts = [(seed, ours, ref) for lab, seed, ours, ref in figure if lab == label]
        ref = parts[0][2]
        ref = ref[ref.index <= max(int(ours.index.max()) for _, ours, _ in parts) + 2]
        ax.fill_between(ref.index, ref["min"], ref["max"], alpha=0.25, label="authors: 5-seed range")
        ax.plot(ref.index, ref["median"], "k--", lw=1, label="authors: median")
        for seed, ours, _ in parts:
            ax.plot(ours.index, ours.values, "o-", ms=3, label=f"rnnrepro seed {seed}")
        ax.set(title=label, xlabel="epochs trained", ylabel="test loss (nats)")
        ax.axhline(math.log(10), color="grey", lw=0.5)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
