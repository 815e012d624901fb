"""Compact training checkpoints that can be committed and resumed from.

A SpeechBrain checkpoint of a recipe run (``save/CKPT+<time>/``) holds the
separator's weights, Adam's two moment estimates per parameter (twice the
weights' size), the epoch counter, the scheduler and the data loader
position. Long CPU trainings (the bundled S4M-tiny) are continued across
machines and sessions from such a checkpoint committed to the repository
("milestone"), so it must stay small: :func:`save_milestone` copies a
checkpoint folder unchanged except for the optimiser's floating-point state
(Adam's ``exp_avg`` / ``exp_avg_sq``), stored in bfloat16. bfloat16 keeps
float32's exponent range, so no second moment underflows; its 8-bit mantissa
perturbs the moments by at most 2^-8 relative, well inside their own step
to step noise. PyTorch's ``Optimizer.load_state_dict`` casts state back to
each parameter's dtype, so SpeechBrain's checkpointer resumes from a
milestone as from the original checkpoint: copy the folder into the run's
``save/`` and start the same ``train.py`` command.

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml

__all__ = ["MILESTONE_STATE_DTYPE", "save_milestone"]

#: dtype of the optimiser's floating-point state in a milestone
MILESTONE_STATE_DTYPE = torch.bfloat16


def _compact_optimizer_state(state_dict: dict) -> dict:
    """The optimiser state dict with its floating tensors in bfloat16.

    ``step`` counters stay as they are (Adam's bias correction needs them
    exact); ``param_groups`` (learning rates, betas) are untouched.
    """
    state = {}
    for index, values in state_dict.get("state", {}).items():
        state[index] = {
            key: (
                value.to(MILESTONE_STATE_DTYPE)
                if torch.is_tensor(value)
                and value.is_floating_point()
                and key != "step"
                else value
            )
            for key, value in values.items()
        }
    return {**state_dict, "state": state}


def save_milestone(checkpoint, out_folder, overwrite: bool = False) -> dict:
    """Copy a SpeechBrain checkpoint folder with a compact optimiser state.

    Arguments
    ---------
    checkpoint : str or os.PathLike
        A ``CKPT+...`` folder written by SpeechBrain's ``Checkpointer``.
    out_folder : str or os.PathLike
        Where to write the milestone. When it names an existing folder
        that is not itself a checkpoint, the milestone goes inside it under
        the checkpoint's own name (so it can be copied back into a run's
        ``save/`` as is).
    overwrite : bool
        Replace an existing milestone of the same name.

    Returns
    -------
    dict
        ``folder`` (the milestone written), ``bytes_before``, ``bytes_after``
        (total file sizes) and ``meta`` (the checkpoint's CKPT.yaml).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.utils.checkpoints import Checkpointer
    >>> model = torch.nn.Linear(4, 4)
    >>> adam = torch.optim.Adam(model.parameters())
    >>> model(torch.randn(2, 4)).sum().backward(); adam.step()
    >>> tmp = Path(tempfile.mkdtemp())
    >>> saver = Checkpointer(tmp / "save", {"model": model, "optimizer": adam})
    >>> ckpt = saver.save_checkpoint(meta={"si-snr": -3.0})
    >>> info = save_milestone(ckpt.path, tmp / "milestones")
    >>> state = torch.load(info["folder"] / "optimizer.ckpt")["state"][0]
    >>> state["exp_avg"].dtype, state["exp_avg"].shape
    (torch.bfloat16, torch.Size([4, 4]))
    """
    checkpoint = Path(checkpoint)
    meta_path = checkpoint / "CKPT.yaml"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{checkpoint} is not a SpeechBrain checkpoint folder (no CKPT.yaml); "
            "give one of the run's save/CKPT+... folders"
        )
    out_folder = Path(out_folder)
    if out_folder.is_dir() and not (out_folder / "CKPT.yaml").is_file():
        out_folder = out_folder / checkpoint.name
    if out_folder.exists():
        if not overwrite:
            raise FileExistsError(
                f"{out_folder} already exists; pass overwrite=True (--overwrite) "
                "to replace it"
            )
        shutil.rmtree(out_folder)
    out_folder.mkdir(parents=True)

    before = after = 0
    for source in sorted(checkpoint.iterdir()):
        if not source.is_file():
            continue
        target = out_folder / source.name
        before += source.stat().st_size
        if source.name.startswith("optimizer") and source.suffix == ".ckpt":
            state_dict = torch.load(source, map_location="cpu", weights_only=True)
            torch.save(_compact_optimizer_state(state_dict), target)
        else:
            shutil.copy2(source, target)
        after += target.stat().st_size
    meta = yaml.safe_load(meta_path.read_text(encoding="utf-8")) or {}
    return {
        "folder": out_folder,
        "bytes_before": before,
        "bytes_after": after,
        "meta": meta,
    }
