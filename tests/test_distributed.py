"""Distributed training (issue 24): real torchrun processes on gloo, compared with one process.

Two processes with TorchRec-sharded tables train on the same global batches as one process and log
the same losses; a checkpoint written by two processes resumes in one (and one written by one process
in two), after real kills, to the losses of an uninterrupted one-process run. On a small synthetic
world (~1 minute on 2 busy cores, most of it process starts).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from eventrec.schema import builtin_schema_path, load_schema
from eventrec.store.build import build_store
from eventrec.synthetic import generate_world

from dying_child import child_source

ROOT = Path(__file__).resolve().parents[1]
STEPS = 20
CONFIG = """model: {model_dim: 16, num_heads: 2, attribute_dim: 4, pooling_slots: 2, mlp_dims: [8], num_layers: 1}
train: {epochs: 2, batch_size: 16, max_steps_per_epoch: 10, warmup_steps: 2, patience: 5, checkpoint_every: 5, eval_batch_size: 64}
"""
# a worker (or the one process): optionally SIGKILL itself at the n-th call of `module|attribute.path:n`,
# run `eventrec ARGV`, and say whether TorchRec was imported (tests/dying_child.py)
CHILD = child_source(report_torchrec=True)
KILL_AT_STEP_CALL = "eventrec.training.trainer|Trainer.step:{}"


@pytest.fixture(scope="module")
def torchrec() -> None:
    """TorchRec and FBGEMM's CPU build (``make distributed``, run by ``make test``): absent, the tests that
    need them fail when ``CI=true`` and are skipped otherwise."""
    import importlib.util

    if importlib.util.find_spec("torchrec") is None or importlib.util.find_spec("fbgemm_gpu") is None:
        message = "torchrec / fbgemm-gpu-cpu not installed: run `make distributed`"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def world(tmp_path_factory, torchrec) -> dict[str, Path]:
    """A small synthetic store, the config and the child script."""
    root = tmp_path_factory.mktemp("distributed")
    generate_world(root / "world", num_users=150, days=10, seed=0)
    build_store(load_schema(builtin_schema_path("synthetic")), root / "world", root / "store")
    (root / "config.yaml").write_text(CONFIG)
    (root / "child.py").write_text(CHILD)
    return {"root": root, "store": root / "store", "config": root / "config.yaml", "child": root / "child.py"}


def _train(world: dict, out: Path, *, processes: int = 1, launcher: str = "torchrun", kill: str = "",
           sharding: str = "auto") -> subprocess.CompletedProcess:
    """``eventrec train`` on ``processes`` processes: ``launcher`` ``torchrun`` (the documented
    ``torchrun ... eventrec train``, through the child script) or ``cli`` (``eventrec train --nproc-per-node``)."""
    args = ["train", "--store", str(world["store"]), "--config", str(world["config"]), "--out", str(out)]
    if processes > 1:
        args += ["--sharding", sharding]
    if processes > 1 and launcher == "cli":
        command = [sys.executable, "-m", "eventrec.cli", *args, "--nproc-per-node", str(processes)]
    elif processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", str(world["child"]), kill, *args]
    else:
        command = [sys.executable, str(world["child"]), kill, *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _losses(run: Path) -> np.ndarray:
    """``[steps, 4]``: step, loss, loss_click, loss_conversion of the run's training log."""
    with (run / "train_log.csv").open() as f:
        rows = list(csv.DictReader(f))
    return np.array([[float(r["step"]), float(r["loss"]), float(r["loss_click"]), float(r["loss_conversion"])] for r in rows])


