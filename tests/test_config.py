"""Bad input fails at compose or validation time, before any work, with a message naming the key and the fix."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from rnnrepro.config import ConfigError, validate


def test_default_config_is_sbo_on_pmnist(compose_cfg):
    cfg = compose_cfg(tiny=False)
    assert cfg.model.name == "sbo" and cfg.data.name == "pmnist"
    assert cfg.data.permutation == "pmnist_numpy12008"
    typed = validate(cfg)
    assert typed.model.eta == pytest.approx(1e-3) and typed.data.val_fraction == pytest.approx(0.2)


@pytest.mark.parametrize("group, choices", [("model", ["antisym", "lstm", "sbo"]), ("dataset", ["pmnist", "smnist"])])
def test_unknown_group_choice_lists_the_options(compose_cfg, group, choices):
    with pytest.raises(MissingConfigException) as err:
        compose_cfg(f"{group}=nonexistent")
    message = str(err.value)
    assert f"Could not find '{group}/nonexistent'" in message
    for choice in choices:
        assert choice in message


def test_misspelled_key_fails(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="hiden_size"):
        compose_cfg("model.hiden_size=3")
    # Hydra lets '+key=value' add keys even to schema-backed nodes; validation rejects them by name.
    with pytest.raises(ConfigError, match=r"^model\.hiden_size: unknown key; model accepts .*hidden_size"):
        validate(compose_cfg("+model.hiden_size=3"))


def test_wrong_type_fails(compose_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("model.hidden_size=abc")
    assert "hidden_size" in str(err.value.__cause__)


def test_invalid_enum_value_lists_allowed_values(compose_cfg):
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("model.solver=adam")
    cause = err.value.__cause__
    assert isinstance(cause, ValidationError)
    assert "expected one of [sgd, shb, snag]" in str(cause) and "model.solver" in str(cause)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["optimizer.lr=0"], "optimizer.lr"),
        (["optimizer.lr=-0.1"], "optimizer.lr"),
        (["model.hidden_size=0"], "model.hidden_size"),
        (["model=antisym", "model.eps=0"], "model.eps"),
        (["model=antisym", "model.eps=-1"], "model.eps"),
        (["model=antisym", "model.gamma=-0.1"], "model.gamma"),
        (["model=antisym", "model.gamma=0"], "model.gamma"),   # spec section 8: gamma = 0 diverges
        (["model=antisym_gated", "model.gamma=0.0"], "model.gamma"),
        (["model.eta=0"], "model.eta"),
        (["model.eta=-1e-3"], "model.eta"),
        (["data.batch_size=0"], "data.batch_size"),
        (["data.val_fraction=1.5"], "data.val_fraction"),
        (["data.permutation=pmnist_numpy99"], "data.permutation"),
        (["trainer.max_epochs=0"], "trainer.max_epochs"),
        (["trainer.grad_clip=-1"], "trainer.grad_clip"),
        (["trainer.device=tpu"], "trainer.device"),
        (["optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum"),
        (["seed=-1"], "seed"),
        ([f"seed={2**32}"], "seed"),
        (["data.num_workers=-1"], "data.num_workers"),
        (["trainer.num_threads=-1"], "trainer.num_threads"),
        (["trainer.num_threads=0"], "trainer.num_threads"),
        (["resume=aut"], "resume"),
        (["resume=/no/such/run"], "resume"),
        (["trainer.limit_eval_batches=0"], "trainer.limit_eval_batches"),  # crashed after training before
        (["trainer.limit_eval_batches=-1"], "trainer.limit_eval_batches"),
        (["data.split_seed=-2"], "data.split_seed"),  # was accepted
        (["trainer.max_time_s=-1"], "trainer.max_time_s"),
        (["trainer.eval_every_n_steps=0"], "trainer.eval_every_n_steps"),
        (["data.pixels_per_step=5"], "data.pixels_per_step"),
        (["logger.init_timeout_s=0"], "logger.init_timeout_s"),
    ],
)
def test_invalid_values_fail_validation_naming_the_key(compose_cfg, overrides, key):
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(key)


def test_permutation_error_lists_named_specs(compose_cfg):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("data.permutation=nope"))
    assert "pmnist_torch12008" in str(err.value) and "pmnist_numpy12008" in str(err.value)


def test_invalid_values_stop_before_any_output(compose_cfg, tmp_path):
    from rnnrepro.api import run

    out = tmp_path / "never"
    with pytest.raises(ConfigError):
        run(compose_cfg("optimizer.lr=-1", output_dir=out))
    assert not out.exists()
