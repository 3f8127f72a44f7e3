"""Time every recurrent cell beside torch.nn.LSTM, in one process; write results/bench/<device>.csv and .md.

Usage: ``python scripts/bench.py [--repeats N] [--warmup N] [--T 784] [--T-short 196] [--batch 64] [--hidden 128]
[--cells lstm_cell,sbo_sgd,...] [--threads N] [--tune-malloc] [--tag NAME] [--quick]`` (``make bench`` runs the
defaults). ``--list`` prints the cell keys. See results/bench/README.md for the columns.

Protocol (shared/design/performance.md section 7, scaled to a small CPU):
- every variant is built from its conf/model/*.yaml (Hydra compose + rnnrepro.models.build_cell) after
  ``torch.manual_seed(seed)``; the reference is ``torch.nn.LSTM`` itself;
- warm-up: ``--warmup`` forward and forward+backward iterations per variant (default 3 on CPU, 10 on CUDA);
- timed: ``--repeats`` rounds (default 15 on CPU, 30 on CUDA). Each round draws fresh inputs x ~ N(0, 1) of shape
  (T, B, m) from a generator seeded by (seed, T, round), so every variant sees the same data, and runs every variant
  once, interleaved, so that drift of the machine hits all variants alike;
- forward: under ``torch.no_grad``; forward+backward: loss = sum of the last output, ``loss.backward()``, gradients
  set to None beforehand (outside the timed region);
- timer: ``time.perf_counter`` with ``torch.cuda.synchronize()`` before and after on CUDA;
- statistics: median, IQR (p75 - p25) and min, in ms; ratios to nn.LSTM's median of the same run and T;
  t784_over_t196 = fwd+bwd median at the long T over that at the short T (~4 when linear in T);
- memory (one extra untimed forward+backward): on CUDA the peak of ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``; on CPU the bytes of the tensors autograd saves for backward
  (``torch.autograd.graph.saved_tensors_hooks``, the sum of unique storage sizes, parameters included).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_RATIO = 1.5  # the project's CPU target: custom cells' fwd+bwd within 1.5x nn.LSTM
LINEAR_TOLERANCE = 1.25  # "linear in T" when t_long / t_short <= 1.25 * T_long / T_short
NOISY_IQR = 0.25  # a row is noisy when its fwd+bwd IQR exceeds 25% of its median
REFERENCE = "nn_lstm"


@dataclass
class Variant:
    key: str
    cell: str
    impl: str
    overrides: list[str] | None  # Hydra overrides of conf/model; None for the torch.nn.LSTM reference
    module: nn.Module | None = None
    run: Callable[[Tensor], Tensor] | None = None
    times: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    mem_mb: dict[int, float] = field(default_factory=dict)


def all_variants() -> list[Variant]:
    variants = [
        Variant(REFERENCE, "nn.LSTM", "torch", None),
        Variant("lstm_fused", "lstm", "fused", ["model=lstm", "model.impl=fused"]),
        Variant("lstm_cell", "lstm", "cell", ["model=lstm", "model.impl=cell"]),
        Variant("gru_fused", "gru", "fused", ["model=gru", "model.impl=fused"]),
        Variant("gru_cell", "gru", "cell", ["model=gru", "model.impl=cell"]),
        Variant("rnn_fused", "rnn (tanh)", "fused", ["model=rnn", "model.impl=fused"]),
        Variant("rnn_cell", "rnn (tanh)", "cell", ["model=rnn", "model.impl=cell"]),
        Variant("irnn_fused", "irnn", "fused", ["model=irnn", "model.impl=fused"]),
        # AntisymmetricRNN and SBO-RNN: impl=fused (the default, one autograd Function per sequence with a hand-written
        # backward) beside impl=cell (the shared step-by-step runner); AntisymmetricRNN also with impl=native (the same
        # Function's forward and backward in C++, rnnrepro/native).
        Variant("antisym", "antisym", "fused", ["model=antisym", "model.impl=fused"]),
        Variant("antisym_native", "antisym", "native", ["model=antisym", "model.impl=native"]),
        Variant("antisym_cell", "antisym", "cell", ["model=antisym", "model.impl=cell"]),
        Variant("antisym_gated", "antisym_gated", "fused", ["model=antisym_gated", "model.impl=fused"]),
        Variant("antisym_gated_native", "antisym_gated", "native", ["model=antisym_gated", "model.impl=native"]),
        Variant("antisym_gated_cell", "antisym_gated", "cell", ["model=antisym_gated", "model.impl=cell"]),
    ]
    # The MomentumRNN LSTM family (rnnrepro/cells/momentum.py): fused (torch's LSTM kernel on filtered inputs) where
    # the velocity is linear in the input projection, the step path for the others.
    for key, variant, extra, impl in (("mom_lstm", "lstm", [], "fused"), ("mom_momentum", "momentum", [], "fused"),
                                      ("mom_nesterov_b", "nesterov", ["model.nesterov_form=B", "model.restart=2"],
                                       "fused"),
                                      ("mom_momentum_cell", "momentum", [], "cell"),
                                      ("mom_adam_cell", "adam", ["model.mu=0.6", "model.beta=0.1"], "cell"),
                                      ("mom_rmsprop_cell", "rmsprop", ["model.mu=0.0"], "cell"),
                                      ("mom_nesterov_a_cell", "nesterov", ["model.restart=2"], "cell")):
        variants.append(Variant(key, f"momentum_lstm {variant}", impl,
                                ["model=momentum_lstm", f"model.variant={variant}", f"model.impl={impl}", *extra]))
    for solver, recurrent, suffix in (("sgd", "dense_lowrank", ""), ("shb", "dense_lowrank", ""),
                                      ("snag", "dense_lowrank", ""), ("sgd", "sparse", "_sparse")):
        for impl in ("fused", "cell"):
            key = f"sbo_{solver}{suffix}" + ("_cell" if impl == "cell" else "")
            variants.append(Variant(key, f"sbo {solver} {recurrent}", impl,
                                    ["model=sbo", f"model.solver={solver}", f"model.recurrent={recurrent}",
                                     f"model.impl={impl}"]))
    return variants


# ----------------------------------------------------------------------------------------------------- provenance
def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    tokens = re.split(r"[^a-z0-9]+", torch.cuda.get_device_name(device).lower())
    kept = []
    for tok in tokens:
        if re.fullmatch(r"\d+gb", tok):  # "NVIDIA H100 80GB HBM3" -> nvidia-h100
            break
        if tok:
            kept.append(tok)
    return "-".join(kept) or "cuda"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (OSError, AttributeError):
        return "n/a"


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def malloc_setting() -> str:
    """The allocator settings that change CPU timings: glibc's mmap/trim thresholds and an LD_PRELOADed allocator."""
    parts = [f"{k}={os.environ[k]}" for k in MALLOC_ENV if k in os.environ]
    if os.environ.get("LD_PRELOAD"):
        parts.append("LD_PRELOAD=" + ",".join(Path(p).name for p in os.environ["LD_PRELOAD"].split(":") if p))
    return "; ".join(parts) or "default"


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ------------------------------------------------------------------------------------------------------- building
def build(variants: list[Variant], input_size: int, hidden: int, seed: int, device: torch.device) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import rnnrepro.config  # noqa: F401  (registers the config schemas)
    from rnnrepro.models import build_cell

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        for v in variants:
            torch.manual_seed(seed)
            if v.overrides is None:
                lstm = nn.LSTM(input_size, hidden).to(device)
                v.module = lstm

                def run_ref(x: Tensor, lstm: nn.LSTM = lstm) -> Tensor:
                    out, _ = lstm(x)
                    return out[-1]

                v.run = run_ref
            else:
                cfg = compose("config", overrides=[*v.overrides, f"model.hidden_size={hidden}"])
                cell = build_cell(cfg.model, input_size).to(device)
                v.module = cell

                def run_cell(x: Tensor, cell: nn.Module = cell) -> Tensor:
                    out, _ = cell(x)  # (B, n): the last output
                    return out

                v.run = run_cell
    GlobalHydra.instance().clear()


