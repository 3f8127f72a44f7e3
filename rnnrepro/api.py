"""The library's entry function. ``run.py`` composes a config and calls :func:`run`; tests call the same function."""

from __future__ import annotations

import datetime as dt
import glob
import json
import logging
import os
import signal
import socket
import threading
from contextlib import contextmanager
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from rnnrepro import config_diff
from rnnrepro.config import ConfigError, validate
from rnnrepro.data import build_datamodule
from rnnrepro.loggers import CSVLogger, WandbMirror
from rnnrepro.models import build_model, count_parameters
from rnnrepro.results.summary import cpu_model, device_name, git_info, write_json_atomic
from rnnrepro.tasks import TaskType, build_task
from rnnrepro.training import checkpoint
from rnnrepro.training.algorithms import build_algorithm
from rnnrepro.training.optim import Schedule, build_optimizer
from rnnrepro.training.seeding import seed_everything
from rnnrepro.training.trainer import Trainer

log = logging.getLogger("rnnrepro")

RUN_ARTIFACTS = ("metrics.csv", "summary.json", "last.pt")
RUN_FILES = (*RUN_ARTIFACTS, "config.yaml", "best.pt")  # every file a run writes: none is overwritten unasked
LOCK = ".lock"
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR2") if hasattr(signal, name))


class Interrupted(Exception):
    """The run stopped on a signal after writing last.pt and a summary with status interrupted. ``previous`` is
    the handler that was installed before (a job scheduler's), for run.py to hand the signal on to."""

    def __init__(self, signum: int, previous: dict, message: str) -> None:
        super().__init__(message)
        self.signum, self.previous = signum, previous


def resolve_output_dir(cfg: DictConfig) -> str:
    if cfg.get("output_dir"):
        return os.path.abspath(str(cfg.output_dir))
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise ConfigError("output_dir: not set and no Hydra runtime; pass output_dir=<folder>")
    return os.path.abspath(HydraConfig.get().runtime.output_dir)


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}: CUDA is not available here; use trainer.device=auto or cpu")
    return device


