from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import rnnrepro.config  # noqa: F401
from helpers import CONF_DIR, write_fake_mnist, write_tiny_cifar, write_tiny_ptb


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory):
    """A data root with generated MNIST files and tiny (non-canonical) PTB and CIFAR-10 files."""
    root = write_fake_mnist(tmp_path_factory.mktemp("data"))
    write_tiny_ptb(root)
    write_tiny_cifar(root)
    return root


# Small, fast settings for smoke runs on generated data.
TINY = ["trainer.max_epochs=1", "trainer.max_steps=2", "trainer.progress_bar=false", "trainer.device=cpu",
        "model.hidden_size=8", "data.batch_size=16", "data.eval_batch_size=32", "trainer.limit_eval_batches=2",
        "data.pixels_per_step=28"]


@pytest.fixture
def compose_cfg(tmp_path, mnist_root):
    """compose_cfg(*overrides, tiny=True) -> a composed config writing into tmp_path and reading fake MNIST."""

    def _compose(*overrides: str, tiny: bool = True, output_dir=None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
            base = [f"data.root={mnist_root}", "data.download=false", f"output_dir={output_dir or tmp_path / 'run'}"]
            tiny_overrides = TINY if tiny else []
            if any(o.startswith("dataset=") and o not in ("dataset=smnist", "dataset=pmnist") for o in overrides):
                tiny_overrides = [o for o in tiny_overrides if not o.startswith("data.pixels_per_step")]
            return compose("config", overrides=base + tiny_overrides + list(overrides))

    yield _compose
    GlobalHydra.instance().clear()
