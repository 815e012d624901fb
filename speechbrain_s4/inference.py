"""Ready-to-use separation: ``S4Separation`` and inference folders.

:class:`S4Separation` is a SpeechBrain ``Pretrained`` interface with the API
of ``speechbrain.inference.separation.SepformerSeparation`` (``from_hparams``,
``separate_batch``, ``separate_file``) for every separator of this package
(S4M, S4M-tiny, Sepformer and Conv-TasNet from SpeechBrain's lobes, SPMamba;
Chen et al., Interspeech 2023; Subakan et al., ICASSP 2021; Luo & Mesgarani,
IEEE/ACM TASLP 2019; Li et al., 2024). It differs from SpeechBrain 1.1 where
that one surprises users (MODELS.md §8):

* **offline and explicit**: ``source`` is a local *inference folder* or the
  name of a model bundled in the package; a folder that does not exist or
  lacks its files raises at once instead of being looked up on the
  HuggingFace Hub;
* **strict loading**: a checkpoint whose keys or shapes do not fit the model
  raises, naming the first misfits (SpeechBrain's ``Pretrainer`` only warns);
* **long audio** is separated in overlapping chunks with speakers realigned
  between them (:mod:`speechbrain_s4.chunking`), so memory stays bounded and
  time linear in the length;
* **audio handling** (:mod:`speechbrain_s4.audio`): any format soundfile
  reads, always downmixed to mono, resampled to the model's rate and back,
  NaN/Inf rejected, silence in -> silence out, inputs shorter than the model
  accepts zero-padded and trimmed back, outputs **not** peak-normalised.

An inference folder holds ``hyperparams.yaml`` (defining ``separator``,
``sample_rate``, ``num_spks``, ``modules`` and a ``pretrainer``; stock
SpeechBrain ``Pretrained.from_hparams`` loads it too) and ``separator.ckpt``
(the separator's state dict). :func:`export_recipe` makes one from a
``train.py`` run, :func:`convert_checkpoint` from an original S4M/SPMamba
checkpoint.

Shape legend: B = batch, T = samples, S = speakers.

Authors
 * speechbrain_s4 contributors
"""

from __future__ import annotations

import datetime
import inspect
import io
import math
import os
import pickle
from pathlib import Path

import ruamel.yaml
import soundfile as sf
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from ruamel.yaml.comments import CommentedMap
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.fetching import (
    FetchConfig,
    FetchFrom,
    FetchSource,
    LocalStrategy,
    fetch,
)
from speechbrain.utils.logger import get_logger
from speechbrain.utils.parameter_transfer import Pretrainer
from torch import nn
from tqdm import tqdm

from speechbrain_s4.audio import check_finite, read_mixture, resample
from speechbrain_s4.chunking import default_chunking, separate_in_chunks
from speechbrain_s4.convert import load_reference_checkpoint, load_strict
from speechbrain_s4.metrics import utterance_metrics
from speechbrain_s4.models.masking import fit_length

logger = get_logger(__name__)

__all__ = [
    "S4Separation",
    "DEFAULT_MODEL",
    "BUNDLED_MODELS",
    "bundled_models",
    "model_folder",
    "minimum_input_samples",
    "export_recipe",
    "convert_checkpoint",
    "save_inference_folder",
    "separator_arguments",
    "evaluate_folders",
    "format_results_table",
]

#: files of an inference folder
HPARAMS_FILE = "hyperparams.yaml"
CHECKPOINT_FILE = "separator.ckpt"

#: where the package keeps its bundled inference folders
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"

#: models meant to ship inside the package: name -> what it is
BUNDLED_MODELS = {
    "s4m-tiny-minimix": (
        "S4M-tiny trained on minimix (real Debian voices), 8 kHz, 2 speakers"
    ),
}

#: the model used when none is named
DEFAULT_MODEL = "s4m-tiny-minimix"

#: longest input the minimum-length probe tries (samples)
_PROBE_LIMIT = 2**16


# -- where models are ------------------------------------------------------------


def bundled_models() -> dict:
    """Bundled inference folders installed with this package.

    Returns
    -------
    dict
        ``{name: folder}`` for every ``speechbrain_s4/pretrained/<name>/``
        holding both files of an inference folder.

    Example
    -------
    >>> isinstance(bundled_models(), dict)
    True
    """
    if not PRETRAINED_DIR.is_dir():
        return {}
    return {
        folder.name: folder
        for folder in sorted(PRETRAINED_DIR.iterdir())
        if (folder / HPARAMS_FILE).is_file()
        and (folder / CHECKPOINT_FILE).is_file()
    }


