"""Milestone checkpoints: compact (bf16 optimiser state) and resumable."""

import shutil
import subprocess
import sys

import pytest
import torch
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.epoch_loop import EpochCounter

from speechbrain_s4.milestones import MILESTONE_STATE_DTYPE, save_milestone


def training_state(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)
    )
    adam = torch.optim.Adam(model.parameters(), lr=1e-2)
    counter = EpochCounter(10)
    return model, adam, counter


def train(model, adam, steps, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=generator)
        loss = (model(x) - x[:, :2]).pow(2).mean()
        adam.zero_grad()
        loss.backward()
        adam.step()


def checkpointer(folder, model, adam, counter):
    return Checkpointer(
        folder, {"separator": model, "optimizer": adam, "counter": counter}
    )


def test_milestone_halves_the_optimizer_and_resumes_training(tmp_path):
    model, adam, counter = training_state()
    train(model, adam, steps=5)
    counter.current = 3
    ckpt = checkpointer(tmp_path / "run" / "save", model, adam, counter)
    saved = ckpt.save_checkpoint(meta={"si-snr": -4.0, "end-of-epoch": True})

    (tmp_path / "milestones").mkdir()  # an existing folder: written inside
    info = save_milestone(saved.path, tmp_path / "milestones")
    folder = info["folder"]
    assert folder == tmp_path / "milestones" / saved.path.name
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(p.name for p in saved.path.iterdir())
    # the weights are copied byte for byte (git stores them once when the
    # exported inference folder holds the same file)
    assert (folder / "separator.ckpt").read_bytes() == (
        saved.path / "separator.ckpt"
    ).read_bytes()
    original = (saved.path / "optimizer.ckpt").stat().st_size
    compact = (folder / "optimizer.ckpt").stat().st_size
    assert compact < 0.75 * original
    assert info["bytes_after"] < info["bytes_before"]
    assert info["meta"]["si-snr"] == -4.0

    # resume elsewhere: a fresh process state recovers from the milestone
    fresh_model, fresh_adam, fresh_counter = training_state(seed=123)
    save = tmp_path / "elsewhere" / "save"
    save.mkdir(parents=True)
    shutil.copytree(folder, save / folder.name)
    resumed = checkpointer(save, fresh_model, fresh_adam, fresh_counter)
    assert resumed.recover_if_possible() is not None
    assert fresh_counter.current == 3
    for mine, theirs in zip(fresh_model.parameters(), model.parameters()):
        assert torch.equal(mine, theirs)
    for index, state in adam.state_dict()["state"].items():
        restored = fresh_adam.state_dict()["state"][index]
        assert torch.equal(restored["step"], state["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            assert restored[key].dtype == torch.float32  # cast back on load
            torch.testing.assert_close(
                restored[key], state[key], rtol=2**-8, atol=1e-30
            )
    # and the next updates follow the original run's within bf16 noise
    train(model, adam, steps=3, seed=7)
    train(fresh_model, fresh_adam, steps=3, seed=7)
    for mine, theirs in zip(fresh_model.parameters(), model.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=2e-4)


def test_milestone_stores_moments_in_bfloat16_and_keeps_steps(tmp_path):
    model, adam, counter = training_state()
    train(model, adam, steps=2)
    saved = checkpointer(tmp_path / "save", model, adam, counter).save_checkpoint()
    info = save_milestone(saved.path, tmp_path / "m" / "CKPT+first")
    state = torch.load(info["folder"] / "optimizer.ckpt")
    for values in state["state"].values():
        assert values["exp_avg"].dtype == MILESTONE_STATE_DTYPE
        assert values["exp_avg_sq"].dtype == MILESTONE_STATE_DTYPE
        assert values["step"].dtype == torch.float32 and values["step"] == 2
    assert state["param_groups"] == adam.state_dict()["param_groups"]


def test_milestone_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CKPT.yaml"):
        save_milestone(tmp_path, tmp_path / "out")
    model, adam, counter = training_state()
    saved = checkpointer(tmp_path / "save", model, adam, counter).save_checkpoint()
    save_milestone(saved.path, tmp_path / "out" / "CKPT+x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_milestone(saved.path, tmp_path / "out" / "CKPT+x")
    save_milestone(saved.path, tmp_path / "out" / "CKPT+x", overwrite=True)


def test_milestone_command(tmp_path):
    model, adam, counter = training_state()
    train(model, adam, steps=1)
    saved = checkpointer(tmp_path / "save", model, adam, counter).save_checkpoint()
    out = tmp_path / "milestones"
    out.mkdir()
    command = [sys.executable, "-m", "speechbrain_s4.cli", "milestone"]
    done = subprocess.run(
        command + [str(saved.path), str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (out / saved.path.name / "optimizer.ckpt").is_file()
    assert "optimizer state in bfloat16" in done.stdout
    again = subprocess.run(
        command + [str(saved.path), str(out)], capture_output=True, text=True
    )
    assert again.returncode == 2
    assert len(again.stderr.strip().splitlines()) == 1
