"""``--nproc N``: the command again under torchrun (the CLI checks its input first)."""

from __future__ import annotations

import os
import sys

from toolbox.errors import ToolboxError


def relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """``toolbox run --nproc N ...`` = ``torchrun --standalone --nproc_per_node N -m toolbox run ...``
    (the recipe was checked here first, so that a recipe error is one line, not N)."""
    import subprocess

    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise ToolboxError("--nproc inside torchrun: give one or the other")
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "toolbox", *rest]
    # torchrun would give each rank one thread; share the cores out instead.
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(command, env=env)