def model_folder(source=None) -> Path:
    """The inference folder a ``source`` (folder or bundled name) denotes.

    Arguments
    ---------
    source : str or os.PathLike, optional
        A local inference folder, or the name of a bundled model
        (``BUNDLED_MODELS``); None means ``DEFAULT_MODEL``.

    Returns
    -------
    pathlib.Path
        The folder, absolute.

    Raises
    ------
    FileNotFoundError
        Neither an existing folder nor an installed bundled model.
    NotADirectoryError
        ``source`` is a file.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> model_folder(folder) == Path(folder).resolve()
    True
    """
    if source is None:
        source = DEFAULT_MODEL
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise NotADirectoryError(
            f"{source} is a file; a model is an inference folder holding "
            f"{HPARAMS_FILE} and {CHECKPOINT_FILE} (speechbrain-s4 export / "
            "convert write one)"
        )
    installed = bundled_models()
    name = os.fspath(source)
    if name in installed:
        return installed[name]
    if name in BUNDLED_MODELS:
        raise FileNotFoundError(
            f"the bundled model {name!r} ({BUNDLED_MODELS[name]}) is not "
            f"installed: {PRETRAINED_DIR / name} is missing or incomplete; "
            "pass an inference folder instead (made by `speechbrain-s4 "
            "export` from a training run or `speechbrain-s4 convert`)"
        )
    known = sorted(set(installed) | set(BUNDLED_MODELS))
    raise FileNotFoundError(
        f"no model folder at {source} and no bundled model of that name "
        f"(bundled names: {', '.join(known)}; installed: "
        f"{', '.join(installed) or 'none'})"
    )


def _model_files(folder: Path, hparams_file: str) -> tuple[Path, Path]:
    """The hyperparameter and checkpoint files of an inference folder."""
    hparams_path = folder / hparams_file
    checkpoint_path = folder / CHECKPOINT_FILE
    missing = [
        p.name for p in (hparams_path, checkpoint_path) if not p.is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not an inference folder: {' and '.join(missing)} "
            f"missing (it needs {hparams_file} and {CHECKPOINT_FILE}; "
            "`speechbrain-s4 export` / `convert` write both)"
        )
    return hparams_path, checkpoint_path


