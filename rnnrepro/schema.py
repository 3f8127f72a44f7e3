"""Config-schema primitives shared by every component module.

Each component (cell, dataset, optimizer, algorithm) declares its own schema dataclass next to its code and registers
it with :func:`register_schema`; the YAML file of that component extends the schema through its defaults list
(``- /schema/<group>/<name>@_here_``), so a misspelled key or a value of the wrong type fails while Hydra composes the
config. Range checks live in the dataclass's ``__post_init__`` and raise :class:`ConfigError` through
:func:`require`, naming the key and the fix. ``rnnrepro.config`` imports every component module, so adding a cell or a
dataset is one module plus one YAML file.
"""

from __future__ import annotations

from collections.abc import Callable

from hydra.core.config_store import ConfigStore


class ConfigError(ValueError):
    """A config value that composes but makes no sense; the message names the key and the fix."""


def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def positive(value: float, key: str) -> None:
    require(value > 0, key, f"must be > 0, got {value}. Set it on the command line, e.g. {key}=0.001")


# group -> name -> schema dataclass (group "" holds the single schemas of scheduler and algorithm)
SCHEMAS: dict[str, dict[str, type]] = {}


def register_schema(group: str, name: str) -> Callable[[type], type]:
    """Class decorator: stores the dataclass in Hydra's ConfigStore as ``schema/<group>/<name>`` (or ``schema/<name>``
    when ``group`` is empty), the node a YAML file's defaults list extends."""

    def decorate(cls: type) -> type:
        existing = SCHEMAS.setdefault(group, {}).get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"schema/{group}/{name} is registered twice: {existing.__module__}."
                             f"{existing.__qualname__} and {cls.__module__}.{cls.__qualname__}")
        SCHEMAS[group][name] = cls
        ConfigStore.instance().store(group=f"schema/{group}" if group else "schema", name=name, node=cls)
        return cls

    return decorate