def _metric(result: dict | None, key: str) -> float | None:
    return None if result is None else result.get(key)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Trains and evaluates one configuration; writes config.yaml, metrics.csv, summary.json (and last.pt,
    best.pt) into the output directory and returns the summary."""
    validate(cfg)  # every range check, before any work
    output_dir = resolve_output_dir(cfg)
    os.makedirs(output_dir, exist_ok=True)
    with run_dir_lock(output_dir):
        return _run_locked(cfg, output_dir)


def _run_locked(cfg: DictConfig, output_dir: str) -> dict[str, Any]:
    _remove_partial_writes(output_dir)
    resume_path = checkpoint.find_resume_checkpoint(cfg.resume, output_dir) if cfg.resume else None
    config_changes: list[str] = []
    if resume_path is None:
        existing = [f for f in RUN_FILES if os.path.exists(os.path.join(output_dir, f))]
        if existing and cfg.resume in ("auto", "force"):
            _set_aside_unstarted(output_dir)  # it died before its first checkpoint: nothing to continue
        elif existing:
            raise ConfigError(f"output dir {output_dir} already holds files a run writes ({', '.join(existing)}), "
                              "which this run would overwrite; pass resume=auto to continue a run of this harness "
                              "there, or choose another hydra.run.dir / output_dir")
    else:
        config_changes = _check_resume_config(cfg, resume_path)
    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    device = select_device(str(cfg.trainer.device))
    # Vanishing gradients of long sequences reach the denormal range, where x86 arithmetic is very slow. Set before
    # any parallel op: torch's worker threads take the floating-point mode of the thread that creates them.
    flush_denormal = bool(cfg.trainer.flush_denormal) and device.type == "cpu" and torch.set_flush_denormal(True)
    if device.type == "cpu" and not cfg.trainer.flush_denormal:
        torch.set_flush_denormal(False)
    seed = int(cfg.seed)
    seed_everything(seed, bool(cfg.trainer.deterministic))

    data = build_datamodule(cfg.data, seed)
    data.setup()  # missing files fail here, before anything is written
    task_kwargs = {"metric": data.spec.metric} if data.spec.task in (TaskType.classify_each, TaskType.tag) else {}
    if data.spec.task == TaskType.tag:
        task_kwargs["labels"] = data.spec.labels
    if data.spec.task == TaskType.classify_last or (data.spec.task == TaskType.multilabel_each
                                                     and data.spec.loss != "ce"):
        task_kwargs["loss"] = data.spec.loss
    task = build_task(data.spec.task, **task_kwargs)
    try:
        model = build_model(cfg.model, data.spec, task).to(device)
    except (RuntimeError, MemoryError) as err:
        if not isinstance(err, MemoryError) and "alloc" not in str(err).lower() and "out of memory" not in str(err):
            raise
        raise ConfigError(f"model.hidden_size={cfg.model.get('hidden_size')}: the model does not fit in "
                          f"{device.type} memory ({str(err).splitlines()[0][:200]}); choose a smaller "
                          "model.hidden_size (or fewer layers)") from None
    params, params_free = count_parameters(model)
    _check_memory_lower_bound(cfg, data.spec.seq_len, params, device)

    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    config_path = os.path.join(output_dir, "config.yaml")
    with open(config_path + ".tmp", "w") as f:  # renamed into place: a kill mid-write leaves the previous one whole
        f.write(OmegaConf.to_yaml(resolved))
    os.replace(config_path + ".tmp", config_path)

    optimizer = build_optimizer(cfg.optimizer, model)
    n_batches = data.num_train_batches()
    total_steps = n_batches * int(cfg.trainer.max_epochs)
    if cfg.trainer.max_steps is not None:
        total_steps = min(total_steps, int(cfg.trainer.max_steps))
    schedule = Schedule(cfg.scheduler, optimizer, total_steps=total_steps, total_epochs=int(cfg.trainer.max_epochs))
    algorithm = build_algorithm(cfg.algorithm, model, carry_state=bool(getattr(data, "carry_state", False)))

    wandb_id = checkpoint.load(resume_path).get("wandb_id") if resume_path else None
    mirror = WandbMirror(cfg.logger, resolved, output_dir, run_id=wandb_id)
    csv = CSVLogger(os.path.join(output_dir, "metrics.csv"))
    trainer = Trainer(cfg, model, data, algorithm, optimizer, schedule, device, output_dir, csv, mirror)
    if resume_path:
        trainer.load_last(resume_path)

    sha, dirty = git_info()
    summary: dict[str, Any] = {
        "experiment": cfg.meta.experiment, "paper": cfg.meta.paper, "table": cfg.meta.table, "row": cfg.meta.row,
        "tier": cfg.meta.tier, "model": cfg.model.name, "dataset": cfg.data.name, "seed": seed, "params": params,
        "params_free": params_free, "metric": task.metric, "mode": task.mode,
        # what "best" means for best_val, best_step and test_at_best_val: validation results compared in this order
        "selection": [list(rule) for rule in (data.spec.selection or ((task.metric, task.mode),))],
        "device": device.type,
        "device_name": device_name(device), "torch_version": torch.__version__, "git_sha": sha, "git_dirty": dirty,
        "host": socket.gethostname(), "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": data.describe(), "limit_eval_batches": cfg.trainer.limit_eval_batches,
        "deterministic": bool(cfg.trainer.deterministic), "flush_denormal": bool(flush_denormal),
        "cpu_model": cpu_model(), "output_dir": output_dir, "status": "running",
    }
    # a resumed run was trained by several processes, possibly at different SHAs: record each one
    trainer.p.segments.append({"from_step": trainer.p.step, "git_sha": sha, "git_dirty": dirty,
                               "started_at": summary["started_at"], "device_name": summary["device_name"],
                               "torch_version": torch.__version__, "config_changes": config_changes,
                               "slurm_job_id": os.environ.get("SLURM_JOB_ID")})
    summary["segments"] = trainer.p.segments
    log.info("%s | %s on %s | %d params (%d free) | %s | output %s", cfg.meta.experiment, cfg.model.name,
             cfg.data.name, params, params_free, summary["device_name"], output_dir)
    try:
        with stop_on_signals(trainer) as previous_handlers:
            outcome = trainer.fit()
        if outcome["status"] == "interrupted":
            summary.update(outcome)
            _finish(summary, trainer, output_dir)
            raise Interrupted(trainer.stop_signal, previous_handlers, outcome["error"])
        tests = trainer.test(diverged=outcome["status"] == "diverged")
    except Interrupted:
        raise
    except BaseException as err:
        # Ctrl-C (or a kill the process survives) is an interruption; anything else a failure
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        summary.update(status=status, error=f"{type(err).__name__}: {err}")
        _finish(summary, trainer, output_dir)
        raise
    summary.update(outcome)
    summary.update({
        "best_val": trainer.p.best_val, "best_step": trainer.p.best_step,
        "test_at_best_val": _metric(tests["test_at_best_val"], task.metric),
        "test_last": _metric(tests["test_last"], task.metric),
        "val_last": _metric(tests["val_last"], task.metric),
        "test_at_best_val_all": tests["test_at_best_val"], "test_last_all": tests["test_last"],
        "train_extras": trainer.data.train_extras(),  # e.g. the curriculum T reached (string_memo)
        # paper-code protocol (trainer.report_best_test): the best test value over evaluations, never used to select
        "best_test_over_evals": trainer.p.best_test_over_evals, "best_test_step": trainer.p.best_test_step,
        "stability_probe": tests.get("stability_probe"),  # trainer.stability_probe_every > 0 only
        "optimizer_switch": getattr(optimizer, "switched_at_validation", None),  # NT-ASGD: validation of the switch
    })
    _finish(summary, trainer, output_dir)
    log.info("%s: best val %s %s | test at best val %s | test last %s | %.0f s", summary["status"], task.metric,
             summary["best_val"], summary["test_at_best_val"], summary["test_last"], summary["wall_time_s"])
    return summary


def _check_memory_lower_bound(cfg: DictConfig, seq_len: int | None, params: int, device: torch.device) -> None:
    """A training step needs at least the weights and their gradients, and under full BPTT the hidden state of every
    time step of a batch (float32). When even that exceeds the device's memory, the run is refused here, before any
    file is written, instead of at its first batch (lazily allocated activations pass the model-build check)."""
    need = 4 * 2 * params
    if str(getattr(cfg.algorithm.name, "value", cfg.algorithm.name)) == "bptt" and seq_len:
        layers = int(cfg.model.get("num_layers") or 1)
        need += 4 * int(cfg.data.batch_size) * int(seq_len) * int(cfg.model.get("hidden_size") or 0) * layers
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    elif device.type == "cpu" and hasattr(os, "sysconf"):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:
        return
    if need > total:
        raise ConfigError(f"model.hidden_size={cfg.model.get('hidden_size')} with data.batch_size="
                          f"{cfg.data.batch_size} over {seq_len} steps needs at least {need / 2**30:.0f} GiB (weights, "
                          f"gradients and the hidden state of every step), more than the {total / 2**30:.0f} GiB of "
                          f"{device.type} memory here; choose a smaller model.hidden_size or data.batch_size")


def _check_resume_config(cfg: DictConfig, resume_path: str) -> list[str]:
    """Compares the run's saved config.yaml with this request before anything is written. A raised budget
    (config_diff.BUDGET_KEYS) continues; any other difference is refused, listing the keys, unless resume=force.
    Returns the accepted changes, recorded in the run's segments."""
    saved_path = os.path.join(os.path.dirname(os.path.abspath(resume_path)), "config.yaml")
    if not os.path.exists(saved_path):
        log.warning("resume: no config.yaml beside %s, so the settings it was trained with cannot be checked",
                    resume_path)
        return []
    saved = OmegaConf.to_container(OmegaConf.load(saved_path), resolve=False)
    changes = config_diff.config_changes(cfg, saved)
    had, wanted = config_diff.flatten(saved), config_diff.flatten(OmegaConf.to_container(cfg, resolve=True))
    refused = [text for key, text in changes.items()
               if not (key in config_diff.BUDGET_KEYS and config_diff.budget_grows(had.get(key), wanted.get(key)))]
    if refused and cfg.resume != "force":
        raise ConfigError(f"resume: the run in {os.path.dirname(saved_path)} was trained with other settings, and "
                          f"continuing it under these would mislabel it: {'; '.join(refused)}. Resume with the run's "
                          "own settings (only the budgets trainer.max_steps / max_epochs / max_time_s / "
                          "max_cpu_time_s may be raised), start a new output_dir, or pass resume=force to continue "
                          "under the new settings (recorded in summary.json's segments)")
    if refused:
        log.warning("resume=force: continuing under changed settings: %s", "; ".join(refused))
    return list(changes.values())