def _assert_weights_close(expected: Path, got: Path) -> None:
    a, b = load_file(str(expected / "model.safetensors")), load_file(str(got / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        # Adam turns the float rounding of a near-zero gradient (a softmax-invariant bias) into ~lr-sized steps
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=2e-3, msg=key)


@pytest.fixture(scope="module")
def one_process(world) -> Path:
    """The reference: one uninterrupted process, 20 steps (it never imports TorchRec)."""
    out = world["root"] / "one"
    result = _train(world, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torchrec imported: False" in result.stderr
    assert len(_losses(out)) == STEPS
    return out


def test_two_processes_log_the_losses_of_one_process(world, one_process):
    out = world["root"] / "two"
    result = _train(world, out, processes=2, launcher="cli", sharding="row_wise")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embedding tables sharded by TorchRec's planner" in result.stderr and "on rank 1" in result.stderr, result.stderr[-3000:]
    one, two = _losses(one_process), _losses(out)
    assert len(two) == STEPS
    np.testing.assert_array_equal(two[:, 0], one[:, 0])
    np.testing.assert_allclose(two[:, 1:], one[:, 1:], rtol=1e-4, atol=1e-7)
    assert np.abs(np.diff(one[:, 1])).max() > 0.01  # the losses move: the comparison is not of constants
    for checkpoint in ("last", "best"):  # in the one-process format: same tensors, close values
        _assert_weights_close(one_process / checkpoint, out / checkpoint)
    expected, got = load_file(str(one_process / "last" / "optimizer.safetensors")), load_file(str(out / "last" / "optimizer.safetensors"))
    assert expected.keys() == got.keys() and any(k.startswith("sparse_adam.") for k in got)
    assert torch.equal(got.pop("rng.torch"), expected.pop("rng.torch"))  # sharding leaves the run's generator as it was
    for key, value in expected.items():  # AdamW's and SparseAdam's moments (a wrong gradient scale shows here)
        assert (got[key] - value).abs().max() <= 1e-4 * value.abs().max(), key
    with (one_process / "eval_log.csv").open() as f, (out / "eval_log.csv").open() as g:
        expected, got = list(csv.DictReader(f)), list(csv.DictReader(g))
    assert [(r["step"], r["task"]) for r in got] == [(r["step"], r["task"]) for r in expected]
    np.testing.assert_allclose([float(r["logloss"]) for r in got], [float(r["logloss"]) for r in expected], rtol=1e-4)


def test_checkpoints_resume_across_one_and_two_processes_after_kills(world, one_process):
    """One process killed at step 7 (last/ at step 5), two processes resume it and are killed at step 11
    (last/ at step 10, written by the two), one process resumes that to the end: its log and weights
    are the uninterrupted run's."""
    out = world["root"] / "relay"
    first = _train(world, out, kill=KILL_AT_STEP_CALL.format(7))
    assert first.returncode != 0 and len(_losses(out)) == 6, first.stderr[-3000:]
    second = _train(world, out, processes=2, kill=KILL_AT_STEP_CALL.format(6), sharding="table_wise")
    assert second.returncode != 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "at epoch 0, batch 5 (step 5)" in second.stderr, second.stderr[-3000:]
    third = _train(world, out)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "at epoch 1, batch 0 (step 10)" in third.stderr, third.stderr[-3000:]
    expected, got = _losses(one_process), _losses(out)
    np.testing.assert_array_equal(got[:, 0], expected[:, 0])
    np.testing.assert_allclose(got[:, 1:], expected[:, 1:], rtol=1e-4, atol=1e-7)
    for checkpoint in ("last", "best"):
        _assert_weights_close(one_process / checkpoint, out / checkpoint)


# -- in one process ------------------------------------------------------------------------------------------
TORCHREC_MODULES = {"model/sharded_tables.py", "training/sharding.py", "training/sharded_adam.py", "training/distributed.py"}


def test_only_the_distributed_modules_import_torchrec():
    """The one-process path (the command line, the trainer, serving) never needs TorchRec or FBGEMM."""
    package = ROOT / "eventrec"
    importing = {str(p.relative_to(package)) for p in package.rglob("*.py")
                 if any(line.lstrip().startswith(("import torchrec", "from torchrec", "import fbgemm_gpu", "from fbgemm_gpu"))
                        for line in p.read_text().splitlines())}
    assert importing <= TORCHREC_MODULES, importing - TORCHREC_MODULES
    for path in TORCHREC_MODULES:  # and nothing else imports them
        module = "eventrec." + path.removesuffix(".py").replace("/", ".")
        users = {str(p.relative_to(package)) for p in package.rglob("*.py") if f"import {module}" in p.read_text() or f"from {module} import" in p.read_text()}
        assert users <= TORCHREC_MODULES | {"cli.py"}, (module, users)


def test_the_ranks_shares_of_the_loss_add_up_to_the_global_batch_loss(torchrec):
    from eventrec.training.distributed import bce_share
    from eventrec.training.objectives.losses import multitask_loss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(13, 2, generator=generator)
    labels = (torch.rand(13, 2, generator=generator) > 0.6).float()
    labels[torch.rand(13, 2, generator=generator) > 0.7] = float("nan")  # missing labels
    counts = (~torch.isnan(labels)).sum(0)
    for weights in (None, [1.0, 0.25]):
        expected, expected_tasks = multitask_loss(logits, labels, weights)
        shares = [bce_share(logits[part], labels[part], counts, weights) for part in np.array_split(np.arange(13), 3)]
        torch.testing.assert_close(sum(s for s, _ in shares), expected)
        torch.testing.assert_close(sum(t for _, t in shares), expected_tasks)


def test_unsupported_configs_are_refused_naming_the_field(torchrec):
    from eventrec.model.config import DlrmConfig, SequenceModelConfig
    from eventrec.training.config import TrainConfig
    from eventrec.training.distributed import check_distributable

    with pytest.raises(ValueError, match="^model: distributed training"):
        check_distributable(DlrmConfig(), TrainConfig())
    with pytest.raises(ValueError, match=r"^objectives\[1\].kind: .*bce objective only"):
        check_distributable(SequenceModelConfig(), TrainConfig(objectives=[{"kind": "bce"}, {"kind": "request_softmax"}]))
    check_distributable(SequenceModelConfig(), TrainConfig())


def test_the_workers_command_line_drops_the_launch_option():
    from eventrec.training.launch import without_option

    argv = ["train", "--store", "s", "--nproc-per-node", "2", "--out", "o", "--nproc-per-node=4"]
    assert without_option(argv, "--nproc-per-node") == ["train", "--store", "s", "--out", "o"]


def test_the_sharded_tables_read_and_train_like_embedding_tables_with_sparse_adam(tmp_path, torchrec):
    """The readable reference (``EmbeddingTables`` + ``torch.optim.SparseAdam``) against the TorchRec
    twin (sharded lookups, gradients through the accumulators, SparseAdam on the shard), in one
    gloo process: lookups with padding ids and repeats, mean bags, three steps (a table unread in the
    last one keeps its step count)."""
    import torch.distributed as dist
    from torch import nn

    from eventrec.model.embeddings import EmbeddingTables, FeatureSpec
    from eventrec.model.sharded_tables import ShardedEmbeddingTables
    from eventrec.training.sharded_adam import ShardedSparseAdam
    from eventrec.training.sharding import DistributedEnv, plan_tables, shard_model

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        reference = EmbeddingTables(FeatureSpec(None, {"a": 50, "b": 7}), 4)
        holder = nn.Module()
        holder.tables, holder.dense = ShardedEmbeddingTables.like(reference), nn.Linear(1, 1)
        env = DistributedEnv(0, 1, 0, 1, "gloo", torch.device("cpu"))
        shard_model(holder, env, *plan_tables(holder, env, "row_wise", 8))
        twin = holder.tables
        with torch.no_grad():
            for name in twin.names:
                twin.local_rows(name).zero_()[:, :4] = reference.tables[name].weight
        expected_optimizer = torch.optim.SparseAdam(list(reference.parameters()), lr=0.01)
        optimizer = ShardedSparseAdam(twin, {"a": 0, "b": 0}, lr=0.01)
        generator = torch.Generator().manual_seed(1)
        for step in range(3):
            ids = torch.tensor([3, 0, 17, 3, 49, 0, 8])
            bag_ids, offsets = torch.tensor([1, 0, 6, 6, 2]), torch.tensor([0, 2, 2, 5])
            scale_a, scale_b = torch.randn(7, 4, generator=generator), torch.randn(3, 4, generator=generator)
            read_b = step < 2
            twin.prefetch({"a": [ids], **({"b": [bag_ids]} if read_b else {})})
            losses = []
            for tables in (reference, twin):
                loss = (tables["a"](ids) * scale_a).sum()
                if read_b:
                    loss = loss + (tables.bag("b", bag_ids, offsets, mode="mean") * scale_b).sum()
                losses.append(loss)
            torch.testing.assert_close(losses[1], losses[0])
            for each, loss in ((expected_optimizer, losses[0]), (optimizer, losses[1])):
                each.zero_grad(set_to_none=True)
                loss.backward()
                each.step()
            for name in twin.names:
                rows = twin.local_rows(name)
                torch.testing.assert_close(rows[:, :4], reference.tables[name].weight.detach(), rtol=1e-5, atol=1e-6, msg=name)
                assert not rows[:, 4:].any(), "the accumulators are zeroed after each step"
        states = optimizer.table_states()
        for name in twin.names:
            expected = expected_optimizer.state[reference.tables[name].weight]
            assert states[name]["step"] == expected["step"] == {"a": 3, "b": 2}[name]
            torch.testing.assert_close(states[name]["exp_avg_sq"], expected["exp_avg_sq"], rtol=1e-5, atol=1e-9)
    finally:
        dist.destroy_process_group()


def test_the_documented_install_is_the_pinned_extra():
    import tomllib

    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["distributed"]
    page = (ROOT / "docs" / "distributed_training.md").read_text()
    assert {"torchrec==1.9.2", "fbgemm-gpu-cpu==1.8.0"} <= set(pins)
    assert [pin for pin in pins if pin not in page] == []
