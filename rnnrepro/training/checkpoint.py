"""Atomic checkpoints: state dicts only (never pickled modules), written to a temp file and renamed."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch


def save_atomic(obj: Any, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)  # atomic on POSIX: a crash leaves the previous file intact
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path: str) -> dict:
    # Our checkpoints hold RNG states (numpy arrays, python tuples), so they are not weights-only files.
    return torch.load(path, map_location="cpu", weights_only=False)


def find_resume_checkpoint(resume: str, output_dir: str) -> str | None:
    """resume=auto (or force): <output_dir>/last.pt if present, else None (a fresh start). Otherwise a file or run
    dir."""
    if resume in ("auto", "force"):
        path = os.path.join(output_dir, "last.pt")
        return path if os.path.exists(path) else None
    path = os.path.join(resume, "last.pt") if os.path.isdir(resume) else resume
    if not os.path.exists(path):
        raise FileNotFoundError(f"resume={resume!r}: no checkpoint at {path}. Use resume=auto with the run's "
                                "hydra.run.dir, or give the path of a last.pt or of a run directory.")
    return path
