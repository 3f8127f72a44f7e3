"""The Stable Recurrent Models projections' share of a JSB training step, at the paper's n = 1024, in one run.

Usage: ``python scripts/bench_stable.py [--repeats N] [--threads N] [--frames T]`` (``make bench`` runs the
defaults); writes results/bench/stable-<device>.csv and .md.

One JSB step is one piece (batch 1, T = 60 frames by default: the mean training piece is 13,807 / 229 = 60.3 frames)
through the harness's model (88 -> 1024 -> 88, output dropout 0.1), the piece-summed loss, backward, gradient
clipping at 5 and the SGD update. Timed separately, in interleaved rounds (median and IQR over ``--repeats``): that
step without a projection, and each projection alone on the trained W_hh: the RNN's full SVD clip, its power-iteration
normalisation (10 iterations, as table1_jsb_rnn_stable), and the LSTM's l1 row normalisation. Share = projection /
(step + projection).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rnnrepro.cells.classic import LSTM, TanhRNN  # noqa: E402
from rnnrepro.data.base import DataSpec  # noqa: E402
from rnnrepro.models import SequenceModel  # noqa: E402
from rnnrepro.tasks import TaskType, build_task  # noqa: E402


def stats(ts: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
    return 1e3 * statistics.median(ts), 1e3 * (q[2] - q[0])


def build(kind: str, n: int, stable: dict) -> SequenceModel:
    spec = DataSpec(input_size=88, output_size=88, task=TaskType.multilabel_each)
    cell = TanhRNN(88, n, stable=stable) if kind == "rnn" else LSTM(88, n, forget_bias=20.0, stable=stable)
    task = build_task(TaskType.multilabel_each, loss="piece_sum")
    return SequenceModel(cell, torch.nn.Linear(n, spec.output_size), task, dropout={"output": 0.1})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--out-dir", type=Path, default=ROOT / "results" / "bench")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.time()
    n = args.hidden
    models = {
        "rnn": build("rnn", n, {"enabled": True, "method": "power_iter", "power_iterations": 10}),
        "lstm": build("lstm", n, {"enabled": True, "norm_axis": "rows", "norm_mode": "rescale"}),
    }
    svd_cell = TanhRNN(88, n, stable={"enabled": True, "method": "svd"})
    svd_cell.load_state_dict(models["rnn"].cell.state_dict(), strict=False)
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in models.items()}
    x = (torch.rand(1, args.frames, 88) < 0.045).float()  # about 4 of 88 keys per frame, as JSB
    batch = {"x": x, "y": x.roll(-1, 1), "mask": torch.ones(1, args.frames, dtype=torch.bool)}

    def step(kind: str) -> None:
        model = models[kind]
        out, _ = model(batch["x"])
        model.task.loss(out, batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizers[kind].step()
        optimizers[kind].zero_grad(set_to_none=True)

    variants = {
        "RNN step (no projection)": lambda: step("rnn"),
        "RNN projection: SVD clip (the code)": svd_cell.after_optimizer_step,
        "RNN projection: power iteration, 10 its (preset)": models["rnn"].cell.after_optimizer_step,
        "LSTM step (no projection)": lambda: step("lstm"),
        "LSTM projection: l1 rows rescale": models["lstm"].cell.after_optimizer_step,
    }
    with torch.no_grad():  # above the cap, so every projection does its whole work
        svd_cell.rnn.weight_hh_l0.mul_(2)
    for fn in variants.values():
        for _ in range(args.warmup):
            fn()
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            if "SVD" in name:
                with torch.no_grad():
                    svd_cell.rnn.weight_hh_l0.mul_(1.5)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, ts in times.items():
        median, iqr = stats(ts)
        rows.append({"variant": name, "ms": round(median, 3), "iqr_ms": round(iqr, 3)})
    frame = pd.DataFrame(rows).set_index("variant")
    for cell, base in (("RNN", "RNN step (no projection)"), ("LSTM", "LSTM step (no projection)")):
        for name in frame.index:
            if name.startswith(f"{cell} projection"):
                frame.loc[name, "share_of_step"] = round(frame.loc[name, "ms"] / (frame.loc[base, "ms"]
                                                                                 + frame.loc[name, "ms"]), 4)
    frame = frame.reset_index()
    from rnnrepro.results.summary import cpu_model, git_info

    sha, dirty = git_info()
    prov = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "git_sha": sha + ("+dirty" if dirty else ""), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "wall_s": round(time.time() - started, 1), "repeats": args.repeats, "frames": args.frames, "hidden": n,
            "load_avg_1min": round(os.getloadavg()[0], 2)}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / "stable-cpu"
    frame.assign(**prov).to_csv(stem.with_suffix(".csv"), index=False)
    svd = frame.set_index("variant").loc["RNN projection: SVD clip (the code)", "share_of_step"]
    power = frame.set_index("variant").loc["RNN projection: power iteration, 10 its (preset)", "share_of_step"]
    lines = ["# Stable Recurrent Models: the projection's share of a JSB step", "",
             "Written by `scripts/bench_stable.py` (`make bench`); one process, interleaved rounds; median and IQR in "
             "ms. See the script's docstring for the protocol.", "",
             f"- CPU: {prov['cpu']}, {prov['threads']} thread(s); torch {prov['torch']}; git {prov['git_sha']}; "
             f"{prov['date']}; n = {n}, one piece of {args.frames} frames; {args.repeats} rounds; load average "
             f"{prov['load_avg_1min']} at the end (other runs share the CPU when it exceeds the thread count: "
             "then compare the shares, not the absolute times)", "",
             f"**Verdict**: at n = {n} the code's SVD clip takes {100 * svd:.1f}% of a projected RNN step, power "
             f"iteration {100 * power:.1f}%.", "",
             frame.to_markdown(index=False), ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
