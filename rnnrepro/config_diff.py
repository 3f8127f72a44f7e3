"""Which settings of a composed config differ from a run's saved, resolved config.yaml: the test behind both
``resume`` (api.run refuses to continue a run under another config) and reproduce_tables' reuse of finished runs."""

from __future__ import annotations

import dataclasses

from omegaconf import OmegaConf

# Keys that do not change what a run computes: where data lives, threads, progress output, logging mirrors.
IGNORED_KEYS = ("data.root", "data.download", "data.num_workers", "trainer.num_threads", "trainer.progress_bar",
                "trainer.log_every_s", "trainer.checkpoint", "logger", "output_dir", "resume", "meta.seeds",
                # meta.reduced: the overrides it lists are compared where they apply
                "meta.reduced", "meta.reduced_seeds")

# Budgets a resumed run may raise (never lower): the run continues to the new limit. null means no limit.
BUDGET_KEYS = ("trainer.max_steps", "trainer.max_epochs", "trainer.max_time_s", "trainer.max_cpu_time_s")

# Keys whose schema default is not what the code did before the key existed: a run that predates the key matches
# only a request holding this value.
LEGACY_BEHAVIOUR = {"trainer.flush_denormal": False}


def flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED_KEYS)


def _schema_default(cfg, key: str):
    """The dataclass default of ``key`` in the schema behind the composed config; a sentinel when it has none."""
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node._get_node(part)
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        return OmegaConf.to_container(OmegaConf.structured(schema), resolve=False, enum_to_str=True).get(leaf, ...)
    return ...


def config_changes(request_cfg, saved: dict) -> dict[str, str]:
    """{key: what differs} where a composed request and a run's resolved config.yaml differ (IGNORED_KEYS aside)."""
    wanted = flatten(OmegaConf.to_container(request_cfg, resolve=True, enum_to_str=True))
    have = flatten(saved)
    changes = {}
    for key in sorted(set(wanted) | set(have)):
        if _ignored(key):
            continue
        if key not in have:  # added to a schema after the run: the run behaved as the schema default
            default = LEGACY_BEHAVIOUR.get(key, ...)
            default = _schema_default(request_cfg, key) if default is ... else default
            if default is ... or default != wanted[key]:
                changes[key] = f"{key}: the run predates this key; requested {wanted[key]!r}"
        elif key not in wanted:
            changes[key] = f"{key}: the run had {have[key]!r}; the key no longer exists"
        elif wanted[key] != have[key]:
            changes[key] = f"{key}: the run had {have[key]!r}, requested {wanted[key]!r}"
    return changes


def config_differences(request_cfg, saved: dict) -> list[str]:
    return list(config_changes(request_cfg, saved).values())


def budget_grows(had, wanted) -> bool:
    """A budget key raised (null: no limit), which a resumed run may do."""
    if wanted is None:
        return had is not None
    return had is not None and wanted > had
