"""Kill train.py mid-epoch, run the same command again: it resumes.

A real subprocess saves intra-epoch checkpoints every few steps
(SpeechBrain's ``--ckpt_interval_steps``); once one exists in epoch 2 the
process gets SIGKILL. The same command then has to load that checkpoint
(model, optimiser, scheduler, epoch counter, the brain's step and the
training loader's position), finish epoch 2 from where it stopped, never
redo epoch 1, and complete the run.
"""

import csv
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from fake_layouts import make_fake_layout
from test_train_layouts import (
    ROOT,
    check_finished_run,
    read_train_log,
    subprocess_env,
    train_args,
)

#: what every complete checkpoint of this recipe holds
CHECKPOINT_FILES = {
    "CKPT.yaml",
    "brain.ckpt",
    "counter.ckpt",
    "dataloader-TRAIN.ckpt",
    "lr_scheduler.ckpt",
    "optimizer.ckpt",
    "separator.ckpt",
}
TRAIN_ITEMS = 30
INTERVAL = 4


def prepare_long_epoch(tmp_path):
    """CSVs of a fake WSJ0-2mix: 30 training rows, 2 valid and 2 test."""
    sys.path.insert(0, str(ROOT))
    try:
        from recipes.wsj0mix.prepare import prepare
    finally:
        sys.path.remove(str(ROOT))
    data_folder = make_fake_layout("wsj0mix", tmp_path / "data", num_files=2)
    save_folder = tmp_path / "out" / "save"
    prepare(data_folder, save_folder)
    with open(save_folder / "train.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames, list(reader)
    with open(save_folder / "train.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for index in range(TRAIN_ITEMS):
            row = dict(rows[index % len(rows)], ID=f"item{index:02d}")
            writer.writerow(row)
    return data_folder


def intra_epoch_checkpoint(save_folder, epoch):
    """A complete intra-epoch checkpoint of ``epoch`` early in it, or None."""
    for folder in sorted(save_folder.glob("CKPT+*")):
        try:
            names = {path.name for path in folder.iterdir()}
            meta = (folder / "CKPT.yaml").read_text()
            counter = (folder / "counter.ckpt").read_text().strip()
            brain = (folder / "brain.ckpt").read_text()
        except (FileNotFoundError, NotADirectoryError):
            continue  # being written or deleted right now
        if not CHECKPOINT_FILES <= names or "intra_epoch" not in meta:
            continue
        step = re.search(r"^step: (\d+)", brain, re.M)
        early = step and 0 < int(step.group(1)) <= TRAIN_ITEMS - 2 * INTERVAL
        if counter == str(epoch) and early:
            return folder, int(step.group(1))
    return None


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    data_folder = prepare_long_epoch(tmp_path)
    output = tmp_path / "out"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *train_args(
            "sepformer_wsj0mix",
            data_folder,
            output,
            "sepformer",
            epochs=3,
            batch=1,  # 30 steps per epoch
        ),
        "--dataset={skip_prep: True}",
        f"--ckpt_interval_steps={INTERVAL}",
    ]
    first = subprocess.Popen(
        command,
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    found, deadline = None, time.monotonic() + 240
    while found is None and first.poll() is None:
        assert time.monotonic() < deadline, "no intra-epoch checkpoint in time"
        found = intra_epoch_checkpoint(output / "save", epoch=2)
        time.sleep(0.01)
    assert found is not None, "train.py ended first:\n" + first.stderr.read()
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    checkpoint, saved_step = found
    epochs, _ = read_train_log(output)
    assert len(epochs) == 1  # epoch 1 done, epoch 2 interrupted

    second = subprocess.run(
        command,
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 0, second.stderr[-4000:]
    log = (output / "log.txt").read_text()
    second_run = log[log.rindex("Beginning experiment!") :]
    loaded = re.search(r"Loading a checkpoint from (\S+)", second_run)
    assert loaded, "the second run did not load a checkpoint"
    loaded_folder = Path(loaded.group(1))
    assert loaded_folder.name >= checkpoint.name  # the last one saved
    # it went on with epoch 2 where it stopped, and never redid epoch 1
    resumed = re.search(r"epoch 2: training from batch (\d+)", second_run)
    assert resumed and int(resumed.group(1)) >= saved_step > 0
    assert int(resumed.group(1)) % INTERVAL == 0
    assert "epoch 1: training" not in second_run
    assert "epoch 3: training from batch 0" in second_run
    check_finished_run(output, num_epochs=3)  # each epoch logged once
