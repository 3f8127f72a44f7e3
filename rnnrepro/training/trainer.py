"""The training loop: budgets, evaluation, model selection on validation, checkpoints and resume.

Evaluation protocol: the validation metric is computed every epoch (or every ``trainer.eval_every_n_steps``
optimizer steps); the weights with the best validation metric are kept in ``best.pt``. At the end the test split is
evaluated twice: with the best-validation weights (``test_at_best_val``) and with the last weights (``test_last``).
The test set never influences training or selection.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from rnnrepro.data.base import SequenceDataModule
from rnnrepro.loggers import CSVLogger, WandbMirror
from rnnrepro.models import SequenceModel
from rnnrepro.training import checkpoint
from rnnrepro.training.algorithms import Diverged, GradientAlgorithm
from rnnrepro.training.optim import Schedule
from rnnrepro.training.seeding import rng_state, set_rng_state

log = logging.getLogger("rnnrepro")


@dataclass
class Progress:
    step: int = 0  # optimizer steps
    time_steps: int = 0  # sequence steps trained on (online algorithms take one optimizer step per time step)
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of the current epoch already trained on
    best_val: float | None = None  # the task's metric at the selected validation
    best_step: int | None = None
    best_key: list | None = None  # the selection key there (DataSpec.selection, each oriented so larger is better)
    best_test_over_evals: float | None = None  # trainer.report_best_test only (paper-code protocol)
    best_test_step: int | None = None
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0  # this process's CPU time (all its threads), summed like wall_time_s
    last_eval_step: int = -1
    validations: int = 0
    train_loss_sum: float = 0.0
    train_loss_count: int = 0
    diagnostic_sums: dict = field(default_factory=dict)  # algorithm diagnostics (e.g. OK's), averaged per train row
    diagnostic_counts: dict = field(default_factory=dict)  # batches that reported each (a probe may skip batches)
    history: list = field(default_factory=list)
    # one entry per process that trained this run (the first, then each resume): the code and device it ran with
    segments: list = field(default_factory=list)


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Trainer:
    def __init__(self, cfg: Any, model: SequenceModel, data: SequenceDataModule, algorithm: GradientAlgorithm,
                 optimizer: torch.optim.Optimizer, schedule: Schedule, device: torch.device, output_dir: str,
                 csv: CSVLogger, mirror: WandbMirror) -> None:
        self.cfg, self.tcfg = cfg, cfg.trainer
        self.model, self.data, self.algorithm = model, data, algorithm
        self.optimizer, self.schedule, self.device = optimizer, schedule, device
        self.output_dir, self.csv, self.mirror = output_dir, csv, mirror
        self.task = model.task
        self.p = Progress()
        self._clock, self._cpu_clock = time.perf_counter(), time.process_time()
        carry_eval = getattr(data, "eval_carry_state", None)
        self.eval_carry_state = algorithm.carry_state if carry_eval is None else bool(carry_eval)
        algorithm.should_stop = lambda: not self._budget_left()
        algorithm.want_step_losses = type(data).observe is not SequenceDataModule.observe
        self._progress_clock = None  # (perf_counter, step, fraction) at the last progress line
        self._lr_scale = 1.0
        self.stop_signal: int | None = None  # set by the SIGTERM/SIGUSR2 handler of api.run: stop at the next batch
        self.last_path = os.path.join(output_dir, "last.pt")
        self.best_path = os.path.join(output_dir, "best.pt")

    # ------------------------------------------------------------------------------------------ optimizer step
    def _update(self) -> int:
        if self.tcfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.tcfg.grad_clip))
        if self._lr_scale != 1.0:  # variable BPTT: this window's lr is scaled by its length / bptt (awd-lstm-lm)
            lrs = [group["lr"] for group in self.optimizer.param_groups]
            for group in self.optimizer.param_groups:
                group["lr"] *= self._lr_scale
            self.optimizer.step()
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.after_optimizer_step()  # projections of constrained weights
        self.schedule.step("step")
        self.p.step += 1
        return self.p.step

    # ---------------------------------------------------------------------------------------------- evaluation
    def eval_weights(self):
        """The weights evaluation and the best checkpoint use: the optimizer's averages where it keeps them
        (NT-ASGD after its switch), else the weights themselves."""
        averaged = getattr(self.optimizer, "averaged_weights", None)
        return averaged() if averaged is not None else contextlib.nullcontext()

    def evaluate(self, split: str) -> dict[str, float]:
        with self.eval_weights():
            return self._evaluate(split)

    @torch.no_grad()
    def _evaluate(self, split: str) -> dict[str, float]:
        from rnnrepro.tasks.base import Meter

        self.model.eval()
        meter, state = Meter(), None
        limit = self.tcfg.limit_eval_batches
        for i, batch in enumerate(self.data.eval_batches(split)):
            if limit is not None and i >= limit:
                break
            batch = self._to_device(batch)
            out, new_state = self.model(batch["x"], state)
            state = new_state if self.eval_carry_state else None
            self.task.update(meter, out, batch)
        self.model.train()
        return {**self.task.compute(meter), **self.data.eval_extras(split)}

    def selection_key(self, metrics: dict) -> list[float] | None:
        """The validation result as a key compared lexicographically (larger is better); None when not finite."""
        rule = self.data.spec.selection or ((self.task.metric, self.task.mode),)
        key = [float(metrics[name]) * (1.0 if mode == "max" else -1.0) for name, mode in rule]
        # a NaN model can score a finite accuracy (argmax of NaN outputs): its loss says it is not a result
        finite = all(math.isfinite(k) for k in key) and math.isfinite(float(metrics.get("loss", 0.0)))
        return key if finite else None

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _elapsed(self) -> float:
        now = time.perf_counter()
        self.p.wall_time_s += now - self._clock
        self._clock = now
        cpu = time.process_time()
        self.p.cpu_time_s += cpu - self._cpu_clock
        self._cpu_clock = cpu
        return self.p.wall_time_s

    def _log_row(self, split: str, metrics: dict) -> dict:
        row = {"step": self.p.step, "time_steps": self.p.time_steps, "epoch": self.p.epoch, "split": split, **metrics,
               "lr": self.optimizer.param_groups[0]["lr"], "wall_time_s": round(self._elapsed(), 3)}
        self.csv.log(row)
        self.mirror.log(row)
        return row

    def _validate_and_checkpoint(self) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise Diverged("the weights are not finite at validation")  # before anything is saved from them
        if self.p.train_loss_count:
            diagnostics = {k: float(v) / self.p.diagnostic_counts.get(k, self.p.train_loss_count)
                           for k, v in self.p.diagnostic_sums.items()}
            self._log_row("train", {"loss": self.p.train_loss_sum / self.p.train_loss_count, **diagnostics,
                                    **self.data.train_extras()})
        with self.eval_weights():
            metrics = self._evaluate("val")
            value = metrics[self.task.metric]
            key = self.selection_key(metrics)
            improved = key is not None and (self.p.best_key is None or key > self.p.best_key)
            if improved:
                self.p.best_val, self.p.best_step, self.p.best_key = value, self.p.step, key
                checkpoint.save_atomic({"model": self.model.state_dict(), "step": self.p.step}, self.best_path)
            if self.tcfg.report_best_test:  # compatibility number only: never used for selection
                test = self._evaluate("test")
            self.p.validations += 1
            every = int(self.tcfg.stability_probe_every)
            if every and self.p.validations % every == 0:
                probe = self.stability_probe("val")
                metrics.update({f"jac_norm_{k}": probe[k] for k in ("median", "q90", "max", "frac_below_1")})
        self._log_row("val", metrics)
        if self.tcfg.report_best_test:
            self._log_row("test_each_eval", test)
            test_value = test[self.task.metric]
            if self.task.is_better(test_value, self.p.best_test_over_evals):
                self.p.best_test_over_evals, self.p.best_test_step = test_value, self.p.step
        self.schedule.observe(value, self.task.mode, epochs_done=self.p.epoch)
        observe = getattr(self.optimizer, "observe", None)
        if observe is not None:  # NT-ASGD's switch
            observe(value, self.task.mode)
        log.info("step %d epoch %d | train loss %.4f | val %s %.4f%s", self.p.step, self.p.epoch,
                 self.p.train_loss_sum / max(self.p.train_loss_count, 1), self.task.metric, value,
                 " (best)" if improved else "")
        self.p.train_loss_sum, self.p.train_loss_count = 0.0, 0
        self.p.diagnostic_sums, self.p.diagnostic_counts = {}, {}
        self.p.last_eval_step = self.p.step
        if self.tcfg.checkpoint:
            self.save_last()

    def stability_probe(self, split: str) -> dict:
        """The state-Jacobian norm distribution on ``split`` with the current weights (rnnrepro/stability.py)."""
        from rnnrepro.stability import stability_probe

        limit = self.tcfg.limit_eval_batches
        batches = (self._to_device(b) for i, b in enumerate(self.data.eval_batches(split))
                   if limit is None or i < limit)
        return stability_probe(self.model, batches, int(self.tcfg.stability_probe_points),
                               int(self.tcfg.stability_probe_iterations))

    # ------------------------------------------------------------------------------------------- checkpoints
    def save_last(self) -> None:
        self._elapsed()
        checkpoint.save_atomic({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "progress": self.p.__dict__.copy(), "rng": rng_state(),
            "data": self.data.checkpoint_state(), "data_description": self.data.describe(),
            "algorithm_state": self.algorithm.state, "wandb_id": self.mirror.run_id,
        }, self.last_path)

    def load_last(self, path: str) -> None:
        state = checkpoint.load(path)
        saved, current = state["data_description"], self.data.describe()
        if saved.get("permutation_sha1") != current.get("permutation_sha1"):
            raise RuntimeError(f"checkpoint {path} was trained with permutation {saved.get('permutation_sha1')}, "
                               f"this run builds {current.get('permutation_sha1')}; refusing to resume")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.p = Progress(**state["progress"])
        if self.p.best_key is None and self.p.best_val is not None and not self.data.spec.selection:
            # a checkpoint written before best_key existed selected on the task's metric alone
            self.p.best_key = self.selection_key({self.task.metric: self.p.best_val})
        self.algorithm.state = state["algorithm_state"]
        self.data.load_checkpoint_state(state["data"])
        set_rng_state(state["rng"])
        self.csv.truncate_after(self.p.step)
        self._clock, self._cpu_clock = time.perf_counter(), time.process_time()
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.p.step, self.p.epoch,
                 self.p.batch_in_epoch)

    # ------------------------------------------------------------------------------------------------- loop
    def _budget_fraction(self, n_batches: int) -> float:
        """How much of the budget is spent: the largest fraction over the budgets set (epochs, steps, time)."""
        epochs = (self.p.epoch + self.p.batch_in_epoch / max(n_batches, 1)) / int(self.tcfg.max_epochs)
        max_steps, max_time, max_cpu = self.tcfg.max_steps, self.tcfg.max_time_s, self.tcfg.max_cpu_time_s
        return max(epochs, self.p.step / int(max_steps) if max_steps is not None else 0.0,
                   self.p.wall_time_s / float(max_time) if max_time is not None else 0.0,
                   self.p.cpu_time_s / float(max_cpu) if max_cpu is not None else 0.0)

    def _progress_line(self, n_batches: int, loss: float, terminal: bool) -> None:
        """Off a terminal (log files, job schedulers) a line every trainer.log_every_s seconds: the tqdm bar's
        information, plus steps per second and the time left."""
        every = float(self.tcfg.log_every_s)
        if terminal or every <= 0:
            return
        now, fraction = time.perf_counter(), self._budget_fraction(n_batches)
        if self._progress_clock is None:
            self._progress_clock = (now, self.p.step, fraction)
            return
        then, step_then, fraction_then = self._progress_clock
        if now - then < every:
            return
        rate = (self.p.step - step_then) / (now - then)
        speed = (fraction - fraction_then) / (now - then)
        eta = (1 - fraction) / speed if speed > 0 else float("nan")
        total = f"/{int(self.tcfg.max_steps)}" if self.tcfg.max_steps is not None else ""
        log.info("step %d%s | epoch %d/%d batch %d/%d | loss %.4f | %.2f steps/s | %.0f%% | ETA %s", self.p.step,
                 total, self.p.epoch + 1, int(self.tcfg.max_epochs), self.p.batch_in_epoch, n_batches, loss, rate,
                 100 * fraction, _duration(eta))
        self._progress_clock = (now, self.p.step, fraction)

    def _budget_left(self) -> bool:
        max_steps, max_time, max_cpu = self.tcfg.max_steps, self.tcfg.max_time_s, self.tcfg.max_cpu_time_s
        if self.p.epoch >= int(self.tcfg.max_epochs) or (max_steps is not None and self.p.step >= int(max_steps)):
            return False
        if max_time is None and max_cpu is None:
            return True
        self._elapsed()
        return ((max_time is None or self.p.wall_time_s < float(max_time))
                and (max_cpu is None or self.p.cpu_time_s < float(max_cpu)))

    def fit(self) -> dict:
        """Trains until a budget ends. Returns {status, error}; raises nothing for divergence."""
        status, error = "completed", None
        eval_every = self.tcfg.eval_every_n_steps
        show_bar = bool(self.tcfg.progress_bar) and sys.stderr.isatty()
        self.model.train()
        try:
            while self._budget_left() and self.stop_signal is None:
                n_batches = self.data.num_train_batches(self.p.epoch)
                if self.p.batch_in_epoch == 0 and not self.data.continuous_stream:
                    self.algorithm.reset()
                bar = tqdm(total=n_batches, initial=self.p.batch_in_epoch, desc=f"epoch {self.p.epoch}",
                           leave=False, disable=not show_bar, dynamic_ncols=True)
                for batch in self.data.train_batches(self.p.epoch, self.p.batch_in_epoch):
                    step_before = self.p.step
                    self._lr_scale = float(batch.pop("lr_scale", 1.0))
                    loss = self.algorithm.train_batch(self._to_device(batch), self._update)
                    if self.algorithm.step_losses is not None:
                        self.data.observe(self.algorithm.step_losses.cpu())
                    self.p.time_steps += int(batch["x"].shape[1]) if batch["x"].dim() > 1 else 1
                    self.p.train_loss_sum += loss
                    for key, value in self.algorithm.diagnostics.items():
                        self.p.diagnostic_sums[key] = self.p.diagnostic_sums.get(key, 0.0) + value  # on the device
                        self.p.diagnostic_counts[key] = self.p.diagnostic_counts.get(key, 0) + 1
                    self.p.train_loss_count += 1
                    self.p.batch_in_epoch += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    self._progress_line(n_batches, loss, show_bar)
                    # online algorithms take many optimizer steps per batch: evaluate when a multiple is crossed
                    if eval_every is not None and self.p.step // int(eval_every) > step_before // int(eval_every):
                        self._validate_and_checkpoint()
                    if self.stop_signal is not None or not self._budget_left():
                        break
                bar.close()
                if self.stop_signal is not None and self._budget_left():
                    return self._interrupted()
                epoch_done = self.p.batch_in_epoch >= n_batches
                if epoch_done:
                    self.p.epoch += 1
                    self.p.batch_in_epoch = 0
                    self.schedule.step("epoch")
                if (epoch_done and eval_every is None) or not self._budget_left():
                    if self.p.last_eval_step != self.p.step:
                        self._validate_and_checkpoint()
            if self.stop_signal is not None and self._budget_left():
                return self._interrupted()
            if self.tcfg.checkpoint:  # the end state (epoch count, schedule): a resume from here tests the same
                self.save_last()
        except Diverged as err:
            status, error = "diverged", f"{err} at optimizer step {self.p.step}; {self._good_checkpoints()}"
            log.error(error)
        return {"status": status, "error": error}

    def _interrupted(self) -> dict:
        """A stop signal (SLURM's SIGTERM before preemption or the time limit): save last.pt at this batch boundary,
        without the validation (the grace time is short); resume=auto continues exactly from here."""
        name = signal.Signals(self.stop_signal).name
        if self.tcfg.checkpoint:
            self.save_last()
            where = f"last.pt holds step {self.p.step}; resume=auto continues from it"
        else:
            where = "trainer.checkpoint=false, so nothing holds it"
        error = f"stopped by {name} at optimizer step {self.p.step}; {where}"
        log.warning(error)
        return {"status": "interrupted", "error": error}

    def _good_checkpoints(self) -> str:
        """Which files hold weights from before the divergence (both are written only from finite weights)."""
        good = []
        if self.tcfg.checkpoint and self.p.last_eval_step >= 0 and os.path.exists(self.last_path):
            good.append(f"last.pt (step {self.p.last_eval_step})")
        if self.p.best_step is not None and os.path.exists(self.best_path):
            good.append(f"best.pt (step {self.p.best_step})")
        return ("good checkpoints kept: " + ", ".join(good)) if good else "no checkpoint was written before it"

    def test(self, diverged: bool) -> dict:
        """Test metrics with the last weights and with the best-validation weights."""
        result: dict[str, Any] = {"test_last": None, "test_at_best_val": None, "val_last": None}
        if not diverged:
            result["test_last"] = self.evaluate("test")
            self._log_row("test_last", result["test_last"])
            last = self.csv.last("val")
            result["val_last"] = {k: v for k, v in last.items() if k not in ("step", "epoch", "split",
                                                                               "wall_time_s", "lr")} if last else None
        if os.path.exists(self.best_path):
            current = {k: v.clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(checkpoint.load(self.best_path)["model"])
            result["test_at_best_val"] = self._evaluate("test")  # best.pt already holds the evaluated weights
            self._log_row("test_at_best_val", result["test_at_best_val"])
            if self.tcfg.stability_probe_every:
                result["stability_probe"] = {"split": "test", "weights": "best_val", **self.stability_probe("test")}
            self.model.load_state_dict(current)
        return result
