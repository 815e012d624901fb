"""The offline demo: mix two real voices, separate them, show the result.

``speechbrain-s4 demo`` needs nothing but this package and the Debian voice
packages (``speechbrain_s4.voices``): it takes one utterance from each of two
voices of minimix's *test* split (voices the bundled model never heard in
training), mixes them WSJ0-2mix style (relative level drawn from 0-5 dB),
separates the mixture with a model (the bundled one by default), scores the
estimates against the true sources (SI-SNRi, SDRi) and writes

    <out>/mixture.wav, <out>/source1.wav, <out>/source2.wav   (the inputs)
    <out>/mixture_s1.wav, <out>/mixture_s2.wav                (the estimates)
    <out>/spectrograms.png                                    (all of them)

Authors
 * speechbrain_s4 contributors
"""

from pathlib import Path

import numpy as np
import torch

__all__ = ["demo_mixture", "run_demo", "plot_spectrograms"]


def demo_mixture(sample_rate: int = 8000, seed: int = 0, seconds=(3.0, 6.0)):
    """Two real utterances of two held-out voices and their mixture.

    Arguments
    ---------
    sample_rate : int
        8000 or 16000 (minimix's rates).
    seed : int
        Chooses the utterances and the relative level.
    seconds : (float, float)
        Utterance length range (the mixture is as long as the shorter).

    Returns
    -------
    mixture : np.ndarray
        [T] float32.
    sources : np.ndarray
        [T, 2] float32, ``mixture == sources.sum(-1)``.
    info : dict
        The voices, the relative level in dB and the sample rate.

    Raises
    ------
    FileNotFoundError
        When the voice packages are missing (with the apt-get line).
    """
    from speechbrain_s4 import minimix
    from speechbrain_s4.voices import find_voices, require_voices

    require_voices(sample_rate)
    voices = list(minimix.MAJOR_VOICES[sample_rate]["test"][:2])
    paths = find_voices(sample_rate)
    rng = np.random.default_rng(seed)
    utterances = []
    for voice in voices:
        phrases = minimix.load_phrases(
            paths[voice], sample_rate, rng, seconds[1], seconds[0], limit=40
        )
        packed = minimix.pack_utterances(
            phrases, sample_rate, rng, seconds, (0.1, 0.4)
        )
        longest = max(packed, key=lambda item: len(item[0]))[0]
        utterances.append(longest)
    length = min(len(u) for u in utterances)
    level_db = float(rng.uniform(0.0, 5.0))
    # over the mixture, the first voice is level_db louder than the second
    # (+/- level_db / 2 around a common level), as in minimix.mix_pair
    sources = np.stack(
        [
            u[:length] * 10 ** (sign * level_db / 40) / _rms(u[:length])
            for u, sign in zip(utterances, (1, -1))
        ],
        axis=-1,
    )  # [T, 2]
    peak = np.abs(sources.sum(-1)).max()
    sources = (sources * min(1.0, 0.9 / peak)).astype(np.float32)
    info = {"voices": voices, "level_db": level_db, "sample_rate": sample_rate}
    return sources.sum(-1), sources, info


def plot_spectrograms(signals: dict, sample_rate: int, path) -> Path:
    """Write log-magnitude spectrograms of named signals to a PNG.

    Arguments
    ---------
    signals : dict
        ``{title: [T] array}``, one panel each, top to bottom.
    sample_rate : int
        Their rate in Hz.
    path : str or os.PathLike
        The PNG file.

    Returns
    -------
    pathlib.Path

    Example
    -------
    >>> import tempfile
    >>> png = Path(tempfile.mkdtemp()) / "s.png"
    >>> plot_spectrograms({"noise": np.random.randn(8000)}, 8000, png).exists()
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_fft = 256 if sample_rate <= 8000 else 512
    figure, axes = plt.subplots(
        len(signals), 1, figsize=(10, 2.2 * len(signals)), squeeze=False
    )
    for axis, (title, signal) in zip(axes[:, 0], signals.items()):
        spec = torch.stft(
            torch.as_tensor(np.asarray(signal, dtype=np.float32)),
            n_fft,
            hop_length=n_fft // 4,
            window=torch.hann_window(n_fft),
            return_complex=True,
        ).abs()
        db = 20 * torch.log10(spec + 1e-6)
        duration = len(signal) / sample_rate
        axis.imshow(
            db.numpy(),
            origin="lower",
            aspect="auto",
            extent=(0, duration, 0, sample_rate / 2000),
            vmin=float(db.max()) - 80,
            cmap="magma",
        )
        axis.set_title(title, fontsize=10)
        axis.set_ylabel("kHz")
    axes[-1, 0].set_xlabel("seconds")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def run_demo(
    out_dir="demo_out", model=None, seed: int = 0, run_opts=None
) -> dict:
    """Mix two held-out real voices, separate, score and write the files.

    Arguments
    ---------
    out_dir : str or os.PathLike
        Where the wavs and the PNG go (created).
    model : str or os.PathLike, optional
        An inference folder or a bundled model name (default: the bundled
        S4M-tiny).
    seed : int
        Chooses the utterances.
    run_opts : dict, optional
        SpeechBrain run options (e.g. ``{"device": "cpu"}``).

    Returns
    -------
    dict
        ``files`` written, ``voices``, ``level_db``, ``si-snr_i``, ``sdr_i``.
    """
    import soundfile as sf

    from speechbrain_s4.inference import S4Separation
    from speechbrain_s4.metrics import utterance_metrics

    separator = S4Separation.from_hparams(source=model, run_opts=run_opts)
    rate = separator.sample_rate
    mixture, sources, info = demo_mixture(rate, seed)
    with torch.no_grad():
        estimates = separator.separate_batch(torch.from_numpy(mixture)[None])
    estimates = estimates[0].cpu().numpy()  # [T, S]
    scores = utterance_metrics(
        "demo",
        torch.from_numpy(mixture),
        torch.from_numpy(sources),
        torch.from_numpy(estimates),
        rate,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "mixture.wav": mixture,
        "source1.wav": sources[:, 0],
        "source2.wav": sources[:, 1],
    }
    for k in range(estimates.shape[1]):
        files[f"mixture_s{k + 1}.wav"] = estimates[:, k]
    written = []
    for name, signal in files.items():
        sf.write(out / name, signal, rate, subtype="FLOAT")
        written.append(out / name)
    panels = {
        f"mixture ({info['voices'][0]} + {info['voices'][1]}, "
        f"{info['level_db']:.1f} dB apart)": mixture,
    }
    for k in range(estimates.shape[1]):
        panels[f"estimate {k + 1}"] = estimates[:, k]
    for k in range(sources.shape[1]):
        panels[f"true source {k + 1} ({info['voices'][k]})"] = sources[:, k]
    written.append(plot_spectrograms(panels, rate, out / "spectrograms.png"))
    return {
        "files": written,
        "voices": info["voices"],
        "level_db": info["level_db"],
        "si-snr_i": scores["si-snr_i"],
        "sdr_i": scores["sdr_i"],
    }


def _rms(signal: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(signal, dtype=np.float64))))
