"""Sequential / permuted MNIST: real loading code on files in the real format, permutations, splits, errors."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import urllib.error

import numpy as np
import pytest
import torch
from torchvision.datasets import MNIST

from helpers import SHARED_DATA, write_fake_mnist
from rnnrepro.config import validate
from rnnrepro.data import DataNotFoundError, build_datamodule
from rnnrepro.data.permutations import NAMED_PERMUTATIONS, build_permutation, permutation_sha1

# Pinned SHA-1 of each named permutation of 784 pixels (seeded specs must never change silently).
PINNED_SHA1 = {
    "identity": "5a2c58f0f49f17d9f764ceaf3751cb130e90c98a",
    "pmnist_numpy12008": "24671c758bbde37b4a89bcc53d93f181e40001a8",
    "pmnist_torch12008": "3808ae37df681a1d58392de601000aa120c780d8",
    "pmnist_numpy92916": "fa93a631cf7cb9cb3a547f5ec6cbf8b0b070a1fe",
    "pmnist_numpy1234": "f569e36972e9d97175d05748398eb67bb6066c4c",
    "bitrev": "6f9e391a4361105d6c9c767c1fe29500b59f03e8",
}


def _data(compose_cfg, *overrides, seed=0):
    cfg = compose_cfg(*overrides)
    validate(cfg)
    data = build_datamodule(cfg.data, seed)
    data.setup()
    return data


@pytest.mark.parametrize("name", sorted(PINNED_SHA1))
def test_named_permutations_are_fixed(name):
    perm = build_permutation(name, 784)
    assert sorted(perm.tolist()) == list(range(784))
    assert permutation_sha1(perm) == PINNED_SHA1[name]


def test_permutation_generators_match_their_sources():
    torch.manual_seed(12008)
    assert torch.equal(build_permutation("pmnist_torch12008", 784), torch.randperm(784))
    expected = np.random.RandomState(12008).permutation(784)
    assert np.array_equal(build_permutation("pmnist_numpy12008", 784).numpy(), expected)
    # Same seed, different generator: different task.
    assert PINNED_SHA1["pmnist_numpy12008"] != PINNED_SHA1["pmnist_torch12008"]


def test_building_a_permutation_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_permutation("pmnist_torch12008", 784)
    assert torch.equal(torch.rand(3), expected)


def test_runseed_permutation_follows_the_run_seed():
    a, b = build_permutation("pmnist_runseed", 784, run_seed=0), build_permutation("pmnist_runseed", 784, run_seed=1)
    assert not torch.equal(a, b)
    assert torch.equal(a, build_permutation("pmnist_runseed", 784, run_seed=0))
    assert set(NAMED_PERMUTATIONS) >= set(PINNED_SHA1) | {"pmnist_runseed"}


def test_pmnist_applies_one_permutation_to_every_split_and_worker(compose_cfg):
    plain = _data(compose_cfg, "dataset=smnist", "data.pixels_per_step=1")
    permuted = _data(compose_cfg, "data.permutation=pmnist_torch12008", "data.pixels_per_step=1", "data.num_workers=2")
    perm = build_permutation("pmnist_torch12008", 784)
    for split in ("train", "val", "test"):
        idx = permuted.splits[split][:5]
        assert torch.equal(permuted.make_batch(idx)["x"][..., 0], plain.make_batch(idx)["x"][..., 0][:, perm])
    # Batches that come through DataLoader worker processes carry the same permutation.
    batch = next(permuted.eval_batches("test"))
    idx = permuted.splits["test"][: len(batch["y"])]
    assert torch.equal(batch["x"], permuted.make_batch(idx)["x"])
    desc = permuted.describe()
    assert desc["permutation"] == "pmnist_torch12008" and desc["permutation_sha1"] == PINNED_SHA1["pmnist_torch12008"]
    assert torch.equal(permuted.checkpoint_state()["permutation"], perm)


def test_validation_comes_from_train_with_a_fixed_split_seed(compose_cfg, mnist_root):
    data = _data(compose_cfg)
    n_train, n_test = 120, 40  # the generated files
    train, val, test = (set(data.splits[k].tolist()) for k in ("train", "val", "test"))
    assert len(val) == round(0.2 * n_train) and len(train) == n_train - len(val)
    assert not train & val and train | val == set(range(n_train))
    assert test == set(range(n_train, n_train + n_test))  # the official test set, untouched
    other_run_seed = _data(compose_cfg, seed=7)
    assert torch.equal(other_run_seed.splits["val"], data.splits["val"])  # the split is task randomness
    other_split = _data(compose_cfg, "data.split_seed=1")
    assert not torch.equal(other_split.splits["val"], data.splits["val"])


def test_batches_shapes_labels_and_normalisation(compose_cfg):
    data = _data(compose_cfg, "data.pixels_per_step=1", "data.normalize=none")
    batch = next(data.train_batches(epoch=0))
    assert batch["x"].shape == (16, 784, 1) and batch["x"].dtype == torch.float32
    assert batch["y"].dtype == torch.int64 and 0 <= batch["y"].min() and batch["y"].max() <= 9
    assert 0.0 <= batch["x"].min() and batch["x"].max() <= 1.0
    std = _data(compose_cfg, "data.pixels_per_step=1", "data.normalize=mean_std")
    idx = std.splits["train"][:4]
    assert torch.allclose(std.make_batch(idx)["x"], (data.make_batch(idx)["x"] - 0.1307) / 0.3081)
    bug = _data(compose_cfg, "data.pixels_per_step=1", "data.normalize=repo_bug_uint8")
    assert bug.make_batch(idx)["x"].max() > 700  # SBO-RNN code's constants on 0..255 pixels
    rows = _data(compose_cfg, "data.pixels_per_step=28")
    assert rows.spec.input_size == 28 and rows.spec.seq_len == 28
    assert next(rows.train_batches(epoch=0))["x"].shape == (16, 28, 28)


def test_epoch_order_depends_on_seed_and_epoch_and_can_skip_batches(compose_cfg):
    data = _data(compose_cfg)
    e0 = [b["y"] for b in data.train_batches(epoch=0)]
    assert all(torch.equal(a, b["y"]) for a, b in zip(e0, data.train_batches(epoch=0)))
    e1 = [b["y"] for b in data.train_batches(epoch=1)]
    assert not all(torch.equal(a, b) for a, b in zip(e0, e1))
    resumed = [b["y"] for b in data.train_batches(epoch=0, start_batch=2)]
    assert len(resumed) == len(e0) - 2 and all(torch.equal(a, b) for a, b in zip(e0[2:], resumed))
    assert sum(len(b) for b in e0) == len(data.splits["train"])


def test_missing_files_error_names_files_urls_and_keys(compose_cfg, tmp_path):
    cfg = compose_cfg(f"data.root={tmp_path / 'empty'}", "data.download=false")
    with pytest.raises(DataNotFoundError) as err:
        build_datamodule(cfg.data, 0).setup()
    message = str(err.value)
    for expected in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "data.root", "data.download=true",
                     "RNNREPRO_DATA", "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
                     "f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        assert expected in message


def test_failed_download_is_reported_not_retried_forever(compose_cfg, tmp_path, monkeypatch):
    """download=true without network: the error names the files; nothing is fetched (the fetch is stubbed)."""
    import torchvision.datasets.mnist as tv_mnist

    attempts = []

    def no_network(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("network unreachable (test)")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", no_network)
    cfg = compose_cfg(f"data.root={tmp_path / 'offline'}", "data.download=true")
    with pytest.raises(DataNotFoundError, match="could not be downloaded") as err:
        build_datamodule(cfg.data, 0).setup()
    assert "ossci-datasets" in attempts[0] and any("lecun" in a for a in attempts)  # mirrors in order
    assert "t10k-images-idx3-ubyte" in str(err.value)


def test_download_path_verifies_checksums_of_placed_files(compose_cfg, tmp_path, monkeypatch):
    """data.download=true with the official .gz files already placed: torchvision's download code checks each md5,
    skips the fetch and extracts, so the run works offline. Uses the real official files from the shared data
    folder (the training images are not there: a generated stand-in is registered with its own md5)."""
    official = SHARED_DATA / "mnist-official" / "MNIST" / "raw"
    if not official.exists():
        pytest.skip("shared data folder with official MNIST files not present")
    import torchvision.datasets.utils as tv_utils

    def no_network(*args, **kwargs):
        raise AssertionError("tests never download")

    monkeypatch.setattr(tv_utils, "_urlretrieve", no_network)
    monkeypatch.setattr(tv_utils, "_get_redirect_url", no_network)
    md5 = dict(MNIST.resources)
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in sorted(official.glob("*.gz")):
        assert hashlib.md5(gz.read_bytes()).hexdigest() == md5[gz.name], gz.name  # torchvision's published md5
        shutil.copy(gz, raw / gz.name)
    gen = write_fake_mnist(tmp_path / "gen", n_train=50, n_test=0) / "MNIST" / "raw" / "train-images-idx3-ubyte"
    stand_in = raw / "train-images-idx3-ubyte.gz"
    with gzip.open(stand_in, "wb") as f:
        f.write(gen.read_bytes())
    # The stand-in holds 50 images but the official label file 60000 labels: register a matching md5 and read
    # only the test split, which is entirely official.
    resources = [(n, hashlib.md5(stand_in.read_bytes()).hexdigest() if n == stand_in.name else m)
                 for n, m in MNIST.resources]
    monkeypatch.setattr(MNIST, "resources", resources)
    # download=True only exercises torchvision's checksum-and-extract path: the fetch functions are stubbed to fail.
    test = MNIST(str(tmp_path / "root"), train=False, download=True)
    assert len(test) == 10000 and (raw / "t10k-images-idx3-ubyte").exists()
    assert sorted(set(test.targets.tolist())) == list(range(10))
    # A corrupted placed file is not trusted: its md5 fails and torchvision would fetch it (here: refused).
    (raw / "t10k-images-idx3-ubyte").unlink()
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"corrupt")
    with pytest.raises(AssertionError, match="never download"):
        MNIST(str(tmp_path / "root"), train=False, download=True)


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").exists(), reason="shared real MNIST digits not present")
def test_real_digits_load_with_expected_sizes(compose_cfg):
    data = _data(compose_cfg, f"data.root={SHARED_DATA}", "data.pixels_per_step=1", "data.verify_checksums=false")
    sizes = data.describe()["sizes"]
    assert sizes == {"train": 6400, "val": 1600, "test": 2000}
    batch = next(data.eval_batches("test"))
    assert batch["x"].shape[1:] == (784, 1)
    assert set(data.labels.tolist()) == set(range(10))


# ------------------------------------------------------------------------------ file checks (issue 13, fault 5)
FULL = SHARED_DATA / "mnist-full" / "MNIST" / "raw"
RAW_NAMES = [f"{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]


def _full_copy(tmp_path, replace: dict):
    """A data root whose raw files link to the full official MNIST, except the ones replaced: name -> a function of
    the official file's bytes."""
    if not FULL.exists():
        pytest.skip("the full official MNIST (shared data folder) is not present")
    raw = tmp_path / "full" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW_NAMES:
        if name in replace:
            (raw / name).write_bytes(replace[name]((FULL / name).read_bytes()))
        else:
            (raw / name).symlink_to(FULL / name)
    return tmp_path / "full"


