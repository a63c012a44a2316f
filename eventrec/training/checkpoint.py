"""Checkpoints as safetensors (tensors) + JSON (everything else): nothing is ever unpickled.

A checkpoint directory holds ``model.safetensors``, optionally ``optimizer.safetensors`` (each
optimizer's state flattened to ``"{optimizer}.{param index}.{key}"`` tensors plus scalar hyper-state
in the JSON) and ``checkpoint.json``. Writes go to a temporary directory that is renamed into place,
so a kill never leaves a half-written checkpoint.

Reading is defensive: a damaged or crafted file gives a :class:`CheckpointError` naming it (never a
safetensors or JSON traceback), and :func:`require_shapes` compares the tensors a model config would
allocate with the weights file's header *before* anything is allocated (a crafted ``model_dim`` in
``checkpoint.json`` once asked for terabytes).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from eventrec.store import layout


class CheckpointError(ValueError):
    """A checkpoint directory whose files are damaged, inconsistent or not a checkpoint's."""


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a damaged file raises :class:`CheckpointError` naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error}); the checkpoint is damaged: "
                              "use another one, or retrain") from None


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` from a safetensors file's header alone (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error}); the checkpoint is damaged: "
                              "use another one, or retrain") from None


def require_shapes(path: Path, expected: dict[str, torch.Size]) -> None:
    """Raise :class:`CheckpointError` unless the weights file ``path`` holds exactly the tensors of
    ``expected`` (a model's state dict, e.g. built on the ``meta`` device: names and shapes only).
    The model then allocates no more than the file holds."""
    found = tensor_shapes(path)
    wanted = {key: tuple(shape) for key, shape in expected.items()}
    if found == wanted:
        return
    count = lambda shapes: sum(math.prod(s) for s in shapes.values())  # noqa: E731
    differ = sorted(k for k in wanted.keys() | found.keys() if wanted.get(k) != found.get(k))
    shown = "; ".join(f"{k}: config {wanted.get(k, '-')}, file {found.get(k, '-')}" for k in differ[:5])
    raise CheckpointError(f"{path.parent}: checkpoint.json describes a model of {count(wanted):,} numbers, {path.name} holds "
                          f"{count(found):,}; they differ in {len(differ)} tensor(s) ({shown}{', ...' if len(differ) > 5 else ''}): "
                          "the checkpoint is damaged or was edited; nothing was allocated")


def _optimizer_tensors(optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for name, optimizer in optimizers.items():
        state = optimizer.state_dict()
        meta[name] = {"param_groups": state["param_groups"], "scalars": {}}
        for index, values in state["state"].items():
            for key, value in values.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{name}.{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    meta[name]["scalars"][f"{index}.{key}"] = value
    return tensors, meta


def _restore_optimizers(optimizers: dict[str, torch.optim.Optimizer], tensors: dict[str, torch.Tensor], meta: dict) -> None:
    for name, optimizer in optimizers.items():
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            owner, index, field = key.split(".", 2)
            if owner == name:
                state.setdefault(int(index), {})[field] = value
        for key, value in meta[name]["scalars"].items():
            index, field = key.split(".", 1)
            state.setdefault(int(index), {})[field] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta[name]["param_groups"]})


def save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    info: dict,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Atomically write ``directory`` (replacing an older checkpoint there)."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    info = dict(info)
    tensors = dict(extra_tensors or {})
    if optimizers:
        optimizer_tensors, info["optimizers"] = _optimizer_tensors(optimizers)
        tensors |= optimizer_tensors
    if tensors:
        save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "checkpoint.json").write_text(json.dumps(info, indent=1, sort_keys=True, default=str))
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.rename(directory, old)
    os.rename(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(directory: Path) -> list[str]:
    """Remove the ``.NAME.tmp-PID`` entries of ``directory`` (half-written checkpoints and logs) whose
    process is no longer running, i.e. was killed mid-write; returns their names."""
    return [path.name for path in layout.remove_stale_temporaries(Path(directory), ".*.tmp-*", own_process_stale=False)]


def read_checkpoint_info(directory: Path) -> dict:
    directory = Path(directory)
    old = directory.with_name(f".{directory.name}.old")
    if not directory.exists() and old.exists():
        os.rename(old, directory)  # killed between the two renames: the previous one is whole
    path = directory / "checkpoint.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no checkpoint.json (not a checkpoint)")
    try:
        info = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); the checkpoint is damaged") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: a JSON object expected, found {type(info).__name__}")
    return info


def load_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Load weights (and optimizer states) in place; returns (info, the other saved tensors)."""
    directory = Path(directory)
    info = read_checkpoint_info(directory)
    weights = directory / "model.safetensors"
    try:
        model.load_state_dict(read_tensors(weights))
    except RuntimeError as error:  # missing / unexpected keys, shape mismatch
        raise CheckpointError(f"{weights}: does not fit the model of {directory / 'checkpoint.json'} ({error})") from None
    tensors: dict[str, torch.Tensor] = {}
    if (directory / "optimizer.safetensors").exists():
        tensors = read_tensors(directory / "optimizer.safetensors")
    if optimizers:
        _restore_optimizers(optimizers, {k: v for k, v in tensors.items() if k.split(".", 1)[0] in optimizers}, info["optimizers"])
    return info, {k: v for k, v in tensors.items() if k.split(".", 1)[0] not in (optimizers or {})}
