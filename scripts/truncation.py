"""The truncation experiment and the stability probe on trained runs (config: conf/truncation.yaml).

    python scripts/truncation.py 'runs=[<run dir>,...]' 'ks=[1,2,4,8,16,32,64]' [out=...]

For each run (its config.yaml and best.pt) and each k: the k-truncated model against the recurrent one on the same
weights, as the gap in the task metric and as the distance between their predictions (sigmoid probabilities for
multi-label tasks, softmax for classification, the raw output for regression), with the fitted geometric rate of
the mean distance in k. Writes <out>.csv, <out>.md and <out>.png, with provenance. With ``trained``, also compares
runs trained with model.truncation=k against the recurrent run of the same preset and seed (<out>_trained.csv).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
from pathlib import Path

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rnnrepro.data import build_datamodule  # noqa: E402
from rnnrepro.models import build_model  # noqa: E402
from rnnrepro.results.summary import cpu_model, git_info  # noqa: E402
from rnnrepro.stability import geometric_rate, stability_probe  # noqa: E402
from rnnrepro.tasks import TaskType, build_task  # noqa: E402
from rnnrepro.tasks.base import Meter  # noqa: E402
from rnnrepro.training import checkpoint  # noqa: E402


def load_run(run_dir: str, data_root: str | None):
    """(config, data module, model with the best-validation weights, summary) of a finished run."""
    path = Path(run_dir)
    for name in ("config.yaml", "best.pt"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path / name} is missing: {run_dir} is not a finished run.py run directory")
    cfg = OmegaConf.load(path / "config.yaml")
    if data_root:
        cfg.data.root = data_root
    cfg.data.download = False
    data = build_datamodule(cfg.data, int(cfg.seed))
    data.setup()
    kwargs = {"metric": data.spec.metric} if data.spec.task in (TaskType.classify_each, TaskType.tag) else {}
    if data.spec.task == TaskType.tag:
        kwargs["labels"] = data.spec.labels
    task = build_task(data.spec.task, **kwargs)
    model = build_model(cfg.model, data.spec, task)
    model.load_state_dict(checkpoint.load(str(path / "best.pt"))["model"])
    model.eval()
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").exists() else {}
    return cfg, data, model, summary


def predictions(task, out: torch.Tensor) -> torch.Tensor:
    if task.type == TaskType.multilabel_each:
        return torch.sigmoid(out)
    if task.type in (TaskType.regression, TaskType.regression_each):
        return out
    return out.softmax(-1)


def step_mask(out: torch.Tensor, batch: dict) -> torch.Tensor:
    mask = batch.get("mask")
    if mask is not None:
        return mask
    return torch.ones(out.shape[:-1], dtype=torch.bool)


@torch.no_grad()
def truncation_gaps(model, data, ks: list[int], split: str, limit: int | None) -> list[dict]:
    """Per k: the metric of the truncated model, and the mean / max prediction distance to the recurrent model."""
    task = model.task
    batches = [b for i, b in enumerate(data.eval_batches(split)) if limit is None or i < limit]
    model.truncation = None
    full_meter, full_outputs = Meter(), []
    for batch in batches:
        out, _ = model(batch["x"])
        task.update(full_meter, out, batch)
        full_outputs.append(out)
    full_metric = task.compute(full_meter)[task.metric]
    rows = []
    for k in ks:
        model.truncation = int(k)
        meter, total, count, worst = Meter(), 0.0, 0, 0.0
        for batch, full in zip(batches, full_outputs):
            out, _ = model(batch["x"])
            task.update(meter, out, batch)
            dist = (predictions(task, out) - predictions(task, full)).norm(dim=-1)
            if task.sequence_output:
                dist = dist[step_mask(out, batch)]
            total, count, worst = total + float(dist.sum()), count + dist.numel(), max(worst, float(dist.max()))
        metric = task.compute(meter)[task.metric]
        rows.append({"k": int(k), "metric": task.metric, "recurrent": full_metric, "truncated": metric,
                     "metric_gap": metric - full_metric, "distance_mean": total / max(count, 1),
                     "distance_max": worst})
    model.truncation = None
    return rows


def recurrent_weight_norms(model) -> dict:
    """sigma_max of each recurrent matrix (RNN: the S6 constraint), and for the LSTM the induced l1 / l-inf norms of
    its gate blocks (S7)."""
    from rnnrepro.cells.stable import induced_norm

    cell, out = model.cell, {}
    rnn = getattr(cell, "rnn", None)
    if rnn is None:
        return out
    w = rnn.weight_hh_l0.detach()
    out["sigma_max_w_hh"] = float(torch.linalg.matrix_norm(w, 2))
    if isinstance(rnn, torch.nn.LSTM):
        n = cell.hidden_size
        for k, gate in enumerate("ifzo"):
            block = w[k * n : (k + 1) * n]
            out[f"linf_w_{gate}"], out[f"l1_w_{gate}"] = induced_norm(block, "linf"), induced_norm(block, "l1")
    return out


def weight_distance(a, b) -> float:
    """||w_a - w_b|| / ||w_b|| over all parameters (buffers such as the power iteration's vector excluded)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    num = sum(float((pa[k].detach().double() - p.detach().double()).pow(2).sum()) for k, p in pb.items())
    den = sum(float(p.detach().double().pow(2).sum()) for p in pb.values())
    return math.sqrt(num / max(den, 1e-30))


def plot(frame: pd.DataFrame, rates: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, group in frame.groupby("label", sort=False):
        rate = rates.get(label, float("nan"))
        ax.semilogy(group["k"], group["distance_mean"].clip(lower=1e-12), "o-",
                    label=f"{label} (fitted rate {rate:.3f} per step)")
    ax.set_xlabel("k (inputs the truncated model sees)")
    ax.set_ylabel("mean ||p_recurrent - p_truncated||_2")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _label(cfg, run_dir: str) -> str:
    row = cfg.meta.get("row") or os.path.basename(os.path.dirname(run_dir))
    return f"{row} ({cfg.data.name}, seed {cfg.seed})"


def _where(run_dir: str) -> str:
    """The run directory without machine paths: relative to $RNNREPRO_RUNS when under it, else its last 3 parts."""
    path, root = Path(run_dir).resolve(), os.environ.get("RNNREPRO_RUNS")
    if root and path.is_relative_to(Path(root).resolve()):
        return "$RNNREPRO_RUNS/" + str(path.relative_to(Path(root).resolve()))
    return ".../" + "/".join(path.parts[-3:])


def _run_meta(label: str, run_dir: str, summary: dict) -> dict:
    budget = f", {summary.get('steps')} steps" if summary.get("steps") else ""
    return {"run": label, "where": f"{_where(run_dir)}{budget}",
            "git_sha": summary.get("git_sha"), "git_dirty": summary.get("git_dirty"),
            "device": summary.get("device_name"), "finished_at": summary.get("finished_at")}


@hydra.main(version_base="1.3", config_path=str(REPO / "conf"), config_name="truncation")
def main(cfg: DictConfig) -> None:
    if not cfg.runs and not cfg.trained:
        raise SystemExit("truncation: no runs given. Pass 'runs=[<run dir>,...]' (each with config.yaml and best.pt)")
    ks = sorted({int(k) for k in cfg.ks})
    if not ks or ks[0] < 1:
        raise SystemExit(f"truncation: ks must be integers >= 1, got {list(cfg.ks)}")
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    rows, probes, rates, runs_meta = [], [], {}, []
    for run_dir in cfg.runs:
        run_cfg, data, model, summary = load_run(str(run_dir), cfg.data_root)
        label = _label(run_cfg, str(run_dir))
        gaps = truncation_gaps(model, data, ks, str(cfg.split), cfg.limit_batches)
        rates[label] = geometric_rate([g["k"] for g in gaps], [g["distance_mean"] for g in gaps])
        for gap in gaps:
            rows.append({"label": label, "experiment": run_cfg.meta.experiment, **gap})
        probe = {}
        if cfg.probe and getattr(model.cell, "num_layers", 1) == 1:
            batches = (b for i, b in enumerate(data.eval_batches(str(cfg.split)))
                       if cfg.limit_batches is None or i < cfg.limit_batches)
            probe = stability_probe(model, batches, int(cfg.probe_points), int(cfg.probe_iterations))
        probes.append({"label": label, "experiment": run_cfg.meta.experiment, "split": cfg.split,
                       "rate": rates[label], **{f"probe_{k}": v for k, v in probe.items()},
                       **recurrent_weight_norms(model)})
        runs_meta.append(_run_meta(label, str(run_dir), summary))
        print(f"{label}: fitted rate {rates[label]:.4f}; probe {probe}", flush=True)

    out = str(cfg.out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    sha, dirty = git_info()
    lines = [f"# {cfg.title}", ""]
    intro = ["The k-truncated model (the zero state, then the last k inputs: `model.truncation=k`, the feed-forward "
             "approximation of Stable Recurrent Models, spec S5) against the recurrent model with the same weights "
             f"(each run's best-validation checkpoint), on the {cfg.split} split. `distance_mean` / `distance_max`: "
             "the l2 distance between their predictions per predicted step. `metric_gap` = truncated - recurrent. "
             "`rate`: exp(slope) of the least-squares fit of log(distance_mean) against k.", ""]
    if rows:
        lines += intro
        frame = pd.DataFrame(rows)
        frame.to_csv(out + ".csv", index=False)
        plot(frame, rates, out + ".png", str(cfg.title))
        lines += [frame.drop(columns=["label"]).assign(run=frame["label"]).to_markdown(index=False, floatfmt=".4g"),
                  "", f"![gap against k]({os.path.basename(out)}.png)", ""]
    if probes:
        probe_frame = pd.DataFrame(probes)
        probe_frame.to_csv(out + "_probe.csv", index=False)
        lines += ["## Stability on the data (harness diagnostic, spec S9)", "",
                  "||d s_t / d s_{t-1}||_2 at the visited states of sampled data time steps (s: the whole state; "
                  "exact for up to 256 state entries, else power iteration, a lower bound), and the fraction of "
                  "steps below 1. `sigma_max_w_hh`: the spectral norm of the recurrent matrix; for the LSTM "
                  "`linf_w_*` / `l1_w_*`: the induced norms of its gate blocks.", "",
                  probe_frame.to_markdown(index=False, floatfmt=".4g"), ""]
    if cfg.trained:
        trained_rows = []
        for pair in cfg.trained:
            rec_cfg, rec_data, rec_model, rec_summary = load_run(str(pair.recurrent), cfg.data_root)
            runs_meta.append(_run_meta(f"recurrent k=none ({rec_cfg.meta.experiment})", str(pair.recurrent),
                                       rec_summary))
            for run_dir in pair.truncated:
                tr_cfg, _, tr_model, tr_summary = load_run(str(run_dir), cfg.data_root)
                runs_meta.append(_run_meta(f"k={tr_cfg.model.truncation} ({tr_cfg.meta.experiment})", str(run_dir),
                                           tr_summary))
                trained_rows.append({
                    "experiment": rec_cfg.meta.experiment, "seed": rec_cfg.seed, "k": tr_cfg.model.truncation,
                    "test_recurrent": rec_summary.get("test_at_best_val"),
                    "test_truncated": tr_summary.get("test_at_best_val"),
                    "test_gap": tr_summary.get("test_at_best_val", math.nan) - rec_summary.get("test_at_best_val",
                                                                                              math.nan),
                    "relative_weight_distance": weight_distance(tr_model, rec_model),
                    "steps": tr_summary.get("steps")})
        trained = pd.DataFrame(trained_rows).sort_values(["experiment", "k"])
        trained.to_csv(out + "_trained.csv", index=False)
        lines += ["## Trained truncated models (spec S5 (b))", "",
                  "Runs of the same preset and seed (so the same initial weights) trained with `model.truncation=k`, "
                  "against the recurrent run: the test metric at the best-validation checkpoint, `test_gap` = "
                  "truncated - recurrent, and "
                  "||w_truncated - w_recurrent|| / ||w_recurrent|| over all parameters.", "",
                  trained.to_markdown(index=False, floatfmt=".4g"), ""]
    lines += ["Provenance",
              f"- command: `python scripts/truncation.py` with ks={ks if rows else '(none)'}, split={cfg.split}, "
              f"limit_batches={cfg.limit_batches}, probe_points={cfg.probe_points}, "
              f"probe_iterations={cfg.probe_iterations}",
              "- runs: " + "; ".join(f"{m['run']} = {m['where']}" for m in runs_meta),
              f"- analysis: git {sha[:10]}{'+dirty' if dirty else ''}, {cpu_model()}, {started}",
              *[f"- run {m['run']}: git {str(m['git_sha'])[:10]}{'+dirty' if m['git_dirty'] else ''}, "
                f"{m['device']}, finished {m['finished_at']}" for m in runs_meta], ""]
    Path(out + ".md").write_text("\n".join(lines))
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
