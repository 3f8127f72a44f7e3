"""The run's root config schema (trainer, logger, meta), component discovery and validation.

Each component's schema lives in its own module (cells in ``rnnrepro/cells/``, datasets in ``rnnrepro/data/``,
optimizers and schedules in ``rnnrepro/training/optim.py``, algorithms in ``rnnrepro/training/algorithms.py``) and is
registered there with :func:`rnnrepro.schema.register_schema`. Importing this module imports every component module,
so that every schema is in Hydra's ConfigStore before a config is composed. :func:`validate` runs every range check
and the cross-component checks before any data is touched.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from rnnrepro.schema import SCHEMAS, ConfigError, require

__all__ = ["SCHEMAS", "Config", "ConfigError", "LoggerConfig", "MetaConfig", "TrainerConfig", "validate"]

COMPONENT_PACKAGES = ("rnnrepro.cells", "rnnrepro.data")
COMPONENT_MODULES = ("rnnrepro.models", "rnnrepro.training.optim", "rnnrepro.training.algorithms")


def import_components() -> None:
    """Imports every module of the component packages (each registers its schema) and the other schema modules."""
    for package_name in COMPONENT_PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package_name}.{module.name}")
    for name in COMPONENT_MODULES:
        importlib.import_module(name)


import_components()

from rnnrepro.training.algorithms import AlgorithmConfig  # noqa: E402
from rnnrepro.training.optim import SchedulerConfig  # noqa: E402


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    max_steps: int | None = None  # optimizer steps; whichever budget ends first stops the run
    # wall-clock seconds of training, evaluations included, summed over resumes (a budget for equal-time
    # comparisons; the steps it buys depend on the machine and its load, which summary.json records)
    max_time_s: float | None = None
    # CPU seconds of this process (all threads), summed over resumes: the load-independent form of the same budget
    # when runs share a machine (at trainer.num_threads=1 it is the wall clock the run would take alone)
    max_cpu_time_s: float | None = None
    eval_every_n_steps: int | None = None  # None: evaluate at the end of each epoch
    limit_eval_batches: int | None = None  # for smoke runs only; recorded in the summary
    grad_clip: float | None = None  # max global L2 norm
    device: str = "auto"
    deterministic: bool = False
    num_threads: int | None = None
    progress_bar: bool = True  # shown only on a terminal
    log_every_s: float = 30.0  # off a terminal: a progress line every N seconds (0 disables)
    flush_denormal: bool = True  # CPU: treat denormal floats as zero (x86 denormal arithmetic is very slow)
    # Compatibility only, for papers whose code reports the best test value over evaluations: evaluate test at every
    # evaluation and record best_test_over_evals in summary.json. Never used for selection or checkpoints.
    report_best_test: bool = False
    checkpoint: bool = True
    # Data-dependent stability (rnnrepro/stability.py; a harness design, spec S9): every N-th validation, the
    # distribution of ||d s_t / d s_{t-1}||_2 over up to stability_probe_points validation time steps goes into the
    # val row of metrics.csv, and at the end the test split's (best-validation weights) into summary.json. 0: off
    stability_probe_every: int = 0
    stability_probe_points: int = 1000
    stability_probe_iterations: int = 50  # power iterations where the state has more than 256 entries

    def __post_init__(self) -> None:
        require(self.max_epochs >= 1, "trainer.max_epochs", f"must be >= 1, got {self.max_epochs}")
        require(self.max_steps is None or self.max_steps >= 1, "trainer.max_steps",
                f"must be >= 1 or null, got {self.max_steps}")
        for key in ("max_time_s", "max_cpu_time_s"):
            require(getattr(self, key) is None or getattr(self, key) > 0, f"trainer.{key}",
                    f"must be > 0 or null, got {getattr(self, key)}")
        require(self.eval_every_n_steps is None or self.eval_every_n_steps >= 1, "trainer.eval_every_n_steps",
                f"must be >= 1 or null, got {self.eval_every_n_steps}")
        require(self.limit_eval_batches is None or self.limit_eval_batches >= 1, "trainer.limit_eval_batches",
                f"must be >= 1 or null (every batch), got {self.limit_eval_batches}")
        require(self.log_every_s >= 0, "trainer.log_every_s", f"must be >= 0, got {self.log_every_s}")
        require(self.num_threads is None or self.num_threads >= 1, "trainer.num_threads",
                f"must be >= 1 or null (torch's default), got {self.num_threads}")
        require(self.stability_probe_every >= 0, "trainer.stability_probe_every",
                f"must be >= 0 (0: off), got {self.stability_probe_every}")
        require(self.stability_probe_points >= 1 and self.stability_probe_iterations >= 1,
                "trainer.stability_probe_points/iterations", "must be >= 1")
        require(self.grad_clip is None or self.grad_clip > 0, "trainer.grad_clip",
                f"must be > 0 or null, got {self.grad_clip}")
        require(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"), "trainer.device",
                f"must be one of auto, cpu, cuda, cuda:N, mps; got {self.device!r}")


class WandbMode(str, Enum):
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class LoggerConfig:
    name: str = "csv"
    # W&B mirror settings; used only when name == "wandb". CSV and JSON are always written.
    mode: WandbMode | None = None  # null: W&B's own choice ($WANDB_MODE if set, else online)
    project: str = "rnnrepro"
    entity: str | None = None
    group: str | None = None
    tags: list = field(default_factory=list)
    init_timeout_s: float = 30.0  # an unreachable server stops the mirror after this, and the run goes on CSV-only

    def __post_init__(self) -> None:
        require(self.name in ("csv", "wandb"), "logger.name", f"must be csv or wandb, got {self.name!r}")
        require(self.init_timeout_s > 0, "logger.init_timeout_s", f"must be > 0, got {self.init_timeout_s}")


@dataclass
class MetaConfig:
    """Identifies a run for aggregation: the experiment preset and the paper table row it reproduces."""

    experiment: str = "adhoc"
    paper: str | None = None
    table: str | None = None
    row: str | None = None
    tier: str | None = None  # smoke | reduced | full, set by scripts/reproduce_tables.py
    seeds: list = field(default_factory=lambda: [0, 1, 2])  # the seeds a paper table averages over
    # The reduced tier's overrides (reproduce_tables.py --tier reduced): a stated smaller budget for a preset whose
    # full budget does not fit this machine. Empty: the preset has no reduced tier
    reduced: list = field(default_factory=list)
    # The seeds the reduced tier runs (empty: meta.seeds), for a reduced budget that fits only a few seeds
    reduced_seeds: list = field(default_factory=list)


@dataclass
class Config:
    model: Any = MISSING
    data: Any = MISSING
    optimizer: Any = MISSING
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    seed: int = 0
    resume: str | None = None  # null | auto | force | path to last.pt or to a run directory
    output_dir: str | None = None  # null: Hydra's runtime output dir


def register_configs() -> None:
    """The root schema and the run-wide groups (trainer, logger); components register themselves on import."""
    cs = ConfigStore.instance()
    cs.store(name="rnnrepro_schema", node=Config)
    cs.store(group="schema", name="trainer", node=TrainerConfig)
    cs.store(group="schema", name="logger", node=LoggerConfig)


register_configs()


def validate(cfg: DictConfig) -> Config:
    """Instantiates the schemas (running every range check) and returns the typed config.

    Raises ConfigError naming the key and the fix; composition errors (unknown keys, wrong types, unknown enum
    values, unknown group options) are raised by Hydra itself before this point.
    """
    for key in ("model", "data", "optimizer"):
        node = cfg.get(key)
        if node is None or OmegaConf.get_type(node) is dict:
            raise ConfigError(f"{key}: the selected config is not backed by a schema; its YAML must start with a "
                             f"defaults entry such as '/schema/{key}/<name>@_here_'")
    _reject_unknown_keys(cfg, "")
    typed = OmegaConf.to_object(cfg)
    _check_algorithm_fits(typed)
    _check_schedule(typed)
    _check_curriculum(cfg)
    _check_resume(cfg.get("resume"))
    require(0 <= typed.seed < 2**32, "seed", f"must be in [0, 2**32 - 1] (numpy's seed range), got {typed.seed}")
    return typed


def _check_resume(resume) -> None:
    if resume is None or resume in ("auto", "force") or os.path.exists(str(resume)):
        return
    hint = next((f" (did you mean resume={word}?)" for word in ("auto", "force")
                 if difflib.SequenceMatcher(None, str(resume), word).ratio() >= 0.6), "")
    raise ConfigError(f"resume={resume!r}: not auto, force or an existing path{hint}. resume=auto continues the run "
                      "in the output dir (a fresh start if it has none); a path names a last.pt or a run directory")


def _check_curriculum(cfg: DictConfig) -> None:
    curriculum = cfg.data.get("curriculum") if cfg.data.get("name") == "string_memo" else None
    metric = curriculum.get("metric") if curriculum is not None else None
    if str(getattr(metric, "value", metric)) == "recall_positions":
        raise ConfigError("data.curriculum.metric=recall_positions needs per-stream training losses, which no "
                          "training algorithm passes to the data yet (they pass each step's batch mean); use "
                          "data.curriculum.metric=all_positions, the OK code's rule")


def _check_schedule(cfg: Config) -> None:
    """A weight-decay schedule scales optimizer.weight_decay: from 0 it would silently do nothing."""
    sched = cfg.scheduler
    if sched.name.value == "linear" and sched.target.value == "weight_decay" and \
            not getattr(cfg.optimizer, "weight_decay", 0.0):
        raise ConfigError("scheduler.target=weight_decay scales optimizer.weight_decay, which is 0 here, so the "
                          "schedule would do nothing. Set optimizer.weight_decay (e.g. optimizer.weight_decay=1e-4) "
                          "or scheduler=none")


ONLINE_ALGORITHMS = ("rtrl", "uoro", "kf_rtrl", "ok")


def _check_algorithm_fits(cfg: Config) -> None:
    """Online algorithms need a parameter-free input encoder and (except exact RTRL) a Kronecker-structured cell."""
    encoding = getattr(getattr(cfg.data, "input_encoding", None), "value", None)
    for key, active in (("model.dropout.embedding", cfg.model.dropout.embedding > 0),
                        ("model.embedding_init", cfg.model.embedding_init.value != "default")):
        if active and encoding != "embedding":
            raise ConfigError(f"{key} acts on a token embedding; dataset {cfg.data.name} has none (feature inputs, "
                              "or data.input_encoding=one_hot). Leave it at its default")
    if getattr(cfg.model, "tie_weights", False):
        embedding = getattr(cfg.data, "embedding_size", None)
        encoding = getattr(getattr(cfg.data, "input_encoding", None), "value", None)
        if embedding is None or encoding != "embedding":
            raise ConfigError(f"model.tie_weights=true needs a token dataset with an embedding; dataset "
                             f"{cfg.data.name} has none. Set model.tie_weights=false")
        if embedding != cfg.model.hidden_size:
            raise ConfigError(f"model.tie_weights=true shares the embedding ({embedding} wide) with the head (reads "
                             f"model.hidden_size={cfg.model.hidden_size}); set data.embedding_size="
                             f"{cfg.model.hidden_size}, or model.tie_weights=false")
    if cfg.trainer.stability_probe_every and cfg.model.num_layers > 1:
        raise ConfigError(f"trainer.stability_probe_every steps one recurrent layer; model.num_layers="
                          f"{cfg.model.num_layers}. Set model.num_layers=1 or trainer.stability_probe_every=0")
    name = cfg.algorithm.name.value
    if name not in ONLINE_ALGORITHMS:
        return
    if cfg.model.truncation is not None or not getattr(cfg.model, "lstm_recurrent", True):
        raise ConfigError(f"algorithm={name} steps the cell itself; the truncated model (model.truncation, "
                          "model.lstm_recurrent=false) runs only under algorithm=bptt / tbptt")
    dropout = cfg.model.dropout
    active = [f"model.dropout.{k}" for k in ("input", "between", "output", "embedding", "weight")
              if getattr(dropout, k) > 0]
    active += [f"model.{k}" for k in ("ar_alpha", "tar_beta") if getattr(cfg.model, k) > 0]
    if active:
        raise ConfigError(f"algorithm={name} steps the cell and head directly, without the sequence model's dropout "
                          f"and AR/TAR; {', '.join(active)} would be ignored. Set them to 0, or use algorithm=bptt / "
                          "tbptt")
    if cfg.model.num_layers > 1:
        raise ConfigError(f"algorithm={name} carries the influence of one recurrent layer; model.num_layers="
                         f"{cfg.model.num_layers}. Set model.num_layers=1, or algorithm=bptt / tbptt")
    encoding = getattr(cfg.data, "input_encoding", None)
    if encoding is not None and str(getattr(encoding, "value", encoding)) != "one_hot":
        raise ConfigError(f"algorithm={name}: data.input_encoding={getattr(encoding, 'value', encoding)} adds an "
                          "embedding that online algorithms do not track; set data.input_encoding=one_hot")
    if name != "rtrl":
        import hydra.utils

        from rnnrepro.cells.base import KroneckerCell

        cell = hydra.utils.get_class(cfg.model._target_)
        if not issubclass(cell, KroneckerCell):
            raise ConfigError(f"algorithm={name} needs a cell with a Kronecker form (h_hat, D, H); model="
                             f"{cfg.model.name} has none: use model=rhn or model=rnn, or algorithm=rtrl (any cell, "
                              "small n)")


def _reject_unknown_keys(node: Any, prefix: str) -> None:
    """Hydra's '+key=value' adds keys even to schema-backed nodes; a key the schema lacks is a typo."""
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        allowed = {f.name for f in dataclasses.fields(schema)}
        for key in node.keys():
            if key not in allowed:
                raise ConfigError(f"{prefix}{key}: unknown key; {prefix.rstrip('.') or 'the config'} accepts "
                                 f"{', '.join(sorted(k for k in allowed if not k.startswith('_')))}")
    for key in node.keys():
        _reject_unknown_keys(node._get_node(key), f"{prefix}{key}.")
