"""Command-line entry: ``python run.py model=sbo dataset=pmnist [key=value ...]`` (see README.md)."""

import logging

import hydra
from omegaconf import DictConfig

import rnnrepro.config  # noqa: F401  (registers the config schemas)
from rnnrepro.api import run

log = logging.getLogger("rnnrepro")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    summary = run(cfg)
    return summary.get("best_val")  # the objective for hydra/sweeper=optuna


if __name__ == "__main__":
    main()
