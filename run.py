"""Command-line entry: ``python run.py model=sbo dataset=pmnist [key=value ...]`` (see README.md)."""

import logging
import sys

import hydra
from omegaconf import DictConfig

import rnnrepro.config  # noqa: F401  (registers the config schemas)
from rnnrepro.api import run
from rnnrepro.config import ConfigError
from rnnrepro.data import DataNotFoundError

log = logging.getLogger("rnnrepro")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        summary = run(cfg)
    except (ConfigError, DataNotFoundError) as err:
        # Bad input: say what is wrong and how to fix it, without a traceback.
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return summary.get("best_val")  # the objective for hydra/sweeper=optuna


if __name__ == "__main__":
    main()
