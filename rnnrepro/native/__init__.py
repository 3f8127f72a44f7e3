"""C++ whole-sequence kernels (``model.impl=native``), JIT-compiled once with ``torch.utils.cpp_extension`` and
cached (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``). Without a working C++ toolchain
:func:`load` returns ``None`` and the caller falls back to ``impl=fused`` with one warning."""

from __future__ import annotations

import logging
import shutil
import warnings
from functools import cache
from pathlib import Path
from types import ModuleType

log = logging.getLogger("rnnrepro")
SOURCES = Path(__file__).parent


@cache
def load(name: str) -> ModuleType | None:
    """The compiled extension ``rnnrepro_<name>`` from ``<name>.cpp`` here, or None (with one warning) when it
    cannot be built."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        warnings.warn(f"model.impl=native: no C++ compiler found, so {name} runs impl=fused; install g++ to build "
                      "the native kernel", stacklevel=3)
        return None
    # its import warns about a missing CUDA runtime, which does not matter for a CPU kernel
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    try:
        module = cpp_extension.load(name=f"rnnrepro_{name}", sources=[str(SOURCES / f"{name}.cpp")],
                                    extra_cflags=["-O3"], verbose=False)
    except Exception as err:  # a broken toolchain must not stop the run: the fused kernel computes the same thing
        warnings.warn(f"model.impl=native: building the {name} kernel failed ({type(err).__name__}: {err}), so it "
                      "runs impl=fused", stacklevel=3)
        return None
    log.debug("native kernel %s built in %s", name, build_directory(name))
    return module


def build_directory(name: str) -> str:
    """Where the extension ``rnnrepro_<name>`` is (or would be) cached."""
    from torch.utils import cpp_extension

    return cpp_extension._get_build_directory(f"rnnrepro_{name}", False)
