"""Paper tables from executed runs: measured mean ± std over seeds beside the reported value.

Reported values live in ``results/expected/<paper>.csv`` (one row per table cell: the preset that reproduces it, the
metric and unit, the reported value, whether it comes from the paper itself or from a figure / log, and the source).
Cells whose value the spec marks "not found" keep an empty ``reported``.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pandas as pd

from rnnrepro.results.summary import read_summary

TIER_LABELS = {
    "smoke": "smoke: pipeline check, not a reproduction (tiny budgets; numbers say nothing about the papers)",
    "reduced": "reduced: a stated smaller budget (each preset's meta.reduced, in the notes), not the paper's; not a "
               "reproduction",
    "full": "full: the papers' budgets",
}


def expected_path(results_dir: str, paper: str) -> str:
    return os.path.join(results_dir, "expected", f"{paper}.csv")


def list_papers(results_dir: str) -> list[str]:
    return sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(results_dir, "expected", "*.csv")))


def load_expected(results_dir: str, paper: str) -> pd.DataFrame:
    frame = pd.read_csv(expected_path(results_dir, paper), dtype={"reported": "float64"}, keep_default_na=True)
    required = {"paper", "table", "column", "row", "experiment", "metric", "unit", "reported", "reported_kind",
                "source"}
    missing = required - set(frame.columns)
    if missing:
        raise ValueError(f"{expected_path(results_dir, paper)} lacks columns {sorted(missing)}")
    return frame


def load_summaries(run_dirs: list[str]) -> list[dict]:
    out = []
    for d in run_dirs:
        path = os.path.join(d, "summary.json")
        if os.path.exists(path):
            out.append(read_summary(path))
    return out


def _scale(unit: str) -> float:
    return 100.0 if unit == "%" else 1.0


def _mean_std(values: list[float], digits: int) -> tuple[float | None, float | None, str]:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return None, None, "—"
    mean = float(np.mean(vals))
    if len(vals) == 1:  # a sample std needs two seeds: say so rather than print "± 0"
        return mean, None, f"{mean:.{digits}f} (one seed)"
    std = float(np.std(vals, ddof=1))
    return mean, std, f"{mean:.{digits}f} ± {std:.{digits}f}"


def _describe_data(data: dict | None) -> str:
    if not data:
        return "?"
    sizes = data.get("sizes", {})
    split = "/".join(str(sizes.get(k, "?")) for k in ("train", "val", "test"))
    perm = data.get("permutation_sha1")
    return f"{data.get('name')} ({split} train/val/test" + (f", permutation {perm[:10]})" if perm else ")")


# What a table cell measures (column ``measured`` of results/expected/<paper>.csv; empty means "test"): the test
# metric at the best-validation checkpoint and at the end; the validation metric (when the paper reports validation
# numbers, e.g. the OK paper's CHAR-PTB logs), or a training-side value such as the curriculum T reached.
MEASURED_LABELS = {"test": "test at best val / test last", "val": "best validation / last validation",
                   "train_extras.curriculum_T": "curriculum T reached at the end of training"}


def _measured_value(summary: dict, measured: str, which: str) -> float | None:
    if measured == "test":
        return summary.get("test_at_best_val" if which == "best" else "test_last")
    if measured == "val":
        return summary.get("best_val" if which == "best" else "val_last")
    if measured.startswith("train_extras."):
        return (summary.get("train_extras") or {}).get(measured.split(".", 1)[1])
    raise ValueError(f"results/expected: unknown measured value {measured!r}; use test, val or train_extras.<key>")


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale


def summarise_cell(expected: pd.Series, summaries: list[dict], planned: int | None = None) -> dict:
    """One table row: measured statistics of the finished runs of one preset, and the reported value. ``planned``
    runs that left no summary (e.g. missing data) are counted in ``notes``."""
    scale = _scale(str(expected["unit"]))
    digits = 2 if scale == 100.0 else 3
    ok = [s for s in summaries if s.get("status") == "completed"]
    measured = expected.get("measured")
    measured = "test" if not isinstance(measured, str) or not measured else measured
    best = [_scaled(_measured_value(s, measured, "best"), scale) for s in ok]
    last = [_scaled(_measured_value(s, measured, "last"), scale) for s in ok]
    mean_best, std_best, text_best = _mean_std(best, digits)
    _, _, text_last = _mean_std(last, digits)
    protocol = expected.get("protocol")
    best_test_protocol = isinstance(protocol, str) and protocol == "best_test"
    _, _, text_best_test = _mean_std([_scaled(s.get("best_test_over_evals"), scale) for s in ok], digits)
    notes = [] if measured == "test" else [f"measured: {MEASURED_LABELS.get(measured, measured)}"]
    if len(summaries) > len(ok):
        notes.append(f"{len(summaries) - len(ok)} diverged/failed")
    if planned == 0:
        notes.append("not run here (see the preset's header)")
    elif planned is not None and planned > len(summaries):
        notes.append(f"{planned - len(summaries)} of {planned} runs left no summary (see their console.log)")
    reported = expected["reported"]
    has_reported = reported is not None and np.isfinite(reported)
    return {
        "column": expected["column"], "row": expected["row"],
        "test_at_best_val": text_best, "test_last": text_last, "seeds": len(ok),
        BEST_TEST_COLUMN: text_best_test if best_test_protocol else "",
        "failed_or_diverged": len(summaries) - len(ok),
        "reported": f"{reported:g}" if has_reported else "not found",
        "reported_kind": expected["reported_kind"],
        EXTERNAL_COLUMN: external if isinstance(external := expected.get("external"), str) else "",
        "diff": f"{mean_best - reported:+.{digits}f}" if (has_reported and mean_best is not None) else "—",
        "unit": expected["unit"], "notes": "; ".join(notes),
        "mean_test_at_best_val": mean_best, "std_test_at_best_val": std_best,
        "steps": int(np.median([s["steps"] for s in ok])) if ok else None,
        "wall_time_s": round(float(np.mean([s["wall_time_s"] for s in ok])), 1) if ok else None,
        "experiment": expected["experiment"],
        "git_sha": "; ".join(sorted({v for s in summaries for v in code_versions(s)})) or "—",
        "device": "; ".join(sorted({str(s.get("device_name", "?")) for s in summaries})) or "—",
        "data": "; ".join(sorted({_describe_data(s.get("data")) for s in summaries})) or "—",
        "finished_at": max((str(s.get("finished_at")) for s in summaries), default="—"),
        "source": expected["source"],
    }


def code_versions(summary: dict) -> list[str]:
    """The SHAs (``+dirty`` for an unclean tree) that trained a run: one per process where the run was resumed."""
    def label(entry: dict) -> str:
        return str(entry.get("git_sha", "?"))[:10] + ("+dirty" if entry.get("git_dirty") else "")

    segments = summary.get("segments") or [summary]
    versions = [label(entry) for entry in segments]
    if segments[0].get("from_step", 0) > 0:  # resumed from a checkpoint written before segments were recorded
        versions.append(f"unrecorded before step {segments[0]['from_step']}")
    return versions


MARKDOWN_COLUMNS = ["column", "row", "test_at_best_val", "test_last", "seeds", "reported", "reported_kind", "diff",
                    "steps", "experiment", "notes"]
# Shown only in tables holding a cell whose reported value comes from a code that selects on the test set
# (results/expected column ``protocol`` = best_test; runs need trainer.report_best_test=true). Never the headline.
BEST_TEST_COLUMN = "best test (paper-code protocol)"
# Shown only in tables holding a cell with a value in the optional results/expected column ``external``: a published
# number of another paper for the same task and metric, for orientation where the paper's own value is not found.
EXTERNAL_COLUMN = "external reference (not this paper)"


def render_markdown(paper: str, table: str, tier: str, rows: pd.DataFrame, command: str) -> str:
    def unique(column: str) -> list[str]:  # over the cells that ran ("—" marks a cell without runs)
        return sorted({s for cell in rows[column] for s in str(cell).split("; ")} - {"—"}) or ["—"]

    sources = sorted(set(rows["source"]))
    columns = list(MARKDOWN_COLUMNS)
    compat = BEST_TEST_COLUMN in rows and rows[BEST_TEST_COLUMN].astype(str).str.len().gt(0).any()
    if compat:
        columns.insert(columns.index("seeds"), BEST_TEST_COLUMN)
    external = EXTERNAL_COLUMN in rows and rows[EXTERNAL_COLUMN].astype(str).str.len().gt(0).any()
    if external:
        columns.insert(columns.index("diff"), EXTERNAL_COLUMN)
    lines = [
        f"# {paper} / {table}",
        "",
        f"**Tier — {TIER_LABELS[tier]}**",
        "",
        "Measured: test metric at the best-validation checkpoint (validation: the dataset's own validation split, or "
        "one carved from the training set where the dataset has none) and at the "
        "end of training, mean ± sample std over seeds. `reported` is the published value; `reported_kind` says "
        "whether it comes from the paper's own table, was read off a figure / log, or is an external reference (not a "
        "paper table). `diff` = measured (test at "
        "best val) − reported."
        + (f" `{BEST_TEST_COLUMN}`: the best test value over all evaluations, the selection the paper's code made "
           "on its test set; shown for comparison with such reported numbers only, never used to select."
           if compat else "")
        + (f" `{EXTERNAL_COLUMN}`: a published number of another paper on the same task and metric, for orientation "
           "only; it is not this paper's result and `diff` ignores it." if external else ""),
        "",
        rows[columns].to_markdown(index=False),
        "",
        "Provenance",
        f"- command: `{command}`",
        f"- git SHA(s): {', '.join(unique('git_sha'))}",
        f"- device(s): {'; '.join(unique('device'))}",
        f"- data: {'; '.join(unique('data'))}",
        f"- last run finished: {max([t for t in rows['finished_at'] if t != '—'], default='—')}",
        "- wall time per run (mean over seeds): " + "; ".join(
            f"{e} {w / 60:.1f} min" for e, w in rows.drop_duplicates("experiment")[["experiment", "wall_time_s"]]
            .itertuples(index=False) if w == w and w is not None) + " (no `+dirty` after a SHA: a clean tree)",
        "- configs: `conf/experiment/<experiment>.yaml`; each run's resolved `config.yaml` and `summary.json` "
        "sit in its run directory",
        "- reported values: " + "; ".join(sources),
        "",
    ]
    return "\n".join(lines)


def load_curves(runs: list[tuple[str, str]]) -> pd.DataFrame:
    """The validation curve of each (row label, run directory): one row per evaluation, read from its metrics.csv,
    with the metric the run selects on (summary.json ``metric``)."""
    frames = []
    for row, run_dir in runs:
        metrics, summary = os.path.join(run_dir, "metrics.csv"), os.path.join(run_dir, "summary.json")
        if not (os.path.exists(metrics) and os.path.exists(summary)):
            continue
        info = read_summary(summary)
        metric = str(info.get("metric"))
        frame = pd.read_csv(metrics)
        if metric not in frame.columns or "split" not in frame.columns:
            continue
        val = frame[frame.split == "val"]
        frames.append(pd.DataFrame({"row": row, "seed": info.get("seed"), "step": val.step, "epoch": val.epoch,
                                    "metric": metric, "val": val[metric]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["row", "seed", "step", "epoch", "metric", "val"])


def write_curves(out_dir: str, stem: str, curves: pd.DataFrame) -> str | None:
    """<stem>.curves.csv and, with matplotlib, <stem>.curves.png: validation metric against optimizer steps, one
    line per row and seed. Returns the PNG's file name when one was drawn."""
    curves.to_csv(os.path.join(out_dir, f"{stem}.curves.csv"), index=False)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, ((row, seed), c) in enumerate(curves.groupby(["row", "seed"], sort=False)):
        ax.plot(c.step, c.val, marker=".", color=f"C{i % 10}", label=f"{row} (seed {seed})")
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("validation " + ", ".join(sorted(set(curves.metric))))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"{stem}.curves.png"), dpi=110)
    plt.close(fig)
    return f"{stem}.curves.png"


def write_table(results_dir: str, paper: str, table: str, tier: str, rows: pd.DataFrame, command: str,
                curves: pd.DataFrame | None = None) -> str:
    """<table>[.<tier>].{md,csv}; with ``curves`` (the runs' validation curves, load_curves) also
    <stem>.curves.{csv,png}, linked from the markdown."""
    out_dir = os.path.join(results_dir, paper)
    os.makedirs(out_dir, exist_ok=True)
    stem = table if tier == "full" else f"{table}.{tier}"
    rows.assign(tier=tier).to_csv(os.path.join(out_dir, f"{stem}.csv"), index=False)
    text = render_markdown(paper, table, tier, rows, command)
    if curves is not None and len(curves):
        png = write_curves(out_dir, stem, curves)
        text += ("\nLearning curves: validation metric against optimizer steps, every evaluation of each run above "
                 f"(`{stem}.curves.csv`).\n" + (f"\n![learning curves]({png})\n" if png else ""))
    path = os.path.join(out_dir, f"{stem}.md")
    with open(path, "w") as f:
        f.write(text)
    return path