# -------------------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_input(shape: tuple[int, int, int], seed: int, device: torch.device) -> Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=device)


def clear_grads(module: nn.Module) -> None:
    for p in module.parameters():
        p.grad = None


def fwd_once(v: Variant, x: Tensor, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        v.run(x)
    sync(device)
    return time.perf_counter() - t0


def fwdbwd_once(v: Variant, x: Tensor, device: torch.device) -> float:
    clear_grads(v.module)
    sync(device)
    t0 = time.perf_counter()
    loss = v.run(x).sum()
    loss.backward()
    sync(device)
    return time.perf_counter() - t0


def saved_tensor_mb(v: Variant, x: Tensor) -> float:
    """MB of the unique storages autograd saves for backward in one forward (freed by the backward that follows)."""
    storages: dict[tuple[str, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        try:
            s = t.untyped_storage()
            storages[(str(t.device), s.data_ptr())] = s.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. opaque (mkldnn) tensors without a storage
            storages[(str(t.device), id(t))] = t.numel() * t.element_size()
        return t

    clear_grads(v.module)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = v.run(x).sum()
    loss.backward()
    return sum(storages.values()) / 2**20


def cuda_peak_mb(v: Variant, x: Tensor, device: torch.device) -> float:
    clear_grads(v.module)
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    v.run(x).sum().backward()
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def bench_T(variants: list[Variant], T: int, args: argparse.Namespace, device: torch.device) -> None:
    shape = (T, args.batch, args.input_size)
    for v in variants:  # warm-up (allocator, oneDNN primitives / cuDNN plans, first backward)
        for i in range(args.warmup):
            x = make_input(shape, args.seed + 7919 * (i + 1), device)
            fwd_once(v, x, device)
            fwdbwd_once(v, x, device)
        v.times[(T, "fwd")] = []
        v.times[(T, "fwdbwd")] = []
    for r in range(args.repeats):  # interleaved rounds; the same fresh input for every variant within a round
        x = make_input(shape, args.seed * 1_000_003 + 1009 * T + r, device)
        for v in variants:
            v.times[(T, "fwd")].append(fwd_once(v, x, device))
            v.times[(T, "fwdbwd")].append(fwdbwd_once(v, x, device))
        print(f"  T={T} round {r + 1}/{args.repeats} done", flush=True)
    x = make_input(shape, args.seed + 17, device)
    for v in variants:
        v.mem_mb[T] = cuda_peak_mb(v, x, device) if device.type == "cuda" else saved_tensor_mb(v, x)


def ms_stats(ts: list[float]) -> tuple[float, float, float]:
    a = np.asarray(ts) * 1e3
    q25, q75 = np.percentile(a, [25, 75])
    return float(statistics.median(a)), float(q75 - q25), float(a.min())


# ------------------------------------------------------------------------------------------------------- reporting
def to_frame(variants: list[Variant], args: argparse.Namespace, prov: dict[str, object]) -> pd.DataFrame:
    ref = next(v for v in variants if v.key == REFERENCE)
    rows = []
    for T in (args.T, args.T_short):
        ref_fwd = ms_stats(ref.times[(T, "fwd")])[0]
        _, _, ref_fb_min = ref_stats = ms_stats(ref.times[(T, "fwdbwd")])
        ref_fb = ref_stats[0]
        for v in variants:
            f_med, f_iqr, _ = ms_stats(v.times[(T, "fwd")])
            b_med, b_iqr, b_min = ms_stats(v.times[(T, "fwdbwd")])
            short_med, _, short_min = ms_stats(v.times[(args.T_short, "fwdbwd")])
            lin = b_med / short_med if T == args.T else math.nan
            lin_min = b_min / short_min if T == args.T else math.nan
            rows.append({
                "cell": v.cell, "impl": v.impl, "T": T, "B": args.batch, "n": args.hidden,
                "fwd_ms_median": f_med, "fwd_ms_iqr": f_iqr,
                "fwdbwd_ms_median": b_med, "fwdbwd_ms_iqr": b_iqr, "fwdbwd_ms_min": b_min,
                "ratio_fwd_vs_nn_lstm": f_med / ref_fwd, "ratio_fwdbwd_vs_nn_lstm": b_med / ref_fb,
                "t784_over_t196": lin, "saved_or_peak_mb": v.mem_mb[T],
                "mem_metric": "cuda_peak" if prov["device"] == "cuda" else "saved_tensors",
                # the same ratios from the minima: less sensitive to a machine shared with other jobs
                "ratio_fwdbwd_min_vs_nn_lstm": b_min / ref_fb_min, "t784_over_t196_min": lin_min,
                "key": v.key,
                **{k: prov[k] for k in ("device_name", "torch_version", "num_threads", "git_sha", "timestamp",
                                        "malloc")},
            })
    return pd.DataFrame(rows)


def _target_line(df: pd.DataFrame, T: int, col: str, label: str) -> str:
    sub = df[(df["key"] != REFERENCE) & (df["T"] == T)]
    miss = sub[sub[col] > TARGET_RATIO]
    head = f"- T={T}, {label}: every cell's fwd+bwd is within {TARGET_RATIO}x nn.LSTM:"
    if miss.empty:
        return f"{head} **yes** (worst {sub[col].max():.2f}x)."
    names = ", ".join(f"{r.cell} [{r.impl}] {getattr(r, col):.2f}x" for r in miss.itertuples())
    return f"{head} **no**; {len(miss)} of {len(sub)} miss: {names}."


def _linear_line(df: pd.DataFrame, args: argparse.Namespace, col: str, label: str) -> str:
    long = df[df["T"] == args.T]
    expected = args.T / args.T_short
    bad = long[long[col] > LINEAR_TOLERANCE * expected]
    head = f"- Linear in T ({label}, fwd+bwd T={args.T} over T={args.T_short}; linear = {expected:.2f}, " \
           f"threshold {LINEAR_TOLERANCE * expected:.2f}):"
    if bad.empty:
        return f"{head} **yes** (range {long[col].min():.2f}-{long[col].max():.2f})."
    names = ", ".join(f"{r.cell} [{r.impl}] {getattr(r, col):.2f}" for r in bad.itertuples())
    return f"{head} **no**; above the threshold: {names}."


def verdict_lines(df: pd.DataFrame, args: argparse.Namespace) -> list[str]:
    lines = [_target_line(df, T, "ratio_fwdbwd_vs_nn_lstm", "medians") for T in (args.T, args.T_short)]
    lines.append(_linear_line(df, args, "t784_over_t196", "medians"))
    rel = df["fwdbwd_ms_iqr"] / df["fwdbwd_ms_median"]
    noisy = df[rel > NOISY_IQR]
    if noisy.empty:
        lines.append(f"- Noise: every fwd+bwd IQR is within {NOISY_IQR:.0%} of its median (max {rel.max():.0%}).")
    else:
        lines.append(f"- Noise: **{len(noisy)} of {len(df)} rows have a fwd+bwd IQR above {NOISY_IQR:.0%} of the "
                     f"median** (max {rel.max():.0%}): the machine was probably shared during the run (see the load "
                     "averages above), so the median verdicts are unreliable. The same verdicts from the minima, "
                     "which contention inflates least:")
        lines += ["  " + _target_line(df, T, "ratio_fwdbwd_min_vs_nn_lstm", "minima") for T in (args.T, args.T_short)]
        lines.append("  " + _linear_line(df, args, "t784_over_t196_min", "minima"))
    return lines


def allocator_note(df: pd.DataFrame, args: argparse.Namespace, prov: dict[str, object]) -> list[str]:
    """On CPU with glibc's default thresholds, nn.LSTM's large oneDNN buffers go back to the OS after every iteration
    and are page-faulted in again, which makes the reference slow and super-linear in T (measured: 2-3x at T=784)."""
    if prov["device"] != "cpu" or prov["malloc"] != "default":
        return []
    ref = df[(df["key"] == REFERENCE) & (df["T"] == args.T)].iloc[0]
    if ref["t784_over_t196"] <= LINEAR_TOLERANCE * args.T / args.T_short:
        return []
    return [f"- Allocator: nn.LSTM's fwd+bwd is super-linear in T ({ref['t784_over_t196']:.2f}) under glibc's default "
            "malloc thresholds: its oneDNN buffers (see saved_or_peak_mb) are returned to the OS after every "
            "iteration and page-faulted in again, which inflates the reference and so flatters every ratio. "
            "Compare a run with `--tune-malloc` (or jemalloc/tcmalloc) before judging the 1.5x target."]


def write_markdown(df: pd.DataFrame, path: Path, args: argparse.Namespace, prov: dict[str, object]) -> None:
    cols = ["cell", "impl", "T", "fwd_ms_median", "fwd_ms_iqr", "fwdbwd_ms_median", "fwdbwd_ms_iqr",
            "fwdbwd_ms_min", "ratio_fwd_vs_nn_lstm", "ratio_fwdbwd_vs_nn_lstm", "t784_over_t196", "saved_or_peak_mb"]
    table = df[cols].copy()
    table["t784_over_t196"] = table["t784_over_t196"].map(lambda r: "" if math.isnan(r) else f"{r:.2f}")
    mem = "CUDA peak allocated (MB)" if prov["device"] == "cuda" else "tensors saved for backward (MB, unique storages)"
    header = [
        f"# Cell benchmark: {prov['device_name']}",
        "",
        f"- device: `{prov['device']}` ({prov['device_name']}); torch {prov['torch_version']}; "
        f"threads {prov['num_threads']}; Python {platform.python_version()}; {prov['extra']}; "
        f"malloc: {prov['malloc']}",
        f"- git {prov['git_sha']}; {prov['timestamp']}; timing took {prov['elapsed_s']:.0f} s; "
        f"1-min load average {prov['load_before']} before, {prov['load_after']} after "
        f"({os.cpu_count()} logical CPUs)",
        f"- sizes: B={args.batch}, n={args.hidden}, m={args.input_size}, T in {{{args.T}, {args.T_short}}}; "
        f"float32; seed {args.seed}",
        f"- protocol: {args.warmup} warm-up + {args.repeats} timed rounds per variant (interleaved, fresh inputs per "
        "round, same inputs for all variants); perf_counter (+cuda.synchronize on CUDA); fwd under no_grad; "
        "fwd+bwd loss = sum of the last output; times in ms; ratios to nn.LSTM's median in the same run and T; "
        f"t784_over_t196 = fwd+bwd median at T={args.T} over T={args.T_short}; memory: {mem}.",
        "",
        "## Verdict",
        "",
        *verdict_lines(df, args),
        *allocator_note(df, args, prov),
        "- `lstm [fused]` runs the same nn.LSTM as the reference, so its ratio shows this run's noise floor.",
        "",
        "## Results",
        "",
        table.to_markdown(index=False, floatfmt=".2f"),
        "",
    ]
    path.write_text("\n".join(header))


# ------------------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] (auto: cuda when available)")
    p.add_argument("--T", type=int, default=None, help="long sequence length (default 784; --quick 64)")
    p.add_argument("--T-short", dest="T_short", type=int, default=None,
                   help="short sequence length for the linearity check (default T // 4)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--input-size", dest="input_size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15 on CPU, 30 on CUDA; --quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 2 on CPU, 10 on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch.get_num_threads())")
    p.add_argument("--cells", default=None,
                   help="comma-separated subset of cell keys (nn_lstm is always included); --list prints them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: T=64, 3 repeats, 1 warm-up; writes <device>-quick.{csv,md}")
    p.add_argument("--out-dir", dest="out_dir", type=Path, default=ROOT / "results" / "bench")
    p.add_argument("--tune-malloc", dest="tune_malloc", action="store_true",
                   help="re-run this process with glibc's mmap/trim thresholds raised (MALLOC_MMAP_THRESHOLD_, "
                        "MALLOC_TRIM_THRESHOLD_), so large buffers (nn.LSTM's oneDNN workspace) are reused instead "
                        "of being page-faulted in on every iteration")
    p.add_argument("--tag", default="", help="suffix of the output names: <device>-<tag>.{csv,md}")
    p.add_argument("--list", action="store_true", help="print the cell keys and exit")
    p.add_argument("--no-flush-denormal", dest="no_flush_denormal", action="store_true",
                   help="keep denormal floats (the trainer flushes them on CPU, trainer.flush_denormal=true)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tune_malloc and argv is None and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        # glibc reads these variables when the process starts, so re-execute with them set
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    variants = all_variants()
    if args.list:
        for v in variants:
            print(f"{v.key:20s} {v.cell} [{v.impl}]")
        return 0
    if args.cells:
        wanted = {c.strip() for c in args.cells.split(",") if c.strip()}
        unknown = wanted - {v.key for v in variants}
        if unknown:
            raise SystemExit(f"unknown --cells {sorted(unknown)}; known: {[v.key for v in variants]}")
        variants = [v for v in variants if v.key == REFERENCE or v.key in wanted]

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    args.T = args.T or (64 if args.quick else 784)
    args.T_short = args.T_short or max(1, args.T // 4)
    args.repeats = args.repeats or (3 if args.quick else (30 if cuda else 15))
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else (10 if cuda else 3))

    torch.set_num_threads(args.threads or torch.get_num_threads())
    flushed = not args.no_flush_denormal and device.type == "cpu" and torch.set_flush_denormal(True)
    if args.no_flush_denormal:
        torch.set_flush_denormal(False)
    extra = f"mkldnn {torch.backends.mkldnn.is_available()}; flush_denormal {bool(flushed)}"
    if cuda:
        extra = (f"CUDA {torch.version.cuda}; cuDNN {torch.backends.cudnn.version()}; "
                 f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn {torch.backends.cudnn.allow_tf32}")
    prov = {
        "device": device.type, "device_name": device_name(device), "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(), "git_sha": git_sha(), "extra": extra, "malloc": malloc_setting(),
        "timestamp": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    print(f"bench: {prov['device_name']}, torch {prov['torch_version']}, {prov['num_threads']} threads; "
          f"T={args.T}/{args.T_short} B={args.batch} n={args.hidden} m={args.input_size}; "
          f"warmup {args.warmup}, repeats {args.repeats}; {len(variants)} variants", flush=True)

    build(variants, args.input_size, args.hidden, args.seed, device)
    prov["load_before"] = load_average()
    start = time.perf_counter()
    for T in (args.T, args.T_short):
        bench_T(variants, T, args, device)
    prov["elapsed_s"] = time.perf_counter() - start
    prov["load_after"] = load_average()
    print(f"timing took {prov['elapsed_s']:.0f} s", flush=True)

    df = to_frame(variants, args, prov)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "-".join(filter(None, [device_slug(device), "quick" if args.quick else "", args.tag]))
    csv_path, md_path = args.out_dir / f"{stem}.csv", args.out_dir / f"{stem}.md"
    df.drop(columns=["key"]).to_csv(csv_path, index=False, float_format="%.4f")
    write_markdown(df, md_path, args, prov)
    print(md_path.read_text())
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