def _read_state_dict(path: Path) -> dict:
    """A checkpoint file's state dict, with one clear error if unreadable."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise ValueError(
            f"cannot read the checkpoint {path} as a torch state dict "
            f"({type(err).__name__}: {err}); re-export it"
        ) from err
    if not isinstance(state_dict, dict):
        raise ValueError(
            f"{path} holds a {type(state_dict).__name__}, not a state dict"
        )
    return state_dict


def _load_hparams(path: Path, overrides=None) -> dict:
    """Load an inference ``hyperparams.yaml`` and check its contract."""
    try:
        with open(path, encoding="utf-8") as fin:
            hparams = load_hyperpyyaml(fin, overrides or {})
    except (
        ruamel.yaml.YAMLError,
        ImportError,
        AttributeError,
        TypeError,
    ) as err:
        raise ValueError(f"cannot build the model of {path}: {err}") from err
    if not isinstance(hparams, dict):
        raise ValueError(f"{path} does not hold a YAML mapping")
    missing = [
        key
        for key in ("separator", "sample_rate", "num_spks", "modules")
        if key not in hparams
    ]
    if missing:
        raise ValueError(
            f"{path} lacks the key(s) {', '.join(missing)} of an inference "
            "folder (separator, sample_rate, num_spks, modules, pretrainer)"
        )
    modules = hparams["modules"]
    separator = modules.get("separator") if isinstance(modules, dict) else None
    if not isinstance(separator, nn.Module):
        raise ValueError(f"{path}: modules.separator must be a torch module")
    for key in ("sample_rate", "num_spks"):
        value = getattr(separator, key, hparams[key])
        if int(value) != int(hparams[key]):
            raise ValueError(
                f"{path}: {key} is {hparams[key]} but the separator was built "
                f"with {value}; make them agree"
            )
    pretrainer = hparams.get("pretrainer")
    if not isinstance(pretrainer, Pretrainer) or (
        pretrainer.loadables.get("separator") is not separator
    ):
        raise ValueError(
            f"{path}: `pretrainer` must be a speechbrain Pretrainer whose "
            "loadables.separator is the separator (!ref <separator>)"
        )
    return hparams


def minimum_input_samples(separator: nn.Module, device="cpu") -> int:
    """The shortest input (a power of two) ``separator`` accepts.

    A separator may say so itself with a ``min_input_samples`` attribute.
    Otherwise lengths 1, 2, 4, ... are tried until a forward pass works:
    e.g. SpeechBrain's Encoder needs at least its kernel (16 samples) and
    Conv-TasNet's dilated convolutions more; S4M takes any length.

    Arguments
    ---------
    separator : torch.nn.Module
        Mixture [B, T] -> estimates [B, T, S].
    device : str or torch.device
        Where the separator's parameters are.

    Returns
    -------
    int
        Samples.

    Example
    -------
    >>> from speechbrain_s4.models import build
    >>> minimum_input_samples(build("s4m-tiny", hidden_channels=8, num_blocks=1))
    1
    """
    declared = getattr(separator, "min_input_samples", None)
    if declared is not None:
        return int(declared)
    length = 1
    generator = torch.Generator().manual_seed(0)
    while True:
        probe = torch.randn(1, length, generator=generator).to(device)
        try:
            with torch.no_grad():
                separator(probe)
            return length
        except RuntimeError:
            if length >= _PROBE_LIMIT:
                raise
            length *= 2


# -- the interface ---------------------------------------------------------------


class S4Separation(Pretrained):
    """A ready-to-use speech separator (SepformerSeparation's API).

    Build it with :meth:`from_hparams` from an inference folder (or a bundled
    model's name). The separator is any module mixture [B, T] -> estimates
    [B, T, S] with ``sample_rate`` and ``num_spks`` (DEVELOPING.md).

    Arguments
    ---------
    modules : dict
        ``{"separator": module}``.
    hparams : dict
        With ``sample_rate`` and ``num_spks``; optional ``chunk_seconds`` and
        ``overlap_seconds`` override the model's default chunking.
    run_opts : dict, optional
        SpeechBrain run options, e.g. ``{"device": "cuda:0"}``.
    freeze_params : bool
        Freeze the parameters and call ``eval()`` (default True).

    Example
    -------
    >>> from speechbrain_s4.models import build
    >>> separator = build("s4m-tiny", hidden_channels=8, num_blocks=1)
    >>> model = S4Separation(
    ...     modules={"separator": separator},
    ...     hparams={"sample_rate": 8000, "num_spks": 2},
    ...     run_opts={"device": "cpu"},
    ... )
    >>> model.separate_batch(torch.randn(3, 1000)).shape
    torch.Size([3, 1000, 2])
    """

    MODULES_NEEDED = ["separator"]
    HPARAMS_NEEDED = ["num_spks", "sample_rate"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._min_input_samples = None

    @classmethod
    def from_hparams(
        cls,
        source=None,
        hparams_file: str = HPARAMS_FILE,
        savedir=None,
        overrides: dict | None = None,
        local_strategy: LocalStrategy = LocalStrategy.SYMLINK,
        **kwargs,
    ) -> S4Separation:
        """Load a model from an inference folder, offline and strictly.

        Arguments
        ---------
        source : str or os.PathLike, optional
            An inference folder, or a bundled model name; None is
            ``DEFAULT_MODEL``. Nothing is ever downloaded.
        hparams_file : str
            The YAML file in ``source`` (default ``hyperparams.yaml``).
        savedir : str or os.PathLike, optional
            As in SpeechBrain: a folder that receives links to (or copies
            of, see ``local_strategy``) the model's files, loaded from there.
        overrides : dict, optional
            Changes to the YAML (HyperPyYAML overrides).
        local_strategy : speechbrain.utils.fetching.LocalStrategy
            SYMLINK (default) or COPY, for ``savedir``.
        **kwargs
            Passed to the constructor (``run_opts``, ``freeze_params``).

        Returns
        -------
        S4Separation

        Raises
        ------
        FileNotFoundError
            No such folder or bundled model, or a file is missing.
        KeyError, ValueError
            The checkpoint does not fit the model (strict loading), or the
            YAML is not an inference folder's.
        """
        folder = model_folder(source)
        hparams_path, checkpoint_path = _model_files(folder, hparams_file)
        if savedir is not None and Path(savedir).resolve() != folder:
            local = FetchSource(FetchFrom.LOCAL, str(folder))
            config = FetchConfig(allow_network=False, overwrite=True)
            hparams_path, checkpoint_path = (
                Path(
                    fetch(
                        name,
                        source=local,
                        savedir=savedir,
                        local_strategy=local_strategy,
                        fetch_config=config,
                    )
                )
                for name in (hparams_file, CHECKPOINT_FILE)
            )
        hparams = _load_hparams(hparams_path, overrides)
        hparams["savedir"] = savedir
        separator = hparams["modules"]["separator"]
        load_strict(
            separator,
            _read_state_dict(checkpoint_path),
            source=f"the checkpoint {checkpoint_path}",
        )
        return cls(modules=hparams["modules"], hparams=hparams, **kwargs)

    # ------------------------------------------------------------- properties
    @property
    def sample_rate(self) -> int:
        """Rate in Hz the separator works at."""
        return int(self.hparams.sample_rate)

    @property
    def num_spks(self) -> int:
        """Number of speakers it separates."""
        return int(self.hparams.num_spks)

    @property
    def min_input_samples(self) -> int:
        """Shortest input the separator accepts (probed once, cached)."""
        if self._min_input_samples is None:
            self._min_input_samples = minimum_input_samples(
                self.mods.separator, self.device
            )
        return self._min_input_samples

    def chunking(
        self, chunk_seconds: float | None = None, overlap_seconds=None
    ) -> tuple[float, float]:
        """Chunk and overlap lengths (seconds) for long audio.

        Arguments
        ---------
        chunk_seconds : float, optional
            None: the model's default (hyperparams ``chunk_seconds`` or
            :func:`speechbrain_s4.chunking.default_chunking`); 0: no chunking.
        overlap_seconds : float, optional
            None: the default overlap, at most a quarter of the chunk.

        Returns
        -------
        tuple of float
            (chunk_seconds, overlap_seconds); chunk 0 means whole-file.
        """
        default_chunk, default_overlap = default_chunking(self.mods.separator)
        default_chunk = getattr(self.hparams, "chunk_seconds", default_chunk)
        default_overlap = getattr(
            self.hparams, "overlap_seconds", default_overlap
        )
        if chunk_seconds is None:
            chunk_seconds = default_chunk
        chunk_seconds = float(chunk_seconds)
        if chunk_seconds < 0 or math.isnan(chunk_seconds):
            raise ValueError(
                f"chunk_seconds must be >= 0 (0: no chunking), got "
                f"{chunk_seconds}"
            )
        if overlap_seconds is None:
            overlap_seconds = min(float(default_overlap), chunk_seconds / 4)
        overlap_seconds = float(overlap_seconds)
        if chunk_seconds and not 0 < overlap_seconds <= chunk_seconds / 2:
            raise ValueError(
                f"overlap_seconds must be > 0 and at most half the chunk "
                f"({chunk_seconds} s), got {overlap_seconds}"
            )
        return chunk_seconds, overlap_seconds

    # --------------------------------------------------------------- separate
    def _separate(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate [B, T] -> [B, T, S] in one pass (padding short inputs)."""
        length = mix.shape[1]
        padded = mix
        if length < self.min_input_samples:
            padded = F.pad(mix, (0, self.min_input_samples - length))
        estimates = self.mods.separator(padded)[:, :length]  # [B, T, S]
        # silence in -> silence out (some models give NaN or noise on it)
        silent = (mix == 0).all(dim=1).view(-1, 1, 1)  # [B, 1, 1]
        return torch.where(silent, torch.zeros_like(estimates), estimates)

    def _check_batch(self, mix: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(mix) or mix.dim() != 2:
            shape = tuple(mix.shape) if torch.is_tensor(mix) else type(mix)
            raise ValueError(
                f"separate_batch expects a [B, T] tensor of mixtures, got "
                f"{shape}; use mix.unsqueeze(0) for one signal"
            )
        if mix.shape[1] == 0:
            raise ValueError("the mixture holds no samples (T = 0)")
        check_finite(mix, "the mixture", self.sample_rate)
        return mix.to(self.device, torch.float32)

    def separate_batch(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate a batch of mixtures in one pass.

        Gradients flow to ``mix`` if it requires them, and to the parameters
        if they are not frozen (as in SpeechBrain); otherwise the pass runs
        under ``torch.no_grad`` (less memory, cached S4 kernels).

        Arguments
        ---------
        mix : torch.Tensor
            [B, T] mixtures at ``sample_rate``.

        Returns
        -------
        torch.Tensor
            [B, T, S] estimates, unnormalised; an all-zero mixture gives
            zeros; mixtures shorter than the model accepts are zero-padded
            for the model and trimmed back.
        """
        mix = self._check_batch(mix)
        needs_grad = mix.requires_grad or any(
            param.requires_grad for param in self.mods.parameters()
        )
        with torch.set_grad_enabled(needs_grad and torch.is_grad_enabled()):
            return self._separate(mix)

    def separate_long(
        self,
        mix: torch.Tensor,
        chunk_seconds: float | None = None,
        overlap_seconds: float | None = None,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """Separate long mixtures chunk by chunk (no gradients).

        Chunks of ``chunk_seconds`` overlap by ``overlap_seconds``; speakers
        are realigned between chunks and cross-faded over the overlap
        (:func:`speechbrain_s4.chunking.separate_in_chunks`). Mixtures no
        longer than one chunk go through in one pass.

        Arguments
        ---------
        mix : torch.Tensor
            [B, T] mixtures at ``sample_rate``.
        chunk_seconds : float, optional
            None: the model's default; 0: the whole mixture in one pass.
        overlap_seconds : float, optional
            None: the default (at most a quarter of the chunk).
        progress : bool, optional
            Progress bar over chunks; None: on a terminal, when chunked.

        Returns
        -------
        torch.Tensor
            [B, T, S] estimates.

        Example
        -------
        >>> from speechbrain_s4.models import build
        >>> model = S4Separation(
        ...     modules={"separator": build("s4m-tiny", hidden_channels=8,
        ...                                 num_blocks=1)},
        ...     hparams={"sample_rate": 8000, "num_spks": 2},
        ...     run_opts={"device": "cpu"},
        ... )
        >>> model.separate_long(torch.randn(1, 9000), chunk_seconds=0.5).shape
        torch.Size([1, 9000, 2])
        """
        mix = self._check_batch(mix)
        chunk_seconds, overlap_seconds = self.chunking(
            chunk_seconds, overlap_seconds
        )
        chunk = round(chunk_seconds * self.sample_rate)
        with torch.no_grad():
            if chunk == 0 or mix.shape[1] <= chunk:
                return self._separate(mix)
            overlap = max(1, round(overlap_seconds * self.sample_rate))
            return separate_in_chunks(
                self._separate, mix, chunk, overlap, progress=progress
            )

    def separate_file(
        self,
        path,
        chunk_seconds: float | None = None,
        overlap_seconds: float | None = None,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """Separate an audio file; the estimates come at the FILE's rate.

        The file is read with soundfile (any format it reads), its channels
        averaged to mono, resampled to the model's rate, separated with
        :meth:`separate_long` and resampled back: the result has as many
        samples as the file, at ``soundfile.info(path).samplerate``. Above
        the model's Nyquist frequency the estimates hold nothing. They are
        not peak-normalised (SpeechBrain's ``separate_file`` is).

        Arguments
        ---------
        path : str or os.PathLike
            A local audio file (nothing is fetched).
        chunk_seconds, overlap_seconds, progress
            See :meth:`separate_long`.

        Returns
        -------
        torch.Tensor
            [1, T_file, S] estimates at the file's rate.

        Raises
        ------
        FileNotFoundError
            No such file.
        ValueError
            Unreadable or empty file, or NaN/infinite samples (the message
            names the file).
        """
        mixture, file_rate = read_mixture(path)  # [T_file]
        mix = resample(mixture.unsqueeze(0), file_rate, self.sample_rate)
        estimates = self.separate_long(
            mix, chunk_seconds, overlap_seconds, progress
        )  # [1, T, S]
        estimates = resample(
            estimates.transpose(1, 2), self.sample_rate, file_rate
        ).transpose(1, 2)  # [1, T', S]
        return fit_length(estimates, mixture.shape[0])  # [1, T_file, S]

    def load_audio(self, path, savedir=None) -> torch.Tensor:
        """Read a local audio file as the model's input (offline).

        Replaces SpeechBrain's version, which may fetch ``path`` from the
        web or the HuggingFace Hub and downmixes differently.

        Arguments
        ---------
        path : str or os.PathLike
            A local audio file.
        savedir : None
            Accepted for SpeechBrain compatibility; nothing is fetched.

        Returns
        -------
        torch.Tensor
            [T'] mono mixture resampled to ``sample_rate``, on ``device``.
        """
        mixture, rate = read_mixture(path)
        return resample(mixture, rate, self.sample_rate).to(self.device)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`separate_batch`."""
        return self.separate_batch(mix)


# -- writing inference folders ---------------------------------------------------


def _tagged(mapping: dict, tag: str) -> CommentedMap:
    """A YAML mapping carrying a HyperPyYAML tag (e.g. ``!new:pkg.Class``)."""
    node = CommentedMap(mapping)
    node.yaml_set_ctag(ruamel.yaml.comments.Tag(suffix=tag))
    return node


def _inference_yaml(separator_node, sample_rate: int, num_spks: int, header):
    """The text of an inference folder's ``hyperparams.yaml``."""
    stream = io.StringIO()
    ruamel.yaml.YAML().dump({"separator": separator_node}, stream)
    comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header)
    return (
        f"{comment}\n"
        f"sample_rate: {int(sample_rate)}   # Hz the separator works at\n"
        f"num_spks: {int(num_spks)}   # speakers it separates\n\n"
        f"{stream.getvalue().rstrip()}\n\n"
        "modules:\n"
        "    separator: !ref <separator>\n\n"
        "# stock SpeechBrain loading (non-strict): Pretrained.from_hparams\n"
        "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer\n"
        "    loadables:\n"
        "        separator: !ref <separator>\n"
    )


def _build_separator(node) -> nn.Module:
    """Instantiate a separator from its YAML node."""
    stream = io.StringIO()
    ruamel.yaml.YAML().dump({"separator": node}, stream)
    return load_hyperpyyaml(stream.getvalue())["separator"]


def _write_inference_folder(
    out_folder, yaml_text: str, state_dict: dict, overwrite: bool
) -> Path:
    """Check that ``yaml_text`` + ``state_dict`` load strictly; write them."""
    out_folder = Path(out_folder)
    existing = [
        name
        for name in (HPARAMS_FILE, CHECKPOINT_FILE)
        if (out_folder / name).exists()
    ]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out_folder} already holds {', '.join(existing)}; choose a new "
            "folder or overwrite it (--overwrite)"
        )
    if out_folder.exists() and not out_folder.is_dir():
        raise NotADirectoryError(f"{out_folder} is a file, not a folder")
    separator = load_hyperpyyaml(yaml_text)["separator"]
    load_strict(separator, state_dict, source="the exported checkpoint")
    out_folder.mkdir(parents=True, exist_ok=True)
    (out_folder / HPARAMS_FILE).write_text(yaml_text, encoding="utf-8")
    torch.save(state_dict, out_folder / CHECKPOINT_FILE)
    return out_folder


def _find_separator_node(document, path: Path):
    """The YAML node defining the recipe's separator."""
    for keys in (
        ("modules", "separator"),
        ("model", "separator"),
        ("separator",),
    ):
        node = document
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and str(node.tag.value or "").startswith(
            "!new:"
        ):
            return node
    raise ValueError(
        f"{path} defines no separator (modules.separator with a !new: tag); "
        "is it the hyperparams.yaml that train.py saved?"
    )


def _checkpoint_folder(recipe_folder: Path, document) -> Path:
    """The folder holding the recipe's CKPT+* checkpoints."""
    candidates = [recipe_folder / "save"]
    save_folder = document.get("save_folder")
    if isinstance(save_folder, str) and os.path.isabs(save_folder):
        candidates.append(Path(save_folder))
    candidates.append(recipe_folder)
    for folder in candidates:
        if folder.is_dir() and any(folder.glob("CKPT+*/CKPT.yaml")):
            return folder
    raise FileNotFoundError(
        f"no checkpoint (CKPT+*/CKPT.yaml) in {recipe_folder / 'save'} or "
        f"{recipe_folder}; train first (python train.py <recipe>) or pass the "
        "checkpoint folder explicitly"
    )


def export_recipe(
    recipe_folder, out_folder, checkpoint=None, overwrite: bool = False
) -> dict:
    """Turn a ``train.py`` run's best checkpoint into an inference folder.

    ``train.py`` saves the recipe's ``hyperparams.yaml`` in its output folder
    with every ``!include:`` inlined and every reference resolved; the
    separator's definition (``modules.separator``) is copied from it as is
    (no recipe code is imported or run). The best checkpoint is the one with
    the lowest ``si-snr`` in its metadata, i.e. the best validation SI-SNR
    (the Brain logs negative SI-SNR under that name). The result is checked
    by building the separator from the written YAML and loading the weights
    strictly.

    Arguments
    ---------
    recipe_folder : str or os.PathLike
        The run's output folder (``results/<model>_<dataset>/<seed>``).
    out_folder : str or os.PathLike
        The inference folder to write.
    checkpoint : str or os.PathLike, optional
        A specific ``CKPT+...`` folder instead of the best one.
    overwrite : bool
        Replace the files of an existing inference folder.

    Returns
    -------
    dict
        ``folder``, ``checkpoint`` (the CKPT folder used), ``valid_si_snr``
        (dB, None if not recorded), ``model`` (separator class name).
    """
    recipe_folder = Path(recipe_folder)
    if not recipe_folder.is_dir():
        raise FileNotFoundError(
            f"no recipe output folder at {recipe_folder} (expected e.g. "
            "results/<model>_<dataset>/<seed> from train.py)"
        )
    hparams_path = recipe_folder / HPARAMS_FILE
    if not hparams_path.is_file():
        raise FileNotFoundError(
            f"no {HPARAMS_FILE} in {recipe_folder}: give the output folder "
            "of a train.py run (results/<model>_<dataset>/<seed>)"
        )
    document = ruamel.yaml.YAML().load(hparams_path.read_text(encoding="utf-8"))
    node = _find_separator_node(document, hparams_path)

    if checkpoint is None:
        ckpt_folder = _checkpoint_folder(recipe_folder, document)
        best = Checkpointer(ckpt_folder).find_checkpoint(min_key="si-snr")
        if best is None:
            raise ValueError(
                f"no checkpoint in {ckpt_folder} records a validation "
                "'si-snr' (the Brain stores it at the end of each epoch); "
                "pass one CKPT+ folder explicitly (--checkpoint)"
            )
        ckpt_path, meta = Path(best.path), best.meta
    else:
        ckpt_path = Path(checkpoint)
        meta_path = ckpt_path / "CKPT.yaml"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{ckpt_path} is not a checkpoint folder (no CKPT.yaml)"
            )
        meta = ruamel.yaml.YAML(typ="safe").load(meta_path.read_text()) or {}
    weights = ckpt_path / CHECKPOINT_FILE
    if not weights.is_file():
        raise FileNotFoundError(
            f"{ckpt_path} holds no {CHECKPOINT_FILE} (the Brain's only module "
            "must be called 'separator')"
        )
    state_dict = _read_state_dict(weights)

    separator = _build_separator(node)
    sample_rate = int(getattr(separator, "sample_rate", 0)) or int(
        document.get("sample_rate") or 0
    )
    num_spks = int(getattr(separator, "num_spks", 0)) or int(
        document.get("num_spks") or 0
    )
    if not sample_rate or not num_spks:
        raise ValueError(
            f"{hparams_path}: cannot tell the separator's sample_rate and "
            "num_spks (give the separator those attributes)"
        )
    loss = meta.get("si-snr")
    valid_si_snr = None if loss is None else -float(loss)
    header = [
        f"Inference folder of speechbrain_s4 ({type(separator).__name__}), "
        f"written by `speechbrain-s4 export` on {datetime.date.today()}",
        f"from {recipe_folder.resolve()}",
        f"checkpoint {ckpt_path.name}"
        + (
            f", validation SI-SNR {valid_si_snr:.2f} dB"
            if valid_si_snr is not None
            else ""
        ),
        "Load: speechbrain_s4.inference.S4Separation.from_hparams(<folder>)",
    ]
    yaml_text = _inference_yaml(node, sample_rate, num_spks, header)
    folder = _write_inference_folder(
        out_folder, yaml_text, state_dict, overwrite
    )
    logger.info(f"exported {ckpt_path} to {folder}")
    return {
        "folder": folder,
        "checkpoint": ckpt_path,
        "valid_si_snr": valid_si_snr,
        "model": type(separator).__name__,
    }


def separator_arguments(separator: nn.Module) -> dict:
    """Keyword arguments that rebuild ``separator`` from its class.

    The separators of this package record the arguments they were built
    with (``speechbrain_s4.models.arguments.records_arguments``); any other
    class works when every parameter of its ``__init__`` is stored as an
    attribute of the same name. The result is always verified by the caller
    (strict loading and equal outputs), so a wrong reading cannot go
    unnoticed.

    Arguments
    ---------
    separator : torch.nn.Module

    Returns
    -------
    dict
        Plain values (numbers, strings, booleans).

    Example
    -------
    >>> from speechbrain_s4.models import build
    >>> args = separator_arguments(build("s4m", hidden_channels=8, num_blocks=1))
    >>> args["hidden_channels"], args["decoder_s4"]
    (8, True)
    """
    parameters = [
        name
        for name in inspect.signature(type(separator).__init__).parameters
        if name != "self"
    ]
    recorded = getattr(separator, "init_arguments", None)
    if recorded is not None:
        return dict(recorded)
    missing = [name for name in parameters if not hasattr(separator, name)]
    if missing:
        raise ValueError(
            f"cannot write a YAML definition of {type(separator).__name__}: "
            f"its constructor arguments {missing} are not stored on the "
            "module; decorate the class with "
            "speechbrain_s4.models.arguments.records_arguments"
        )
    return {name: getattr(separator, name) for name in parameters}


def save_inference_folder(
    separator: nn.Module,
    out_folder,
    overwrite: bool = False,
    description: list | None = None,
) -> Path:
    """Write a separator module as an inference folder.

    The YAML definition is read back from the module
    (:func:`separator_arguments`) and verified before anything is written:
    the separator built from the YAML must load the weights strictly and give
    the same outputs as ``separator`` on a probe signal.

    Arguments
    ---------
    separator : torch.nn.Module
        A separator with ``sample_rate`` and ``num_spks``.
    out_folder : str or os.PathLike
        The inference folder to write.
    overwrite : bool
        Replace the files of an existing inference folder.
    description : list of str, optional
        Comment lines for the top of ``hyperparams.yaml`` (provenance).

    Returns
    -------
    pathlib.Path
        The folder.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_s4.models import build
    >>> folder = save_inference_folder(
    ...     build("s4m-tiny", hidden_channels=8, num_blocks=1), tempfile.mkdtemp()
    ... )
    >>> S4Separation.from_hparams(folder).separate_batch(torch.randn(1, 900)).shape
    torch.Size([1, 900, 2])
    """
    was_training = separator.training
    separator.eval()
    arguments = separator_arguments(separator)
    cls = type(separator)
    node = _tagged(arguments, f"!new:{cls.__module__}.{cls.__qualname__}")
    header = list(description or []) or [
        f"Inference folder of speechbrain_s4 ({cls.__name__}), written on "
        f"{datetime.date.today()}"
    ]
    header.append(
        "Load: speechbrain_s4.inference.S4Separation.from_hparams(<folder>)"
    )
    yaml_text = _inference_yaml(
        node, separator.sample_rate, separator.num_spks, header
    )
    state_dict = separator.state_dict()
    rebuilt = load_hyperpyyaml(yaml_text)["separator"].eval()
    load_strict(rebuilt, state_dict, source=f"{cls.__name__}'s state dict")
    probe = torch.randn(
        1,
        max(int(separator.sample_rate) // 4, 64),
        generator=torch.Generator().manual_seed(0),
    ).to(next(separator.parameters()).device)
    with torch.no_grad():
        expected, got = separator(probe), rebuilt.to(probe.device)(probe)
    separator.train(was_training)
    tolerance = 1e-6 * float(expected.abs().max())
    if not torch.allclose(got, expected, rtol=0, atol=tolerance):
        raise RuntimeError(
            f"the YAML written for {cls.__name__} rebuilds a different model "
            f"(max difference {float((got - expected).abs().max()):.3g}); "
            "fix its argument reader in speechbrain_s4.inference"
        )
    return _write_inference_folder(
        out_folder,
        yaml_text,
        {k: v.cpu() for k, v in state_dict.items()},
        overwrite,
    )


def convert_checkpoint(
    arch: str,
    checkpoint,
    out_folder,
    overwrite: bool = False,
    conj_symmetric: bool = True,
    **reference_kwargs,
) -> dict:
    """Original S4M/SPMamba checkpoint -> inference folder.

    The checkpoint is loaded with
    :func:`speechbrain_s4.convert.load_reference_checkpoint` (strict, with
    the original constructor's keyword arguments) and written with
    :func:`save_inference_folder` (verified rebuild).

    Arguments
    ---------
    arch : str
        "s4m" (JusperLee/S4M) or "spmamba" (JusperLee/SPMamba), as
        ``load_reference_checkpoint`` knows them.
    checkpoint : str or os.PathLike
        The original checkpoint file.
    out_folder : str or os.PathLike
        The inference folder to write.
    overwrite : bool
        Replace the files of an existing inference folder.
    conj_symmetric : bool
        S4 kernel semantics for S4M (True: exact; False: the reference's
        CPU fallback).
    **reference_kwargs
        The original constructor's keyword arguments (e.g. ``num_blocks=8``).

    Returns
    -------
    dict
        ``folder``, ``model`` (class name), ``arguments`` (constructor).
    """
    extra = {} if arch != "s4m" else {"conj_symmetric": conj_symmetric}
    try:
        model = load_reference_checkpoint(
            checkpoint, arch, **extra, **reference_kwargs
        )
    except TypeError as err:  # unknown constructor arguments
        raise ValueError(str(err)) from err
    description = [
        f"Inference folder of speechbrain_s4 ({type(model).__name__}), "
        f"written by `speechbrain-s4 convert {arch}` on "
        f"{datetime.date.today()}",
        f"from {Path(checkpoint).resolve()}",
    ]
    folder = save_inference_folder(model, out_folder, overwrite, description)
    logger.info(f"converted {checkpoint} ({arch}) to {folder}")
    return {
        "folder": folder,
        "model": type(model).__name__,
        "arguments": separator_arguments(model),
    }


# -- evaluation ------------------------------------------------------------------


def _audio_files(folder: Path) -> list[Path]:
    """Audio files in ``folder`` (extensions soundfile knows), sorted."""
    extensions = {f".{ext.lower()}" for ext in sf.available_formats()}
    extensions |= {".aif", ".oga", ".opus"}
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in extensions
    )


def evaluate_folders(
    mixture_folder,
    reference_folders,
    separation=None,
    estimates_folder=None,
    chunk_seconds: float | None = None,
    run_opts: dict | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """Score separation of every mixture in a folder against references.

    Each mixture ``<mixture_folder>/<name>`` has its speaker ``k`` reference
    at ``<reference_folders[k]>/<name>`` (the WSJ0-2mix layout: ``mix/``,
    ``s1/``, ``s2/``). The estimates come from ``separation`` (at the
    mixture's rate), or from ``<estimates_folder>/<stem>_s<k>.wav`` as
    written by ``speechbrain-s4 separate``. The folders are checked before
    a model is loaded. Metrics are those of
    :func:`speechbrain_s4.metrics.utterance_metrics` (SI-SNR, SI-SNRi, SDR,
    SDRi with the best permutation).

    Arguments
    ---------
    mixture_folder : str or os.PathLike
        Folder of mixtures.
    reference_folders : list
        One folder per speaker.
    separation : S4Separation, str or os.PathLike, optional
        The model, or where to load it from (an inference folder or bundled
        name; None: ``DEFAULT_MODEL``); unused with ``estimates_folder``.
    estimates_folder : str or os.PathLike, optional
        Folder of already separated files.
    chunk_seconds : float, optional
        Passed to :meth:`S4Separation.separate_file`.
    run_opts : dict, optional
        Run options when the model is loaded here, e.g. ``{"device": "cpu"}``.
    progress : bool, optional
        A tqdm progress bar over the mixtures (and over the chunks of long
        ones); None: only on a terminal.

    Returns
    -------
    list of dict
        One row per mixture (``snt_id`` = file stem, ``sdr``, ``sdr_i``,
        ``si-snr``, ``si-snr_i``, ...).
    """
    mixture_folder = Path(mixture_folder)
    folders = [Path(folder) for folder in reference_folders]
    for folder in [mixture_folder, *folders] + (
        [Path(estimates_folder)] if estimates_folder is not None else []
    ):
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder at {folder}")
    mixtures = _audio_files(mixture_folder)
    if not mixtures:
        raise FileNotFoundError(f"no audio files in {mixture_folder}")
    if estimates_folder is None:
        if not isinstance(separation, S4Separation):
            separation = S4Separation.from_hparams(
                separation, run_opts=run_opts
            )
        if separation.num_spks != len(folders):
            raise ValueError(
                f"the model separates {separation.num_spks} speakers but "
                f"{len(folders)} reference folder(s) were given"
            )
    rows = []
    # tqdm's disable=None: shown only on a terminal
    for path in tqdm(
        mixtures, desc="evaluating", unit="file",
        disable=None if progress is None else not progress,
    ):
        mixture, rate = read_mixture(path)  # [T]
        references = []
        for folder in folders:
            reference, reference_rate = read_mixture(folder / path.name)
            if reference_rate != rate or reference.shape != mixture.shape:
                raise ValueError(
                    f"{folder / path.name} ({reference.shape[0]} samples at "
                    f"{reference_rate} Hz) does not match its mixture {path} "
                    f"({mixture.shape[0]} samples at {rate} Hz)"
                )
            references.append(reference)
        if estimates_folder is not None:
            estimates = []
            for k in range(len(folders)):
                file = Path(estimates_folder) / f"{path.stem}_s{k + 1}.wav"
                estimate, estimate_rate = read_mixture(file)
                if estimate_rate != rate or estimate.shape != mixture.shape:
                    raise ValueError(
                        f"{file} ({estimate.shape[0]} samples at "
                        f"{estimate_rate} Hz) does not match its mixture "
                        f"{path} ({mixture.shape[0]} samples at {rate} Hz)"
                    )
                estimates.append(estimate)
            estimated = torch.stack(estimates, dim=-1)  # [T, S]
        else:
            estimated = separation.separate_file(
                path, chunk_seconds=chunk_seconds, progress=progress
            )[0].cpu()  # [T, S]
        rows.append(
            utterance_metrics(
                path.stem,
                mixture,
                torch.stack(references, dim=-1),  # [T, S]
                estimated,
                rate,
            )
        )
    return rows


def format_results_table(rows: list[dict]) -> str:
    """A plain-text table of result rows plus their average.

    Arguments
    ---------
    rows : list of dict
        From :func:`evaluate_folders`.

    Returns
    -------
    str

    Example
    -------
    >>> print(format_results_table([{"snt_id": "a", "si-snr_i": 10.0}]))
    snt_id  si-snr_i
    a          10.00
    avg        10.00
    """
    columns = list(rows[0])
    numeric = columns[1:]
    average = {"snt_id": "avg"}
    for name in numeric:
        average[name] = sum(row[name] for row in rows) / len(rows)
    cells = [columns] + [
        [str(row["snt_id"])] + [f"{row[name]:.2f}" for name in numeric]
        for row in [*rows, average]
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        )
        for line in cells
    ]
    return "\n".join(line.rstrip() for line in lines)
