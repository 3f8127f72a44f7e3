"""Renders a hyperparameter search (a Hydra multirun) as a table ranked by the validation metric, with provenance.

    python run.py -m experiment=antisymmetric_rnn/table1_pmnist_antisym trainer.max_steps=1000 \\
        model.eps=0.1,1.0 optimizer.lr=0.1,1.0 hydra.sweep.dir=<sweep dir>
    python scripts/search_report.py <sweep dir> --out results/antisymmetric_rnn/search_pmnist --title "..."

Each job's varied settings come from its ``.hydra/overrides.yaml``: the keys whose values differ between jobs. The
ranking uses ``best_val`` only; test numbers are never shown, so a search cannot select on test. Writes
``<out>.md`` and ``<out>.csv``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import pandas as pd
import yaml


def load_jobs(sweep_dir: str) -> pd.DataFrame:
    rows = []
    for summary_path in sorted(glob.glob(os.path.join(sweep_dir, "**", "summary.json"), recursive=True)):
        job = os.path.dirname(summary_path)
        summary = json.load(open(summary_path))
        overrides_path = os.path.join(job, ".hydra", "overrides.yaml")
        overrides = yaml.safe_load(open(overrides_path)) if os.path.exists(overrides_path) else []
        settings = dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith("hydra"))
        rows.append({"settings": settings, "best_val": summary.get("best_val"), "best_step": summary.get("best_step"),
                     "steps": summary.get("steps"), "status": summary.get("status"), "metric": summary.get("metric"),
                     "mode": summary.get("mode"), "wall_time_s": summary.get("wall_time_s"),
                     "git": str(summary.get("git_sha"))[:10] + ("+dirty" if summary.get("git_dirty") else ""),
                     "device": summary.get("device_name"), "finished_at": summary.get("finished_at")})
    return pd.DataFrame(rows)


def render(jobs: pd.DataFrame, title: str, command: str) -> tuple[str, pd.DataFrame]:
    keys = sorted({k for s in jobs.settings for k in s})
    varied = [k for k in keys if len({s.get(k) for s in jobs.settings}) > 1]
    fixed = {k: jobs.settings.iloc[0].get(k) for k in keys if k not in varied and not k.startswith(("data.root",))}
    table = pd.DataFrame([{**{k: s.get(k) for k in varied}, "best val": v, "at step": b, "steps": n, "status": st,
                           "wall time (min)": round(float(w or 0) / 60, 1)}
                          for s, v, b, n, st, w in zip(jobs.settings, jobs.best_val, jobs.best_step, jobs.steps,
                                                       jobs.status, jobs.wall_time_s)])
    mode = jobs["mode"].iloc[0]
    table = table.sort_values("best val", ascending=(mode == "min"), na_position="last").reset_index(drop=True)
    best = table.iloc[0]
    better = "lower" if mode == "min" else "higher"
    lines = [f"# {title}", "", f"Ranked by the validation {jobs.metric.iloc[0]} ({better}"
             " is better; validation is carved from the training set). Test numbers are not shown: the search "
             "never looks at test.", "",
             "Settings common to every job: " + (", ".join(f"`{k}={v}`" for k, v in fixed.items()) or "none"), "",
             table.to_markdown(index=False, floatfmt=".4g"), "",
             "Selected: " + ", ".join(f"`{k}={best[k]}`" for k in varied) + f" (best val {best['best val']:.4g}).", "",
             "Provenance", "", f"- command: `{command}`",
             f"- git SHA(s): {', '.join(sorted(set(jobs.git)))}",
             f"- device(s): {', '.join(sorted({str(d) for d in jobs.device}))}",
             f"- finished: {min(map(str, jobs.finished_at))} to {max(map(str, jobs.finished_at))}", ""]
    return "\n".join(lines), table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir")
    parser.add_argument("--out", required=True, help="output path without extension (writes .md and .csv)")
    parser.add_argument("--title", default="Hyperparameter search")
    parser.add_argument("--command", default="see the sweep's multirun.yaml",
                        help="the multirun command line, quoted in the report")
    args = parser.parse_args(argv)
    jobs = load_jobs(args.sweep_dir)
    if jobs.empty:
        print(f"no summary.json under {args.sweep_dir}: run the search (python run.py -m ...) first", file=sys.stderr)
        return 2
    text, table = render(jobs, args.title, args.command)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    table.to_csv(args.out + ".csv", index=False)
    print(f"wrote {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
