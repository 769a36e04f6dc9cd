"""Data-parallel training under ``accelerate launch``: two CPU processes on gloo make exactly the updates of one
process that accumulates the gradients of two batches, and end with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from recsys_core.distributed import World, current_world, from_main
from recsys_core.rerank.llm.tiny import write_tiny_qwen3

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_single_process_world_is_a_no_op():
    assert current_world() == World()
    assert from_main({"ndcg_at_10": 0.5}, World(), torch.device("cpu")) == {"ndcg_at_10": 0.5}


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_accumulating_two_batches(tmp_path):
    model_dir = write_tiny_qwen3(tmp_path / "tiny-qwen3", seed=0, vocab="bytes")
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           str(HERE / "ddp_worker.py"), str(model_dir), str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, meta0 = _read(tmp_path / "out" / "rank0.safetensors")
    rank1, meta1 = _read(tmp_path / "out" / "rank1.safetensors")
    assert meta0["world_size"] == meta1["world_size"] == "2"
    assert _max_diff(rank0, rank1) == 0.0  # every process applied the same averaged update

    accumulated = ddp_worker.train(str(model_dir), accumulate=2)
    one_batch = ddp_worker.train(str(model_dir), accumulate=1)
    assert _max_diff(accumulated, rank0) < 1e-4  # same updates as one process with two batches per step
    assert _max_diff(one_batch, rank0) > 1e-3  # and not what one process stepping every batch makes
