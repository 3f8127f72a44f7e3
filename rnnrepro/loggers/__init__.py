"""Run logging: metrics.csv is always written; W&B mirrors it when ``logger=wandb``."""

from rnnrepro.loggers.csv_logger import CSVLogger
from rnnrepro.loggers.wandb_logger import WandbMirror

__all__ = ["CSVLogger", "WandbMirror"]
