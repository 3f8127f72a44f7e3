"""The training recipes' cost on this machine, in one run: stacked layers and dropout stay fused, denormals, allocator.

Usage: ``python scripts/bench_recipes.py [--repeats N] [--threads N] [--quick]`` (``make bench`` runs the defaults);
writes results/bench/recipes-<device>.csv and .md.

Three measurements, each timed with ``time.perf_counter`` (median and IQR over ``--repeats`` interleaved rounds after
``--warmup`` iterations, forward+backward, loss = sum of the outputs, gradients cleared outside the timed region):

1. **Layers and dropout stay fused** (T = 35, B = 20, m = n = 200: the word-LM shape). The harness's path,
   ``SequenceModel.features`` of ``model=lstm model.num_layers=2`` with dropout 0.2 on the input, between the layers
   and on the output, against the same ``nn.LSTM`` module called directly with the same three dropouts. Also, for
   information: no dropout, locked dropout (layers stacked as separate modules) and weight drop.
2. **Denormals** (T = 784, B = 64, n = 128, 1 input: pixel MNIST): ``nn.LSTM`` and the fused AntisymmetricRNN with
   ``torch.set_flush_denormal`` off and on, each setting in a fresh child process (worker threads take the mode at
   their creation).
3. **Allocator**: ``nn.LSTM`` at the shapes of 2 and of 1 (2 layers) in child processes, with glibc's default allocator
   settings and with the setting ``make`` exports (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ = 4 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FAST_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
FUSED_TARGET = 1.1  # issue: a 2-layer LSTM with dropout within 1.1x of the same nn.LSTM called directly


def timeit(fns: dict, make_x, repeats: int, warmup: int, params: dict) -> dict[str, list[float]]:
    """Interleaved rounds: every variant once per round, on the same fresh input."""
    for fn in fns.values():
        for _ in range(warmup):
            fn(make_x(0)).sum().backward()
    times = {name: [] for name in fns}
    for r in range(repeats):
        x = make_x(r + 1)
        for name, fn in fns.items():
            for p in params[name]:
                p.grad = None
            start = time.perf_counter()
            fn(x).sum().backward()
            times[name].append(time.perf_counter() - start)
    return times


def stats(ts: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
    return 1000 * statistics.median(ts), 1000 * (q[2] - q[0])


def compose_model(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import rnnrepro.config  # noqa: F401 - registers the schemas
    from rnnrepro.data.base import DataSpec
    from rnnrepro.models import build_model
    from rnnrepro.tasks import TaskType, build_task

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("config", overrides=["model=lstm", *overrides])
    spec = DataSpec(input_size=200, output_size=10, task=TaskType.classify_each, metric="acc")
    return build_model(cfg.model, spec, build_task(TaskType.classify_each, metric="acc"))


def layers_and_dropout(args: argparse.Namespace) -> list[dict]:
    T, B, n = 35, 20, 200
    base = ["model.hidden_size=200", "model.num_layers=2"]
    drop = ["model.dropout.input=0.2", "model.dropout.between=0.2", "model.dropout.output=0.2"]
    variants = {
        "harness, dropout 0.2 x3": base + drop,
        "harness, no dropout": base,
        "harness, locked dropout 0.2 x3 (stacked modules)": base + drop + ["model.dropout.locked=true"],
        "harness, weight drop 0.5": base + ["model.dropout.weight=0.5"],
    }
    models = {}
    for name, overrides in variants.items():
        torch.manual_seed(0)
        models[name] = compose_model(overrides).train()
    lstm = models["harness, dropout 0.2 x3"].cell.rnn  # the same module, called directly
    assert lstm.num_layers == 2 and lstm.dropout == 0.2

    def direct(x):
        out, _ = lstm(F.dropout(x, 0.2, True))
        return F.dropout(out, 0.2, True)

    fns = {"nn.LSTM(2 layers, dropout 0.2) direct, dropout 0.2 on input and output": direct}
    params = {next(iter(fns)): list(lstm.parameters())}
    for name, model in models.items():
        fns[name] = lambda x, m=model: m.features(x.transpose(0, 1))[0]
        params[name] = list(model.parameters())

    def make_x(r):
        return torch.randn(T, B, n, generator=torch.Generator().manual_seed(r))

    times = timeit(fns, make_x, args.repeats, args.warmup, params)
    ref = statistics.median(times[next(iter(fns))])
    rows = []
    for name, ts in times.items():
        med, iqr = stats(ts)
        rows.append({"section": "layers_dropout", "variant": name, "shape": f"T={T} B={B} n={n}",
                     "fwd_bwd_ms": round(med, 3), "iqr_ms": round(iqr, 3),
                     "ratio": round(statistics.median(ts) / ref, 3)})
    return rows


def denormal_child(args: argparse.Namespace) -> None:
    """Times both cells in a fresh process whose flush mode is set before torch starts its worker threads (they
    inherit the floating-point mode when they are created; setting it later changes the calling thread only)."""
    torch.set_flush_denormal(args.denormal_child == "on")
    from rnnrepro.cells.antisymmetric import AntisymmetricRNN

    T, B, n = (784, 64, 128) if not args.quick else (196, 64, 128)
    torch.manual_seed(0)
    cells = {"nn.LSTM": nn.LSTM(1, n), "AntisymmetricRNN (fused)": AntisymmetricRNN(1, n)}
    fns = {name: (lambda x, c=c: c(x)[0][-1]) for name, c in cells.items()}
    params = {name: list(c.parameters()) for name, c in cells.items()}

    def make_x(r):
        return torch.randn(T, B, 1, generator=torch.Generator().manual_seed(r))

    print(json.dumps(timeit(fns, make_x, max(3, args.repeats // 3), 1, params)))


def denormals(args: argparse.Namespace) -> list[dict]:
    T, B, n = (784, 64, 128) if not args.quick else (196, 64, 128)
    rows, medians = [], {}
    for flush in ("off", "on"):
        cmd = [sys.executable, __file__, "--denormal-child", flush, "--repeats", str(args.repeats)]
        cmd += (["--threads", str(args.threads)] if args.threads else []) + (["--quick"] if args.quick else [])
        times = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        for name, ts in times.items():
            med, iqr = stats(ts)
            medians.setdefault(name, med)
            rows.append({"section": "denormals", "variant": f"{name}, flush_denormal={flush}",
                         "shape": f"T={T} B={B} n={n}", "fwd_bwd_ms": round(med, 3), "iqr_ms": round(iqr, 3),
                         "ratio": round(med / medians[name], 3)})
    return rows


ALLOCATOR_SHAPES = {"pixel": (784, 64, 1, 128, 1), "word_lm": (35, 20, 200, 200, 2)}  # T, B, m, n, layers


def allocator_child(args: argparse.Namespace) -> None:
    torch.set_flush_denormal(True)
    T, B, m, n, layers = ALLOCATOR_SHAPES[args.allocator_child]
    torch.manual_seed(0)
    lstm = nn.LSTM(m, n, num_layers=layers)

    def make_x(r):
        return torch.randn(T, B, m, generator=torch.Generator().manual_seed(r))

    times = timeit({"lstm": lambda x: lstm(x)[0]}, make_x, args.repeats, args.warmup, {"lstm": list(lstm.parameters())})
    print(json.dumps(times["lstm"]))


def allocator(args: argparse.Namespace) -> list[dict]:
    rows = []
    base_env = {k: v for k, v in os.environ.items() if k not in FAST_MALLOC}
    for shape, (T, B, m, n, layers) in ALLOCATOR_SHAPES.items():
        first = None
        for label, env in (("glibc default", base_env),
                           ("make's setting (4 GiB thresholds)", {**base_env, **FAST_MALLOC})):
            cmd = [sys.executable, __file__, "--allocator-child", shape, "--repeats", str(args.repeats), "--warmup",
                   str(args.warmup)] + (["--threads", str(args.threads)] if args.threads else [])
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            ts = json.loads(out.strip().splitlines()[-1])
            med, iqr = stats(ts)
            first = med if first is None else first
            rows.append({"section": "allocator", "variant": f"nn.LSTM({m}, {n}, {layers} layer(s)), {label}",
                         "shape": f"T={T} B={B} n={n}", "fwd_bwd_ms": round(med, 3), "iqr_ms": round(iqr, 3),
                         "ratio": round(med / first, 3)})
    return rows


def cpu_model() -> str:
    from rnnrepro.results.summary import cpu_model as model

    return model()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="3 rounds, T = 196 for the denormal section")
    p.add_argument("--out-dir", type=Path, default=ROOT / "results" / "bench")
    p.add_argument("--allocator-child", choices=sorted(ALLOCATOR_SHAPES), help=argparse.SUPPRESS)
    p.add_argument("--denormal-child", choices=["off", "on"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 3, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.allocator_child:
        allocator_child(args)
        return 0
    if args.denormal_child:
        denormal_child(args)
        return 0
    from rnnrepro.results.summary import git_info

    started = time.time()
    rows = layers_and_dropout(args) + denormals(args) + allocator(args)
    sha, dirty = git_info()
    prov = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "git_sha": sha + ("+dirty" if dirty else ""), "malloc_env_of_this_process":
            ",".join(f"{k}={os.environ[k]}" for k in FAST_MALLOC if k in os.environ) or "default",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "wall_s": round(time.time() - started, 1),
            "repeats": args.repeats, "warmup": args.warmup}
    frame = pd.DataFrame(rows)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / ("recipes-cpu" + ("-quick" if args.quick else ""))
    frame.assign(**{k: v for k, v in prov.items()}).to_csv(stem.with_suffix(".csv"), index=False)
    fused = frame[(frame.section == "layers_dropout") & (frame.variant == "harness, dropout 0.2 x3")].ratio.iloc[0]
    lines = [
        "# Recipes on the CPU: layers and dropout stay fused, denormals, allocator", "",
        "Written by `scripts/bench_recipes.py` (`make bench`); one process, interleaved rounds; forward+backward "
        "median and IQR in ms. See the script's docstring for the protocol.", "",
        f"- CPU: {prov['cpu']}, {prov['threads']} threads; torch {prov['torch']}; git {prov['git_sha']}; "
        f"{prov['date']}; {prov['repeats']} rounds after {prov['warmup']} warm-up iterations; this process's "
        f"allocator setting: {prov['malloc_env_of_this_process']}", "",
        f"**Verdict**: the harness's 2-layer LSTM with dropout runs at {fused:.3f}x the same nn.LSTM module called "
        f"directly ({'within' if fused <= FUSED_TARGET else 'NOT within'} the {FUSED_TARGET}x target).", "",
    ]
    titles = {"layers_dropout": "Layers and dropout (ratio: to nn.LSTM called directly)",
              "denormals": "Denormals (ratio: to flush_denormal=off, per cell)",
              "allocator": "Allocator (ratio: to glibc's default setting)"}
    for section, title in titles.items():
        part = frame[frame.section == section][["variant", "shape", "fwd_bwd_ms", "iqr_ms", "ratio"]]
        lines += [f"## {title}", "", part.to_markdown(index=False), ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
