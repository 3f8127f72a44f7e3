"""Test helpers: tiny datasets written in their real on-disk formats, and config composition."""

from __future__ import annotations

import importlib.util
import os
import struct
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = str(REPO / "conf")
SHARED_DATA = Path(os.environ.get("RNNREPRO_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_script(name: str):
    """Imports scripts/<name>.py as a module (the scripts are not a package), for testing its functions."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_idx(path: Path, array: np.ndarray) -> None:
    """Writes an IDX file (the MNIST format): magic 0x0000 08 <ndim>, big-endian dims, uint8 payload."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


def write_fake_mnist(root: Path, n_train: int = 120, n_test: int = 40, seed: int = 0) -> Path:
    """A learnable toy MNIST in torchvision's layout: the label sets the brightness of one image row."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
        for i, y in enumerate(labels):
            images[i, 2 + 2 * y, :] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    declare_mnist_md5(raw)
    return Path(root)


def declare_mnist_md5(raw: Path) -> None:
    """A folder that is not the official MNIST declares its files' md5s (the documented opt-out of the canonical
    check, which still verifies the files against the declared sums)."""
    import hashlib

    names = [f"{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
    lines = [f"{hashlib.md5((raw / n).read_bytes()).hexdigest()}  {n}" for n in names]
    (raw / "checksums.md5").write_text("\n".join(lines) + "\n")


def write_tiny_ptb(root: Path) -> Path:
    """PTB's layout and format (one sentence per line, space-separated) with a toy text; not the canonical md5s."""
    folder = Path(root) / "ptb"
    folder.mkdir(parents=True, exist_ok=True)
    text = {"train": " the cat sat on the mat \n the dog sat \n", "valid": " the cat \n", "test": " a dog \n"}
    for split, body in text.items():
        (folder / f"ptb.{split}.txt").write_text(body * 5)
    return Path(root)


def write_tiny_har(root: Path, n_train: int = 40, n_test: int = 12, seed: int = 0, subjects: int = 10) -> Path:
    """UCI HAR's layout: one whitespace-separated text file per signal (N rows x 128), y_*.txt with ids 1..6 and
    subject_*.txt with subject ids (contiguous blocks of windows, as in UCI HAR; test subjects differ from train's)."""
    from rnnrepro.data.har import har_files

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        paths = har_files(str(root), split)
        activities = rng.integers(1, 7, size=n)
        for c, path in enumerate(paths[:-2]):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # channel c carries a class-dependent offset so that a model can learn the task
            signal = rng.normal(size=(n, 128)) + (np.isin(activities, (2, 4, 6)) * 2.0 - 1.0)[:, None] * (c == 0)
            np.savetxt(path, signal * (c + 1) + c, fmt="%.7e")
        np.savetxt(paths[-2], activities, fmt="%d")
        first = 1 if split == "train" else subjects + 1
        np.savetxt(paths[-1], first + np.arange(n) * subjects // n, fmt="%d")
    return Path(root)


def write_tiny_cifar(root: Path, per_batch: int = 12, n_test: int = 10, seed: int = 0) -> Path:
    """CIFAR-10's python layout: pickled dicts with 'data' (N, 3072) uint8 and 'labels', five training batches and a
    test batch under cifar-10-batches-py/ (not the canonical md5s)."""
    import pickle

    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        data = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                "labels": rng.integers(0, 10, size=n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(data, f)
    return Path(root)


def write_tiny_ptb_char(root: Path) -> Path:
    """Mikolov's character-level PTB layout, ``ptb/ptb.char.{train,valid,test}.txt``: space-separated characters,
    ``_`` between words, one sentence per line (a toy text; no md5 is checked for these files)."""
    folder = Path(root) / "ptb"
    folder.mkdir(parents=True, exist_ok=True)
    text = {"train": " t h e _ c a t _ s a t \n t h e _ d o g \n", "valid": " t h e _ c a t \n",
            "test": " a _ d o g \n"}
    for split, body in text.items():
        (folder / f"ptb.char.{split}.txt").write_text(body * 10)
    return Path(root)


def write_tiny_wikitext2(root: Path) -> Path:
    """WikiText-2's extracted-zip layout, ``wikitext-2/wiki.{train,valid,test}.tokens`` (headings, blank lines,
    ``@-@`` tokens), with a toy text: not the canonical sizes, so use it with data.verify_checksums=false."""
    folder = Path(root) / "wikitext-2"
    folder.mkdir(parents=True, exist_ok=True)
    body = " \n = Valkyria Chronicles = \n \n the game began in 2011 @-@ 12 . \n"
    for split, repeat in (("train", 12), ("valid", 6), ("test", 6)):
        (folder / f"wiki.{split}.tokens").write_text(body * repeat)
    return Path(root)


def _music_pieces(rng, n):
    return [[sorted(rng.choice(np.arange(21, 109), size=rng.integers(0, 4), replace=False).tolist())
             for _ in range(rng.integers(3, 9))] for _ in range(n)]


def write_tiny_music(root, name_mat="JSB_Chorales.mat", name_pickle="JSB Chorales.pickle"):
    """The same pieces in both real formats: the canonical pickle and the TCN .mat (1 x N cells of T x 88 uint8)."""
    import pickle

    from scipy.io import savemat

    rng = np.random.default_rng(0)
    data = {"train": _music_pieces(rng, 6), "valid": _music_pieces(rng, 3), "test": _music_pieces(rng, 2)}
    folder = Path(root) / "music"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name_pickle, "wb") as f:
        pickle.dump(data, f)

    def cell(pieces):
        out = np.empty((1, len(pieces)), dtype=object)
        for i, piece in enumerate(pieces):
            roll = np.zeros((len(piece), 88), dtype=np.uint8)
            for t, pitches in enumerate(piece):
                roll[t, np.array(pitches, dtype=int) - 21] = 1
            out[0, i] = roll
        return out

    savemat(folder / name_mat, {"traindata": cell(data["train"]), "validdata": cell(data["valid"]),
                                "testdata": cell(data["test"])})
    return data


ATIS_LABELS = ["B-city", "I-city", "B-date", "I-date", "O"]


def write_tiny_atis(root, fold=0):
    """The is13 layout: gzip'd latin-1 pickle of (train, valid, test, dicts); splits are parallel id lists."""
    import gzip
    import pickle

    words2idx = {w: i for i, w in enumerate(["flights", "to", "new", "york", "on", "monday", "boston"])}
    labels2idx = {label: i for i, label in enumerate(ATIS_LABELS)}

    def sentence(words, tags):
        return [words2idx[w] for w in words], [0] * len(words), [labels2idx[t] for t in tags]

    examples = [sentence(["flights", "to", "new", "york"], ["O", "O", "B-city", "I-city"]),
                sentence(["flights", "to", "boston", "on", "monday"], ["O", "O", "B-city", "O", "B-date"])]

    def split(n):
        rows = [examples[i % 2] for i in range(n)]
        return tuple([r[k] for r in rows] for k in range(3))

    folder = Path(root) / "atis"
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"atis.fold{fold}.pkl.gz", "wb") as f:
        pickle.dump((split(6), split(2), split(2), {"words2idx": words2idx, "labels2idx": labels2idx,
                                                    "tables2idx": {}}), f)
    return Path(root)


def write_tiny_timit(root, sizes=(20, 6, 6), steps=12, seed=0):
    """The harness's documented TIMIT format (rnnrepro/data/timit.py): ``timit/{train,val,test}.pt``, each
    ``{"x": (N, T, 129), "lengths": (N,)}``, with predictable (sinusoidal) frames."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    folder = Path(root) / "timit"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in zip(("train", "val", "test"), sizes):
        t = torch.arange(steps, dtype=torch.float32)[None, :, None]
        x = torch.sin(0.5 * t + torch.rand(n, 1, 129, generator=gen) * 6.28)  # predictable frames
        lengths = torch.randint(steps // 2, steps + 1, (n,), generator=gen)
        torch.save({"x": x, "lengths": lengths}, folder / f"{name}.pt")
    return root


def backward_node_counts(tensor) -> Counter:
    """How many autograd nodes of each type the graph behind ``tensor`` holds (to check what a forward recorded)."""
    counts: Counter = Counter()
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        counts[type(node).__name__] += 1
        stack.extend(child for child, _ in node.next_functions)
    return counts


def assert_fused_matches_runner_float32(cells, x) -> None:
    """cells = [fused, step-by-step runner] with the same weights: outputs and gradients of sum(seq^2) agree to
    float32 rounding (relative 1e-4 of each tensor's largest entry)."""
    import torch

    grads = []
    for cell in cells:
        seq, _ = cell(x, return_sequence=True)
        seq.pow(2).sum().backward()
        grads.append({k: p.grad for k, p in cell.named_parameters() if p.grad is not None} | {"seq": seq.detach()})
    assert grads[0].keys() == grads[1].keys()
    for k, ref in grads[1].items():
        assert ref.dtype == torch.float32
        assert torch.allclose(grads[0][k], ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-4), k


def crash_after(monkeypatch, n_steps):
    """Makes the trainer die (like a killed job) once it has taken n_steps optimizer steps."""
    from rnnrepro.training.trainer import Trainer

    original = Trainer._update

    def update(self):
        step = original(self)
        if step == n_steps:
            raise KeyboardInterrupt("simulated preemption")
        return step

    monkeypatch.setattr(Trainer, "_update", update)
