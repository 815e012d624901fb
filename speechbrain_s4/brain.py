"""``Separation``: one SpeechBrain Brain for every separator and dataset.

The training recipe of the separation papers this package reproduces
(S4M, Chen et al., Interspeech 2023; SPMamba, Li et al., 2024; Sepformer,
Subakan et al., ICASSP 2021) is the same loop: utterance-level permutation
invariant training (uPIT; Kolbæk et al., IEEE/ACM TASLP 2017) on negative
SI-SNR, gradient clipping, a plateau learning-rate schedule and the best
checkpoint by validation SI-SNR. :class:`Separation` writes it once, through
SpeechBrain 1.1's hooks:

* ``compute_forward`` calls ``modules.separator(mix [B, T], lengths [B])
  -> [B, T, S]``
  (DEVELOPING.md); it never asks which model it runs. In training it may
  speed-perturb each source (``speechbrain.augment.time_domain.SpeedPerturb``)
  and rebuild the mixture as their sum plus the noise, as SpeechBrain's
  WSJ0Mix/WHAM recipes do.
* ``compute_objectives`` is the YAML's ``loss`` (SpeechBrain's
  ``get_si_snr_with_pitwrapper``, fed clones because it works in place),
  minus the items already better than ``threshold`` dB when
  ``threshold_byloss`` is set. At test time it also scores every utterance
  (``metrics.utterance_metrics``) and ``on_stage_end`` writes
  ``<output_folder>/test_results.csv``.
* ``fit_batch`` is SpeechBrain's: gradient accumulation, automatic mixed
  precision (``--precision fp32|bf16|fp16``) and DDP ``no_sync`` keep working.
  ``optimizers_step`` is overridden for two reasons: SpeechBrain 1.1 clips
  only ``param_groups[0]`` (the S4 parameter groups would escape clipping),
  and a non-finite loss or gradient must skip the update (counted, logged),
  never crash or poison the weights.
* ``init_optimizers`` honours the ``_optim`` hints S4 kernels attach to their
  parameters (MODELS.md §2.6): one parameter group per distinct hint (weight
  decay 0 and an optional learning rate), one for everything else.

Logged values named ``si-snr`` (``train_log.txt`` and checkpoint metadata)
are the loss, i.e. **negative** SI-SNR in dB, as in SpeechBrain's recipes;
``min_keys=["si-snr"]`` therefore keeps the best model.

Shape legend: B = batch, T = samples, S = speakers.

Authors
 * speechbrain_s4 contributors
"""

import contextlib
import os

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from speechbrain_s4.metrics import utterance_metrics, write_results_csv

logger = get_logger(__name__)

#: hyperparameters the Brain reads, besides SpeechBrain's run options
REQUIRED_HPARAMS = (
    "sample_rate",
    "loss",
    "threshold_byloss",
    "threshold",
    "use_speedperturb",
    "lr_scheduler",
    "epoch_counter",
    "train_logger",
    "output_folder",
)


def flatten_hparams(
    hparams: dict, sections: tuple = ("dataset", "training")
) -> dict:
    """Lift the keys of included YAML sections to the top level.

    The recipes in ``hparams/`` include a dataset file and a training file
    under the keys ``dataset`` and ``training`` (HyperPyYAML nests an
    included file under its key; ``data`` would not do: SpeechBrain's
    argument parser reads ``--data=...`` as ``--data_parallel_backend``).
    The Brain and SpeechBrain's run options (e.g. ``max_grad_norm``,
    ``precision``) are read from the top level, so this returns one flat
    mapping. A key defined twice with different values is
    an error: the second definition would silently not be used.

    Arguments
    ---------
    hparams : dict
        The loaded recipe.
    sections : tuple of str
        Keys whose mappings are lifted (missing ones are skipped).

    Returns
    -------
    dict
        The top-level keys plus every key of the sections.

    Example
    -------
    >>> flat = flatten_hparams({"seed": 1, "training": {"lr": 0.1}})
    >>> flat["lr"], flat["training"]["lr"]
    (0.1, 0.1)
    """
    flat = dict(hparams)
    origin = dict.fromkeys(hparams, "the top level")
    for section in sections:
        for key, value in hparams.get(section, {}).items():
            if key in flat and not _same(flat[key], value):
                raise ValueError(
                    f"hyperparameter {key!r} is defined in both "
                    f"{origin[key]} and section {section!r} with different "
                    "values; define it once (override an included file's "
                    "value in its !include: block)"
                )
            flat.setdefault(key, value)
            origin.setdefault(key, f"section {section!r}")
    return flat


