"""train.py under DDP: two CPU processes (gloo) through torchrun.

SpeechBrain 1.1 recognises a torchrun launch from the RANK / LOCAL_RANK
variables (no ``--distributed_launch`` flag any more); train.py calls
``ddp_init_group`` and CPU needs ``--distributed_backend=gloo``. One short
epoch must leave exactly one checkpoint and one log (written by rank 0
only), with finite losses, and both ranks must have trained.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

from fake_layouts import make_fake_layout
from test_train_layouts import (
    ROOT,
    check_finished_run,
    subprocess_env,
    train_args,
)


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
