"""Gradient noise of the online estimators against exact RTRL, the OK paper's central claim measured directly.

    python scripts/grad_noise.py [--sizes 8,16,32] [--steps 3000] [--seed 0] [--out results/online_rtrl]

For each hidden size n and each estimator (UORO, KF-RTRL, OK with r = 1, 2, 4, 8), one training run of the copy task
setup at size n (``online_rtrl/copy_ok`` with ``model.hidden_size=n``: RHN, 16 streams, Adam 10^-3.5, the cell clipped
to norm 1) at a fixed copy length T (``--T``, default 16; curriculum off: at T = 1 every sequence is 4 steps long,
the influence has rank <= 4 between resets and OK with r >= 4 is exact) with ``algorithm.grad_noise_every=10``:
every 10th step the run compares this step's gradient q_t G~_t with exact RTRL's q_t G_t on the same trajectory (an
exact influence carried beside the estimator) and logs |g~ - g| / |g|. Reported: the mean of the logged values after
the first min(1000, steps / 3) steps, per estimator and n. Writes ``grad_noise.{csv,md,png}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import tempfile
import time

import pandas as pd
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

ESTIMATORS = {"UORO": ["algorithm=uoro"], "KF-RTRL": ["algorithm=kf_rtrl"],
              **{f"OK r={r}": ["algorithm=ok", f"algorithm.ok.rank={r}"] for r in (1, 2, 4, 8)}}
BURN_IN = 1000


def measure(n: int, overrides: list[str], args: argparse.Namespace, out: str) -> tuple[float, int, float]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import rnnrepro.config  # noqa: F401  (registers the schemas)
    from rnnrepro.api import run

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=os.path.join(ROOT, "conf")):
        cfg = compose("config", overrides=[
            "experiment=online_rtrl/copy_ok", *overrides, f"model.hidden_size={n}", f"seed={args.seed}",
            f"trainer.max_steps={args.steps}", "trainer.eval_every_n_steps=500", "algorithm.grad_noise_every=10",
            f"data.initial_T={args.T}", "data.curriculum.threshold_bits=0", "data.n_val=32", "data.n_test=32",
            "trainer.checkpoint=false", "trainer.progress_bar=false",
            "trainer.num_threads=1", f"output_dir={out}"])
    GlobalHydra.instance().clear()
    start = time.perf_counter()
    summary = run(cfg)
    train = pd.read_csv(os.path.join(out, "metrics.csv")).query("split == 'train'")
    late = train[train.step > min(BURN_IN, args.steps // 3)]["grad_noise_rel"]
    return float(late.mean()), int(summary["train_extras"]["curriculum_T"]), time.perf_counter() - start  # T fixed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="8,16,32")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--T", type=int, default=16,
                        help="fixed copy length (curriculum off): sequences of 2T+2 steps, so the influence carries "
                             "that many steps between resets (default 16, the official runs' T near 100k steps)")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "online_rtrl"))
    args = parser.parse_args()
    logging.getLogger("rnnrepro").setLevel(logging.WARNING)
    from rnnrepro.results.summary import device_name, git_info

    sha, dirty = git_info()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(v) for v in args.sizes.split(",")]:
            for label, overrides in ESTIMATORS.items():
                slug = label.replace(" ", "").replace("=", "").replace("-", "")
                noise, T, wall = measure(n, overrides, args, os.path.join(tmp, f"{n}_{slug}"))
                rows.append({"estimator": label, "n": n, "T": T, "grad_noise_rel": noise, "wall_s": round(wall, 1)})
                print(f"n={n:3d} {label:8s} |g~-g|/|g| = {noise:.4g} (T {T}, {wall:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    os.makedirs(args.out, exist_ok=True)
    df.to_csv(os.path.join(args.out, "grad_noise.csv"), index=False)
    table = df.pivot(index="estimator", columns="n", values="grad_noise_rel").loc[list(ESTIMATORS)]
    table.columns = [f"n={c}" for c in table.columns]
    lines = ["# Gradient noise of the online estimators against exact RTRL", "",
             f"Relative error |q_t G~_t - q_t G_t| / |q_t G_t| of each step's gradient against exact RTRL on the same "
             f"trajectory, every 10th step, mean over steps {min(BURN_IN, args.steps // 3) + 1}-{args.steps} of one "
             f"run per cell (`online_rtrl/copy_ok` at hidden size n: RHN, B = 16, Adam 10^-3.5, symmetric split, "
             f"copy length fixed at T = {args.T}, sequences of {2 * args.T + 2} steps; seed {args.seed}). "
             "`scripts/grad_noise.py`.", "",
             table.reset_index().to_markdown(index=False, floatfmt=".3g"), "",
             "Provenance", f"- git SHA: {sha[:10]}{'+dirty' if dirty else ''}",
             f"- device: {device_name(torch.device('cpu'))}",
             f"- finished: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}; "
             f"wall time {df.wall_s.sum() / 60:.1f} min in all", "", "![noise against n](grad_noise.png)", ""]
    with open(os.path.join(args.out, "grad_noise.md"), "w") as f:
        f.write("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for label in ESTIMATORS:
            sub = df[df.estimator == label]
            ax.plot(sub.n, sub.grad_noise_rel, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("hidden size n")
        ax.set_ylabel("|g~ - g| / |g| (mean per step)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "grad_noise.png"), dpi=120)
        plt.close(fig)
    except ImportError:
        print("matplotlib is not installed: no figure", file=sys.stderr)
    print(f"wrote {os.path.join(args.out, 'grad_noise.md')}")


if __name__ == "__main__":
    main()
