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


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    warn_on_swapped_groups()
    try:
        summary = run(cfg)
    except (ConfigError, DataNotFoundError) as err:
        # Bad input: say what is wrong and how to fix it, without a traceback.
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return summary.get("best_val")  # the objective for hydra/sweeper=optuna


if __name__ == "__main__":
    main()
