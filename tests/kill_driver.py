"""``python kill_driver.py <file> <n> <run.py overrides...>``: runs run.py in this process and SIGKILLs it during
its n-th write of <file> (last.pt, best.pt, metrics.csv, summary.json, config.yaml), as the OOM killer or a lost
node would. The harness writes each of these to a temp file and renames it over the target, so the kill comes
with half of the temp file written and the rename not done. ``after:<file>`` kills right after the n-th rename
instead (for metrics.csv: the rows of an evaluation written, its last.pt not yet)."""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    target, n, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    after = target.startswith("after:")
    name = target.removeprefix("after:")
    replace, seen = os.replace, [0]

    def replace_then_maybe_die(src, dst, *args, **kwargs):
        if os.path.basename(dst) == name:
            seen[0] += 1
            if seen[0] == n and not after:
                os.truncate(src, os.path.getsize(src) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        replace(src, dst, *args, **kwargs)
        if after and os.path.basename(dst) == name and seen[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace_then_maybe_die
    sys.argv = [str(REPO / "run.py"), *overrides]
    runpy.run_path(str(REPO / "run.py"), run_name="__main__")


if __name__ == "__main__":
    main()
