"""Command-line entry: ``python run.py model=sbo dataset=pmnist [key=value ...]`` (see README.md)."""

import logging
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import rnnrepro.config  # noqa: F401  (registers the config schemas)
from rnnrepro.api import Interrupted, run
from rnnrepro.config import ConfigError
from rnnrepro.data import DataNotFoundError
from rnnrepro.hydra_callbacks import record_job_failure

log = logging.getLogger("rnnrepro")


def warn_on_swapped_groups() -> None:
    """A preset's model.* values carry over onto a model swapped in on the command line; say so."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    if hc.runtime.choices.get("experiment") is None:
        return
    for override in hc.overrides.task:
        group = override.split("=", 1)[0]
        if group in ("model", "dataset"):
            log.warning("experiment=%s with %s: the preset's %s.* settings still apply to the swapped-in choice",
                        hc.runtime.choices["experiment"], override, "model" if group == "model" else "data")


def hand_over(stop: Interrupted) -> None:
    """After a stop signal, last.pt and the summary are written: let a job scheduler's own handler act (submitit's
    requeues the job on SLURM and exits), else exit 128 + the signal number, as a process killed by it would."""
    requeue = stop.previous.get(getattr(signal, "SIGUSR2", None))
    if getattr(requeue, "__name__", "") == "checkpoint_and_try_requeue":  # submitit: SIGTERM too means preempted
        requeue(stop.signum, None)
    handler = stop.previous.get(stop.signum)
    if callable(handler) and getattr(handler, "__name__", "") != "bypass":
        handler(stop.signum, None)
    raise SystemExit(128 + stop.signum)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    warn_on_swapped_groups()
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        summary = run(cfg)
    except Interrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        hand_over(stop)
    except (ConfigError, DataNotFoundError) as err:
        # Bad input: say what is wrong and how to fix it, without a traceback.
        print(f"error: {err}", file=sys.stderr)
        if not multirun:
            raise SystemExit(2) from None
        # in a sweep the job fails alone: the others run, and sweep_summary.csv lists it
        record_job_failure(hydra_cfg.runtime.output_dir, cfg, "rejected", err)
        return float("nan")
    except Exception as err:
        if not multirun:
            raise
        log.exception("job %s failed", hydra_cfg.job.num)
        record_job_failure(hydra_cfg.runtime.output_dir, cfg, "failed", err)
        return float("nan")  # Optuna records NaN as a failed trial
    best = summary.get("best_val")  # the objective for hydra/sweeper=optuna
    return float("nan") if best is None else best


if __name__ == "__main__":
    main()
