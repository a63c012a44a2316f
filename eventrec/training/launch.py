"""Starting distributed training: ``eventrec train --nproc-per-node N`` runs torchrun itself.

TorchRec-free (the one-process command line imports it): the distributed trainer itself is
:mod:`eventrec.training.distributed`.
"""

from __future__ import annotations

import os
import sys


def launched_by_torchrun() -> bool:
    """Whether this process is one of torchrun's workers."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def launch(argv: list[str], nproc_per_node: int) -> int:
    """Run ``torchrun --standalone --nproc-per-node N -m eventrec.cli ARGV`` (this machine only) in this
    process; returns the exit status (0, or 1 when a worker failed)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(["--standalone", f"--nproc-per-node={nproc_per_node}", "-m", "eventrec.cli", *argv])
    except ChildFailedError as error:
        print(f"error: a training process failed: {error}", file=sys.stderr)
        return 1
    return 0


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE`` (e.g. the worker's command line without
    ``--nproc-per-node``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out
