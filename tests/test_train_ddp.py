"""train.py under DDP: two CPU processes (gloo) through torchrun.

SpeechBrain 1.1 recognises a torchrun launch from the RANK / LOCAL_RANK
variables (no ``--distributed_launch`` flag any more); train.py calls
``ddp_init_group`` and CPU needs ``--distributed_backend=gloo``. One short
epoch must leave exactly one checkpoint and one log (written by rank 0
only), with finite losses, and both ranks must have trained. Every run
must leave the process group it joined (``brain.distributed_group``).
"""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_layouts import make_fake_layout
from test_train_layouts import (  # noqa: F401 (train_main is a fixture)
    ROOT,
    check_finished_run,
    subprocess_env,
    train_args,
    train_main,
)

from speechbrain_s4.brain import distributed_group


def test_torchrun_two_processes_share_one_epoch(tmp_path):
    data_folder = make_fake_layout("wsj0mix", tmp_path / "data", num_files=4)
    output = tmp_path / "out"
    args = train_args("sepformer_wsj0mix", data_folder, output, "sepformer") + [
        "--distributed_backend=gloo"
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--standalone",
            str(ROOT / "train.py"),
            *args,
        ],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    check_finished_run(output)  # one checkpoint, one epoch line, results
    # one experiment folder, one log: rank 1 wrote nothing of its own
    assert sorted(p.name for p in output.iterdir() if p.suffix == ".txt") == [
        "log.txt",
        "train_log.txt",
    ]
    log = (output / "log.txt").read_text()
    assert "on 2 process(es)" in log
    assert "as DistributedDataParallel" in log
    # four training mixtures, batches of 2, split over two ranks: each rank
    # took one optimiser step per epoch, so the step counter saved is 1
    checkpoint = next((output / "save").glob("CKPT+*"))
    brain_state = (checkpoint / "brain.ckpt").read_text()
    assert re.search(r"optimizer_step: 1\b", brain_state), brain_state
    assert os.path.getsize(checkpoint / "separator.ckpt") > 0
    assert Path(output / "test_results.csv").exists()


def _single_rank_group(monkeypatch):
    """torchrun's variables for a one-process group on a free local port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }.items():
        monkeypatch.setenv(name, value)


def test_distributed_group_is_left_after_success_and_after_errors(monkeypatch):
    # A gloo group still alive at interpreter exit can abort the process
    # (SIGABRT, "terminate called without an active exception"): CI saw it
    # once in the torchrun test above. train.py must always destroy it.
    _single_rank_group(monkeypatch)
    with distributed_group({"distributed_backend": "gloo"}):
        assert torch.distributed.is_initialized()
        assert torch.distributed.get_world_size() == 1
    assert not torch.distributed.is_initialized()

    _single_rank_group(monkeypatch)
    with pytest.raises(RuntimeError, match="recipe failed"):
        with distributed_group({"distributed_backend": "gloo"}):
            assert torch.distributed.is_initialized()
            raise RuntimeError("recipe failed")
    assert not torch.distributed.is_initialized()


def test_train_main_leaves_the_process_group(tmp_path, monkeypatch, train_main):
    data_folder = make_fake_layout("wsj0mix", tmp_path / "data", num_files=4)
    output = tmp_path / "out"
    _single_rank_group(monkeypatch)
    train_main(
        train_args("sepformer_wsj0mix", data_folder, output, "sepformer")
        + ["--distributed_backend=gloo"]
    )
    assert not torch.distributed.is_initialized()
    check_finished_run(output)
    assert "on 1 process(es)" in (output / "log.txt").read_text()