def _same(first, second) -> bool:
    """Whether two hyperparameter values are the same object or equal."""
    if first is second:
        return True
    try:
        return bool(first == second)
    except (TypeError, ValueError, RuntimeError):
        return False


def optimizer_param_groups(
    module: torch.nn.Module, no_decay_vectors: bool = False
) -> list:
    """Parameter groups honouring the ``_optim`` hints of S4 parameters.

    ``state-spaces/s4`` marks its SSM parameters with a dict attribute
    ``_optim`` (``{"weight_decay": 0.0}`` plus ``"lr"`` when one is given);
    every distinct hint becomes a group with those settings, everything else
    goes to a first group with the optimiser's defaults.

    Arguments
    ---------
    module : torch.nn.Module
        The trainable modules.
    no_decay_vectors : bool
        Also give untagged 1-D parameters (norms, biases) weight decay 0
        (SpeechBrain's ``--remove_vector_weight_decay``).

    Returns
    -------
    list of dict
        ``[{"params": [...]}, {"params": [...], **hint}, ...]``, without
        empty groups.

    Example
    -------
    >>> layer = torch.nn.Linear(3, 2)
    >>> layer.bias._optim = {"weight_decay": 0.0, "lr": 1e-3}
    >>> [len(g["params"]) for g in optimizer_param_groups(layer)]
    [1, 1]
    """
    default = []
    tagged = {}  # sorted hint items -> parameters
    for param in module.parameters():
        if not param.requires_grad:
            continue
        hint = getattr(param, "_optim", None)
        if hint is None and no_decay_vectors and param.dim() == 1:
            hint = {"weight_decay": 0.0}
        if hint is None:
            default.append(param)
        else:
            tagged.setdefault(tuple(sorted(hint.items())), []).append(param)
    groups = [{"params": default}] if default else []
    for hint, params in tagged.items():
        groups.append({"params": params, **dict(hint)})
    return groups


