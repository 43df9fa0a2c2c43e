"""Distributed data parallel through torchrun: 2 CPU processes (gloo) against 1 process.

The two-process run trains on the same global batches as the one-process run (each rank
generates only its shard), so the weights agree up to float summation order: measured max
|Δw| ≈ 6e-8 after 8 AdamW steps (with EMA, flips and gradual unfreezing, which rebuilds the DDP
wrapper); the test allows 1e-6.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from engine import cli
from engine.params import ConfigError
from engine.runs import REPO_ROOT, RunDir
from engine.train.checkpoint import load_checkpoint
from engine.train.distributed import Distributed

#: Tiny settings: 16² maps, 8 maps per step in 2 shards (one per rank), 2 epochs of 4 steps.
SETTINGS = {
    "size": 16,
    "batch_size": 8,
    "batch_shards": 2,
    "steps_per_epoch": 4,
    "epochs": 2,
    "val_maps": 8,
    "width": 4,
    "log_every": 2,
    "num_threads": 1,
    "device": "cpu",
    "eval_maps": 0,
    "ema_decay": 0.9,
    "augment_flips": True,
    "freeze": "backbone",
    "unfreeze_every": 1,
}
#: Allowed max |Δw| between the 2-process and the 1-process run.
TOLERANCE = 1e-6


def _sets() -> list[str]:
    return [arg for k, v in SETTINGS.items() for arg in ("--set", f"{k}={v}")]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    ddp, one = RunDir(tmp_path / "ddp"), RunDir(tmp_path / "one")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "engine", "train", "--preset", "smoke", "--run-dir", str(ddp.path), *_sets()]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("completed: run ddp") == 1  # rank 0 alone prints

    assert cli.main(["train", "--preset", "smoke", "--run-dir", str(one.path), *_sets()]) == 0

    status = ddp.status()
    assert status["state"] == "completed" and status["step"] == 8
    assert ddp.config()["world_size"] == 2
    rows = [json.loads(line) for line in ddp.metrics_path.read_text().splitlines()]
    keys = [(r["split"], r["name"], r["step"]) for r in rows]
    assert len(keys) == len(set(keys))  # one writer: no duplicated lines
    assert [s for sp, n, s in keys if (sp, n) == ("train", "loss")] == [2, 4, 6, 8]
    assert [s for sp, n, s in keys if (sp, n) == ("val", "loss")] == [4, 8]
    # the logged values (loss over both ranks' rows, validation) match the 1-process run
    ref = {(r["split"], r["name"], r["step"]): r["value"] for r in one.metrics()}
    for r in rows:
        if r["name"] in ("loss", "rmse_omega_m", "rmse_sigma8"):
            assert r["value"] == pytest.approx(ref[(r["split"], r["name"], r["step"])], abs=1e-5)

    a = load_checkpoint(ddp.checkpoint_dir / "last.pt")
    b = load_checkpoint(one.checkpoint_dir / "last.pt")
    assert a["step"] == b["step"] == 8
    na, nb = a["networks"]["model"], b["networks"]["model"]
    for key in ("state", "raw_state"):
        diff = max(float((na[key][k] - nb[key][k]).abs().max()) for k in nb[key])
        assert diff < TOLERANCE, (key, diff)


def test_one_process_distributed_is_a_no_op():
    dist = Distributed.from_env({})
    with dist:
        assert dist.is_main and dist.world_size == 1 and dist.rows(8) == (0, 8)
        assert dist.any(True) and not dist.any(False) and dist.broadcast("x") == "x"
        t = torch.ones(2)
        assert dist.mean(t) is t and dist.on_main(lambda a: a + 1, 1) == 2
        assert dist.device(torch.device("cuda")) == torch.device("cuda")
    two = Distributed.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert not two.is_main and two.rows(8) == (4, 8)
    assert two.device(torch.device("cuda")) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="batch_size=7 must be a multiple of the number of"):
        two.rows(7)
