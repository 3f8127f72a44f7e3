"""Datasets. Each dataset is one module (a SequenceDataModule subclass) plus one YAML under conf/dataset/."""

from rnnrepro.data.base import DataNotFoundError, DataSpec, SequenceDataModule, build_datamodule

__all__ = ["DataNotFoundError", "DataSpec", "SequenceDataModule", "build_datamodule"]