class Separation(sb.Brain):
    """Train and evaluate any separator ``[B, T] -> [B, T, S]``.

    Expects ``modules = {"separator": ...}`` and the hyperparameters in
    ``REQUIRED_HPARAMS`` (plus ``speed_perturb`` when ``use_speedperturb``);
    batches come from ``speechbrain_s4.dataio`` (``mix_sig``, ``targets``,
    optional ``noise_sig``).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.dataio.batch import PaddedBatch
    >>> from speechbrain.nnet.losses import get_si_snr_with_pitwrapper
    >>> from speechbrain.nnet.schedulers import ReduceLROnPlateau
    >>> from speechbrain.utils.epoch_loop import EpochCounter
    >>> from speechbrain.utils.train_logger import FileTrainLogger
    >>> class Doubler(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.gain = torch.nn.Parameter(torch.ones(2))
    ...     def forward(self, mix, lengths=None):
    ...         return mix.unsqueeze(-1) * self.gain
    >>> folder = tempfile.mkdtemp()
    >>> brain = Separation(
    ...     modules={"separator": Doubler()},
    ...     opt_class=lambda params: torch.optim.Adam(params, lr=1e-3),
    ...     hparams=dict(
    ...         sample_rate=8000, loss=get_si_snr_with_pitwrapper,
    ...         threshold_byloss=True, threshold=-30, use_speedperturb=False,
    ...         lr_scheduler=ReduceLROnPlateau(), epoch_counter=EpochCounter(1),
    ...         train_logger=FileTrainLogger(f"{folder}/log.txt"),
    ...         output_folder=folder,
    ...     ),
    ...     run_opts={"device": "cpu", "noprogressbar": True},
    ... )
    >>> batch = PaddedBatch([{"id": "a", "mix_sig": torch.randn(800),
    ...                       "targets": torch.randn(800, 2)}])
    >>> brain.compute_forward(batch, sb.Stage.VALID)[0].shape
    torch.Size([1, 800, 2])
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        missing = [
            key for key in REQUIRED_HPARAMS if not hasattr(self.hparams, key)
        ]
        if getattr(self.hparams, "use_speedperturb", False):
            if not hasattr(self.hparams, "speed_perturb"):
                missing.append("speed_perturb")
        if missing:
            raise ValueError(
                f"the recipe lacks the hyperparameter(s) {', '.join(missing)} "
                "that the Separation brain reads; see hparams/training/*.yaml"
            )
        if "separator" not in self.modules:
            raise ValueError(
                "modules must hold the model under the key 'separator' "
                f"(got {', '.join(self.modules) or 'nothing'})"
            )
        self.skipped_steps = 0
        self.nonfinite_count = 0
        self._loss_was_nonfinite = False
        self.test_rows = []

    # ------------------------------------------------------------------ data
    def compute_forward(self, batch, stage):
        """Separate the batch's mixtures (speed-perturbed in training).

        Arguments
        ---------
        batch : speechbrain.dataio.batch.PaddedBatch
            ``mix_sig`` [B, T], ``targets`` [B, T, S], optional ``noise_sig``.
        stage : speechbrain.Stage
            TRAIN, VALID or TEST.

        Returns
        -------
        tuple
            estimates [B, T, S], targets [B, T, S], mixture [B, T] and the
            relative lengths [B] (targets and mixture as the separator saw
            them, after augmentation).
        """
        batch = batch.to(self.device)
        mix, lengths = batch.mix_sig  # [B, T], [B]
        targets = batch.targets.data  # [B, T, S]
        if stage == sb.Stage.TRAIN and self.hparams.use_speedperturb:
            noise = getattr(batch, "noise_sig", None)
            noise = None if noise is None else noise.data  # [B, T]
            with torch.no_grad():
                mix, targets = self.speed_perturb(targets, noise)
        # the lengths let padding-aware separators (S4M, SPMamba) give each
        # item of a padded batch its stand-alone result
        estimates = self.modules.separator(mix, lengths)  # [B, T, S]
        return estimates, targets, mix, lengths

    def speed_perturb(self, targets, noise=None):
        """Speed-perturb each source on its own and rebuild the mixture.

        Every source goes through ``hparams.speed_perturb`` separately (so
        each gets its own random speed), all are cut to the shortest, and the
        mixture becomes their sum plus the noise (cut likewise). Only valid
        when the dataset's mixture is that sum (not for reverberant mixtures
        with dry targets, e.g. WHAMR!); the recipes switch it off there.

        Arguments
        ---------
        targets : torch.Tensor
            Sources [B, T, S].
        noise : torch.Tensor, optional
            Noise [B, T].

        Returns
        -------
        mix : torch.Tensor
            The new mixture [B, T'].
        targets : torch.Tensor
            The perturbed sources [B, T', S].
        """
        perturbed = [
            self.hparams.speed_perturb(targets[..., k])  # [B, T_k]
            for k in range(targets.shape[-1])
        ]
        length = min(source.shape[-1] for source in perturbed)
        if noise is not None:
            length = min(length, noise.shape[-1])
        targets = torch.stack(
            [source[:, :length] for source in perturbed], dim=-1
        )  # [B, T', S]
        mix = targets.sum(dim=-1)  # [B, T']
        if noise is not None:
            mix = mix + noise[:, :length]
        return mix, targets

    # ------------------------------------------------------------------ loss
    def compute_objectives(self, predictions, batch, stage):
        """uPIT negative SI-SNR; per-utterance metrics at test time.

        Arguments
        ---------
        predictions : tuple
            What ``compute_forward`` returned.
        batch : speechbrain.dataio.batch.PaddedBatch
            The batch (for the utterance ids).
        stage : speechbrain.Stage
            TRAIN, VALID or TEST.

        Returns
        -------
        torch.Tensor
            The scalar loss (negative SI-SNR, dB).
        """
        estimates, targets, mix, lengths = predictions
        # the loss in float32 even under autocast: SI-SNR divides energies
        estimates = estimates.float()
        targets = targets.float()
        loss = self.hparams.loss(targets.clone(), estimates.clone())  # [B]
        if stage == sb.Stage.TEST:
            self._score_utterances(batch.id, mix, targets, estimates, lengths)
        if stage != sb.Stage.TRAIN or not self.hparams.threshold_byloss:
            return loss.mean()
        # drop the items already better than -threshold dB: they add little
        # and would dominate the mean of an easy batch (NaN never passes)
        kept = loss > self.hparams.threshold  # [B]
        if kept.any():
            return loss[kept].mean()
        return loss.sum() * 0.0  # every item is good enough: no update

    def _score_utterances(self, ids, mix, targets, estimates, lengths):
        """Append one results row per utterance, padding removed."""
        total = mix.shape[1]
        for index, snt_id in enumerate(ids):
            length = int(torch.round(lengths[index] * total).item())
            self.test_rows.append(
                utterance_metrics(
                    snt_id,
                    mix[index, :length],
                    targets[index, :length],
                    estimates[index, :length],
                    self.hparams.sample_rate,
                )
            )

    def check_loss_isfinite(self, loss):
        """Count a non-finite loss and flag its update to be skipped.

        SpeechBrain's version raises after ``nonfinite_patience`` batches;
        here training continues: the update is skipped in
        ``optimizers_step`` and a warning says how often it happened.

        Arguments
        ---------
        loss : torch.Tensor
            The (scaled) loss about to be back-propagated.
        """
        if not torch.isfinite(loss):
            self.nonfinite_count += 1
            self._loss_was_nonfinite = True
            logger.warning(
                f"non-finite training loss ({self.nonfinite_count} this "
                "epoch): skipping this update"
            )

    # ------------------------------------------------------------ optimiser
    def init_optimizers(self):
        """Build the optimiser from ``_optim``-aware parameter groups."""
        if self.opt_class is None:
            return super().init_optimizers()
        groups = optimizer_param_groups(
            self.modules, no_decay_vectors=self.remove_vector_weight_decay
        )
        self.optimizer = self.opt_class(groups)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
        return None

    def optimizers_step(self):
        """Clip every parameter group together, then step (or skip).

        SpeechBrain 1.1's version clips ``param_groups[0]`` only. Here the
        total norm over all groups is clipped to ``max_grad_norm`` (a
        non-positive value disables clipping), and the update is skipped,
        counted and logged when the loss or that norm is not finite (with
        fp16 the GradScaler skips on its own). In DDP all ranks agree.
        """
        if self.optimizers_dict is not None:
            optimizers = self.freeze_optimizers(self.optimizers_dict)
        elif self.opt_class is not None:
            optimizers = {"optimizer": self.optimizer}
        else:
            return
        for optimizer in optimizers.values():
            self.scaler.unscale_(optimizer)
        params = [
            param
            for optimizer in optimizers.values()
            for group in optimizer.param_groups
            for param in group["params"]
        ]
        max_norm = self.max_grad_norm
        if max_norm <= 0:  # SpeechBrain: "negative to disable"
            max_norm = float("inf")  # still measure the norm
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        skip = self._loss_was_nonfinite or (
            not self.scaler.is_enabled() and not torch.isfinite(grad_norm)
        )
        self._loss_was_nonfinite = False
        if _any_rank(skip, self.device):
            self.skipped_steps += 1
            logger.warning(
                f"skipped an update with a non-finite loss or gradient "
                f"(gradient norm {float(grad_norm):.3g}; "
                f"{self.skipped_steps} skipped so far)"
            )
            for optimizer in optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            return
        for optimizer in optimizers.values():
            self.scaler.step(optimizer)
        self.scaler.update()
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self.optimizer_step += 1

    # ---------------------------------------------------------------- stages
    def on_fit_start(self):
        """Wrap, build the optimiser, recover; log the process layout."""
        super().on_fit_start()
        world_size = 1
        if torch.distributed.is_available():
            if torch.distributed.is_initialized():
                world_size = torch.distributed.get_world_size()
        separator = self.modules.separator
        model = getattr(separator, "module", separator)  # inside DDP
        groups = len(self.optimizer.param_groups) if self.opt_class else 0
        logger.info(
            f"training {type(model).__name__} (as {type(separator).__name__}) "
            f"on {world_size} process(es), {groups} parameter group(s)"
        )
        if self.hparams.use_speedperturb:
            speeds = getattr(self.hparams.speed_perturb, "speeds", "?")
            logger.info(f"speed perturbation of each source: {speeds} %")

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Load the checkpoint to evaluate: the best by ``min_key`` /
        ``max_key``, else the most recent one.

        SpeechBrain only considers checkpoints whose metadata carry the key,
        i.e. those saved after a validation. A run stopped before its first
        validation has only intra-epoch checkpoints, and ``--test_only`` on it
        would silently score the freshly initialised weights; the most
        recent checkpoint is loaded instead, with a warning.

        Arguments
        ---------
        max_key : str, optional
            Metadata key of the best checkpoint, higher is better.
        min_key : str, optional
            Metadata key of the best checkpoint, lower is better.
        """
        if self.checkpointer is None:
            return
        key = max_key or min_key
        if key is not None:
            best = self.checkpointer.find_checkpoint(
                max_key=max_key, min_key=min_key
            )
            if best is not None:
                self.checkpointer.load_checkpoint(best)
                return
        latest = self.checkpointer.find_checkpoint()
        if latest is None:
            logger.warning(
                f"no checkpoint in {self.checkpointer.checkpoints_dir}: "
                "evaluating the model's current weights"
            )
            return
        if key is not None:
            logger.warning(
                f"no checkpoint in {self.checkpointer.checkpoints_dir} "
                f"carries {key!r} (none was saved after a validation): "
                f"evaluating the most recent one, {latest.path.name}"
            )
        self.checkpointer.load_checkpoint(latest)

    def on_stage_start(self, stage, epoch=None):
        """Reset the per-stage counters; say where a training epoch starts."""
        if stage == sb.Stage.TRAIN:
            self.skipped_steps = 0
            logger.info(f"epoch {epoch}: training from batch {self.step}")
        if stage == sb.Stage.TEST:
            self.test_rows = []

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Schedule, log and checkpoint after validation; write test results.

        Arguments
        ---------
        stage : speechbrain.Stage
            The stage that ended.
        stage_loss : float
            Its average loss (negative SI-SNR, dB).
        epoch : int, optional
            The epoch number (None at test time).
        """
        stage_stats = {"si-snr": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = dict(stage_stats)
            if self.skipped_steps:
                self.train_stats["skipped_updates"] = self.skipped_steps
        elif stage == sb.Stage.VALID:
            current_lr, next_lr = self.hparams.lr_scheduler(
                [self.optimizer], epoch, stage_loss
            )
            if next_lr != current_lr:
                # scale every group, so the S4 groups keep their own ratio
                for group in self.optimizer.param_groups:
                    group["lr"] *= next_lr / current_lr
            if hasattr(self.hparams.epoch_counter, "update_metric"):
                # early stopping (EpochCounterWithStopper), saved with it
                self.hparams.epoch_counter.update_metric(stage_loss)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": current_lr},
                train_stats=self.train_stats,
                valid_stats=stage_stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"si-snr": stage_loss}, min_keys=["si-snr"]
            )
        elif stage == sb.Stage.TEST:
            path = os.path.join(self.hparams.output_folder, "test_results.csv")
            if if_main_process():
                average = write_results_csv(self.test_rows, path)
                logger.info(f"wrote {path}")
                # the CSV's averages (dB, higher is better) beside the loss
                stage_stats.update(
                    {f"avg {k}": v for k, v in average.items() if k != "snt_id"}
                )
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stage_stats,
            )


def _any_rank(flag: bool, device) -> bool:
    """True when ``flag`` is set on any DDP rank (``flag`` itself otherwise)."""
    if not torch.distributed.is_available():
        return flag
    if not torch.distributed.is_initialized():
        return flag
    votes = torch.tensor(float(flag), device=device)
    torch.distributed.all_reduce(votes, op=torch.distributed.ReduceOp.MAX)
    return bool(votes.item())


@contextlib.contextmanager
def distributed_group(run_opts):
    """Join the DDP process group of a torchrun launch, and leave it cleanly.

    SpeechBrain's ``ddp_init_group`` starts the group (a no-op without
    torchrun's ``RANK``/``LOCAL_RANK``) but nothing ends it. A process that
    exits with a gloo group still alive can abort in interpreter shutdown
    ("terminate called without an active exception", SIGABRT) when the other
    rank has already gone: gloo's worker threads are torn down with the
    interpreter. So the group is destroyed here, after a barrier on success
    (no rank leaves while another still needs it) and without one after an
    error (the other ranks may never arrive).

    Arguments
    ---------
    run_opts : dict
        SpeechBrain's run options (``distributed_backend`` is read).

    Example
    -------
    >>> with distributed_group({"distributed_backend": "gloo"}):
    ...     print(torch.distributed.is_initialized())  # no torchrun here
    False
    """
    sb.utils.distributed.ddp_init_group(run_opts)
    started = (
        torch.distributed.is_available() and torch.distributed.is_initialized()
    )
    try:
        yield
        if started:
            torch.distributed.barrier()
    finally:
        if started and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