def test_full_mnist_passes_the_canonical_check(compose_cfg, tmp_path):
    data = _data(compose_cfg, f"data.root={_full_copy(tmp_path, {})}")
    assert data.describe()["files_checked"] == "canonical"
    assert data.describe()["sizes"] == {"train": 48000, "val": 12000, "test": 10000}


def test_train_labels_replaced_by_test_labels_are_refused(compose_cfg, tmp_path):
    root = _full_copy(tmp_path, {"train-labels-idx1-ubyte": lambda _: (FULL / "t10k-labels-idx1-ubyte").read_bytes()})
    for verify in ("true", "false"):  # the counts are checked even without checksums
        with pytest.raises(DataNotFoundError, match="train-images holds 60000 images .* and train-labels 10000"):
            _data(compose_cfg, f"data.root={root}", f"data.verify_checksums={verify}")


def test_changed_label_fails_the_md5_naming_the_file_unless_checks_are_off(compose_cfg, tmp_path):
    def change_one_label(body):
        labels = bytearray(body)
        labels[100] = (labels[100] + 1) % 10
        return bytes(labels)

    root = _full_copy(tmp_path, {"train-labels-idx1-ubyte": change_one_label})
    with pytest.raises(DataNotFoundError, match=r"train-labels-idx1-ubyte differs from the canonical MNIST .*"
                                                r"expected a25bea736e30d166cdddb491f175f624"):
        _data(compose_cfg, f"data.root={root}")
    data = _data(compose_cfg, f"data.root={root}", "data.verify_checksums=false")
    assert data.describe()["files_checked"] == "not checked (data.verify_checksums=false)"


def test_declared_subset_is_checked_against_its_declared_md5s(compose_cfg, tmp_path):
    root = write_fake_mnist(tmp_path / "fake")
    assert _data(compose_cfg, f"data.root={root}").describe()["files_checked"] == \
        "declared in MNIST/raw/checksums.md5"
    path = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    body = bytearray(path.read_bytes())
    body[-1] = (body[-1] + 1) % 10
    path.write_bytes(bytes(body))
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte differs from the md5 declared in"):
        _data(compose_cfg, f"data.root={root}")


@pytest.mark.parametrize("damage", ["header", "truncated", "empty"])
def test_corrupt_idx_files_are_named_before_torchvision_reads_them(compose_cfg, tmp_path, damage):
    root = write_fake_mnist(tmp_path / "fake")
    path = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    body = path.read_bytes()
    path.write_bytes({"header": b"\x1f\x8b" + body[2:], "truncated": body[:-100], "empty": b""}[damage])
    expected = "truncated or corrupt" if damage == "truncated" else "is not an IDX file"
    with pytest.raises(DataNotFoundError, match=rf"train-images-idx3-ubyte .*{expected}|{expected}"):
        _data(compose_cfg, f"data.root={root}")
    assert path.exists()  # nothing deleted