@contextmanager
def stop_on_signals(trainer: Trainer):
    """SIGTERM (SLURM's notice before preemption or the time limit) and SIGUSR2 (submitit's) ask the trainer to
    stop at the next batch boundary and write last.pt. Yields the handlers replaced, restored on exit."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield {}
        return

    def request_stop(signum, frame):
        if trainer.stop_signal is None:
            log.warning("%s received: stopping after this batch", signal.Signals(signum).name)
        trainer.stop_signal = signum

    previous = {sig: signal.signal(sig, request_stop) for sig in STOP_SIGNALS}
    try:
        yield previous
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def run_dir_lock(output_dir: str):
    """<output_dir>/.lock holds the PID, host and SLURM job of the run writing there. A second run refuses at once;
    a lock whose process is gone (same host, or the same SLURM job requeued) is taken over with a warning."""
    path = os.path.join(output_dir, LOCK)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if attempt or not _lock_is_stale(holder, mine):
                raise ConfigError(
                    f"output dir {output_dir} is in use by the run of PID {holder.get('pid')} on host "
                    f"{holder.get('host')} (since {holder.get('since')}; {path}). Wait for it, or choose another "
                    "hydra.run.dir / output_dir. If that process is gone (a crashed node), delete the .lock file"
                ) from None
            log.warning("output dir %s: taking over the stale lock of PID %s on host %s (since %s): that process "
                        "is gone", output_dir, holder.get("pid"), holder.get("host"), holder.get("since"))
            os.remove(path)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        break
    try:
        yield
    finally:
        holder = _read_lock(path)
        if (holder.get("pid"), holder.get("host")) == (mine["pid"], mine["host"]):
            os.remove(path)


def _read_lock(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}  # unreadable or half-written (its writer was killed): no process can be named


def _lock_is_stale(holder: dict, mine: dict) -> bool:
    if not holder:
        return True
    if holder.get("slurm_job_id") and holder.get("slurm_job_id") == mine["slurm_job_id"]:
        return True  # this SLURM job, requeued: its earlier process is gone, possibly on another node
    if holder.get("host") != mine["host"]:
        return False  # another machine's process cannot be checked from here
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def _remove_partial_writes(output_dir: str) -> None:
    """Temp files of writes that were killed: checkpoints (checkpoint.save_atomic) and the metrics, summary and
    config files, each written beside its target and renamed over it. The lock is held, so no live writer owns
    them."""
    partial = glob.glob(os.path.join(output_dir, ".tmp-*.pt"))
    partial += [p for name in ("metrics.csv", "summary.json", "config.yaml")
                if os.path.exists(p := os.path.join(output_dir, name + ".tmp"))]
    for path in partial:
        os.remove(path)
    if partial:
        log.warning("removed %d partial file(s) left by a killed write: %s", len(partial),
                    ", ".join(os.path.basename(p) for p in partial))


def _set_aside_unstarted(output_dir: str) -> None:
    """resume=auto on a run that stopped before its first last.pt (killed at startup or in its first checkpoint
    write): it holds nothing to continue, so it restarts from step 0. A finished run is never restarted, and the
    earlier files are kept, renamed <name>.unstarted-<UTC time><ext> (outside the names the readers collect)."""
    summary_path = os.path.join(output_dir, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            status = json.load(f).get("status")
        if status in ("completed", "diverged"):
            raise ConfigError(f"output dir {output_dir} holds a {status} run whose last.pt is missing: it cannot be "
                              "continued and is not restarted over; choose another hydra.run.dir / output_dir")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kept = []
    for name in RUN_FILES:
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            stem, ext = os.path.splitext(name)
            os.replace(path, os.path.join(output_dir, f"{stem}.unstarted-{stamp}{ext}"))
            kept.append(name)
    log.warning("resume=auto: %s stopped before its first checkpoint; starting it from step 0 (its %s are kept "
                "as *.unstarted-%s.*)", output_dir, ", ".join(kept), stamp)


def _finish(summary: dict, trainer: Trainer, output_dir: str) -> None:
    epochs = trainer.p.epoch + trainer.p.batch_in_epoch / max(trainer.data.num_train_batches(trainer.p.epoch), 1)
    summary.update({"steps": trainer.p.step, "time_steps": trainer.p.time_steps, "epochs": round(epochs, 4),
                    "wall_time_s": round(trainer._elapsed(), 3), "cpu_time_s": round(trainer.p.cpu_time_s, 3),
                    "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    summary.setdefault("error", None)
    write_json_atomic(summary, os.path.join(output_dir, "summary.json"))
    trainer.mirror.finish(summary)
