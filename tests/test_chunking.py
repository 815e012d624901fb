"""Long-audio separation: chunk plan, speaker realignment, overlap-add.

What the 0.5 dB requirement (chunked within 0.5 dB SI-SNRi of whole-file
processing on real speech) is checked with here, until the bundled model
exists:

* an oracle that returns the true sources of each chunk, permuted at random
  on every call: the chunked result must equal the sources exactly, which
  checks the bounds, the realignment and the cross-fade;
* an ideal-ratio-mask oracle on two real voices, also permuted per call: a
  "model" that really separates and whose output depends on the chunk
  (STFT framing at the edges), compared chunked vs whole;
* a tiny S4M trained in the test for a few seconds on a real-speech mixture
  whose two voices were band-limited to disjoint bands (so that a tiny
  model learns to separate it quickly), wrapped so that its speaker order
  changes at random on every call;
* the bundled model on a real-speech mixture, once it is installed.
"""

import itertools

import numpy as np
import pytest
import torch
import torchaudio

from speechbrain_s4.chunking import (
    DEFAULT_CHUNKING,
    best_speaker_order,
    chunk_bounds,
    crossfade_weights,
    default_chunking,
    separate_in_chunks,
)
from speechbrain_s4.inference import S4Separation
from speechbrain_s4.metrics import si_snr, si_snr_improvement
from speechbrain_s4.models import build
from speechbrain_s4.voices import find_voices, load_clip

RATE = 8000
#: two voices of different sex and language, both in asterisk-core-sounds
VOICES = ("en_US_f_Allison", "it_IT_m_Carlo")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the box's two cores are shared (much faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def real_speech(seconds, rate=RATE):
    """[T, 2] float32: the first prompts of two Debian voices, unit std."""
    voices = find_voices(rate)
    missing = [voice for voice in VOICES if voice not in voices]
    if missing:
        pytest.skip(
            f"Debian voice(s) {missing} not installed "
            "(apt-get install asterisk-core-sounds-en-wav "
            "asterisk-core-sounds-it-wav)"
        )
    signals = []
    for voice in VOICES:
        clips, total = [], 0
        for path in voices[voice]:
            clip = load_clip(path, rate)
            clips.append(clip)
            total += len(clip)
            if total >= seconds * rate:
                break
        signal = np.concatenate(clips)[: int(seconds * rate)]
        signals.append(signal / (signal.std() + 1e-8))
    return torch.from_numpy(np.stack(signals, axis=-1)).float()  # [T, 2]


class ScriptedChunks:
    """Base of the oracles: knows which chunk each call receives."""

    def __init__(self, mix, bounds, seed=0):
        self.mix = mix  # [B, T]
        self.bounds = list(bounds)
        self.calls = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.permutations = []

    def locate(self, chunk):
        start, end = self.bounds[self.calls]
        assert torch.equal(chunk, self.mix[:, start:end]), "unexpected chunk"
        self.calls += 1
        return start, end

    def permute(self, estimates):
        order = torch.randperm(estimates.shape[-1], generator=self.generator)
        self.permutations.append(order.tolist())
        return estimates[..., order]


class PermutingOracle(ScriptedChunks):
    """Returns the true sources of each chunk, in a random speaker order."""

    def __init__(self, mix, sources, bounds, seed=0):
        super().__init__(mix, bounds, seed)
        self.sources = sources  # [B, T, S]

    def __call__(self, chunk):
        start, end = self.locate(chunk)
        return self.permute(self.sources[:, start:end].clone())


class IdealRatioMaskOracle(ScriptedChunks):
    """Separates a chunk with ideal ratio masks computed on that chunk.

    est_s = iSTFT(|S_s|^2 / sum_k |S_k|^2 * X), a real separator whose
    output depends on where the chunk starts and ends (STFT framing).
    """

    n_fft = 256

    def __init__(self, mix, sources, bounds, seed=0):
        super().__init__(mix, bounds, seed)
        self.sources = sources  # [B, T, S]

    def stft(self, signal):
        return torch.stft(
            signal,
            self.n_fft,
            hop_length=self.n_fft // 4,
            window=torch.hann_window(self.n_fft),
            return_complex=True,
        )

    def __call__(self, chunk):
        start, end = self.locate(chunk)
        mixture = self.stft(chunk)  # [B, F, N]
        powers = torch.stack(
            [
                self.stft(self.sources[:, start:end, s]).abs() ** 2
                for s in range(self.sources.shape[-1])
            ],
            dim=-1,
        )  # [B, F, N, S]
        masks = powers / (powers.sum(-1, keepdim=True) + 1e-10)
        estimates = torch.stack(
            [
                torch.istft(
                    mixture * masks[..., s],
                    self.n_fft,
                    hop_length=self.n_fft // 4,
                    window=torch.hann_window(self.n_fft),
                    length=end - start,
                )
                for s in range(masks.shape[-1])
            ],
            dim=-1,
        )  # [B, t, S]
        return self.permute(estimates)


# -- the chunk plan --------------------------------------------------------------


@pytest.mark.parametrize(
    "length, chunk, overlap",
    [
        (1, 10, 2),
        (10, 10, 2),
        (11, 10, 2),
        (25, 10, 2),
        (1001, 97, 13),
        (500, 100, 50),
        (777, 64, 1),
    ],
)
def test_chunk_bounds_tile_the_signal_with_fixed_overlap(
    length, chunk, overlap
):
    bounds = chunk_bounds(length, chunk, overlap)
    assert bounds[0][0] == 0 and bounds[-1][1] == length
    covered = torch.zeros(length, dtype=torch.long)
    for start, end in bounds:
        assert 0 < end - start <= chunk
        covered[start:end] += 1
    assert covered.min() >= 1
    for (start, end), (next_start, _) in itertools.pairwise(bounds):
        assert end - start == chunk  # only the last chunk may be shorter
        assert end - next_start == overlap
    # an overlap never reaches back into the previous one
    assert covered.max() <= 2


@pytest.mark.parametrize("chunk, overlap", [(10, 6), (10, -1), (0, 0)])
def test_chunk_bounds_reject_bad_overlap(chunk, overlap):
    with pytest.raises(ValueError, match="overlap|chunk"):
        chunk_bounds(100, chunk, overlap)


def test_chunks_without_overlap_are_refused():
    with pytest.raises(ValueError, match="overlap"):
        separate_in_chunks(lambda c: c[..., None], torch.randn(1, 50), 10, 0)


def test_crossfade_weights_are_complementary_and_increasing():
    for overlap in (1, 2, 7, 160):
        weights = crossfade_weights(overlap, torch.float64)
        ones = torch.ones(overlap, dtype=torch.float64)
        assert torch.allclose(weights + weights.flip(0), ones)
        assert bool((weights.diff() > 0).all())
        assert 0 < float(weights[0]) <= 0.5 + 1e-12
        assert 0.5 - 1e-12 <= float(weights[-1]) < 1


# -- realignment -----------------------------------------------------------------


@pytest.mark.parametrize("num_spks", [2, 3, 4])
def test_best_speaker_order_finds_every_permutation(num_spks):
    previous = torch.randn(5, 400, num_spks)
    for order in itertools.permutations(range(num_spks)):
        inverse = torch.argsort(torch.tensor(order))
        # the current chunk: the same speakers, shuffled, rescaled, noisy
        current = previous[..., inverse] * torch.rand(num_spks) * 3 + 0.1
        current = current + 0.3 * torch.randn_like(current)
        found = best_speaker_order(previous, current)
        assert found.tolist() == [list(order)] * 5
        # current[..., order[s]] continues previous speaker s
        aligned = current[..., list(order)]
        cosine = torch.nn.functional.cosine_similarity(aligned, previous, dim=1)
        assert bool((cosine > 0).all())


def test_best_speaker_order_matches_brute_force_si_snr_choice():
    torch.manual_seed(3)
    previous = torch.randn(8, 300, 3)
    current = previous[..., [1, 2, 0]] + 2.0 * torch.randn(8, 300, 3)
    found = best_speaker_order(previous, current)
    for b in range(8):
        best = max(
            itertools.permutations(range(3)),
            key=lambda order: sum(
                float(
                    torch.nn.functional.cosine_similarity(
                        previous[b, :, s], current[b, :, order[s]], dim=0
                    )
                )
                for s in range(3)
            ),
        )
        assert found[b].tolist() == list(best)


def test_best_speaker_order_keeps_identity_on_silence():
    order = best_speaker_order(torch.zeros(2, 100, 3), torch.randn(2, 100, 3))
    assert order.tolist() == [[0, 1, 2], [0, 1, 2]]


# -- default chunking ------------------------------------------------------------


def test_default_chunking_by_model_class():
    s4m = build("s4m-tiny", hidden_channels=8, num_blocks=1, depth=2)
    assert default_chunking(s4m) == DEFAULT_CHUNKING["S4M"]

    class Custom(torch.nn.Module):
        chunk_seconds = 3.0
        overlap_seconds = 0.25

    assert default_chunking(Custom()) == (3.0, 0.25)
    from speechbrain.lobes.models.conv_tasnet import MaskNet
    from speechbrain.lobes.models.dual_path import Decoder, Encoder

    from speechbrain_s4.models.masking import MaskingSeparator

    tasnet = MaskingSeparator(
        Encoder(kernel_size=16, out_channels=8),
        MaskNet(N=8, B=8, H=8, P=3, X=1, R=1, C=2),
        Decoder(in_channels=8, out_channels=1, kernel_size=16, stride=8),
        num_spks=2,
        sample_rate=RATE,
    )
    assert default_chunking(tasnet) == DEFAULT_CHUNKING["MaskNet"]


# -- whole pipeline with oracles ---------------------------------------------------


@pytest.mark.parametrize("num_spks", [2, 3])
def test_chunked_permuting_oracle_reconstructs_the_sources(num_spks):
    torch.manual_seed(1)
    sources = torch.randn(2, 5003, num_spks) * torch.rand(2, 1, num_spks)
    mix = sources.sum(-1)
    chunk, overlap = 700, 150
    oracle = PermutingOracle(
        mix, sources, chunk_bounds(mix.shape[1], chunk, overlap)
    )
    estimates = separate_in_chunks(oracle, mix, chunk, overlap, progress=False)
    assert oracle.calls == len(oracle.bounds) == 9
    # the oracle did shuffle the speakers between chunks
    assert len({tuple(order) for order in oracle.permutations}) > 1
    # the first chunk fixes the speaker order of the whole output
    first = oracle.permutations[0]
    assert torch.allclose(estimates, sources[..., first], atol=1e-6)


def test_chunked_ideal_mask_oracle_matches_whole_file_on_real_speech():
    speech = real_speech(seconds=12.0)[None]  # [1, T, 2]
    mix = speech.sum(-1)
    whole_oracle = IdealRatioMaskOracle(mix, speech, [(0, mix.shape[1])])
    whole = whole_oracle(mix)[
        ..., torch.argsort(torch.tensor(whole_oracle.permutations[0]))
    ]
    chunk, overlap = 2 * RATE, RATE // 4
    oracle = IdealRatioMaskOracle(
        mix, speech, chunk_bounds(mix.shape[1], chunk, overlap), seed=5
    )
    chunked = separate_in_chunks(oracle, mix, chunk, overlap, progress=False)
    assert len({tuple(order) for order in oracle.permutations}) > 1
    _, gain_whole = si_snr_improvement(mix, speech, whole)
    _, gain_chunked = si_snr_improvement(mix, speech, chunked)
    assert float(gain_whole) > 10.0  # the oracle really separates
    assert abs(float(gain_chunked - gain_whole)) < 0.5
    # and the chunked output is the whole-file output up to small seams
    assert float(si_snr(whole, chunked)) > 25.0


@pytest.fixture(scope="module")
def band_split_model(one_thread):
    """A tiny S4M trained for a few seconds on a real-speech mixture.

    The two voices are band-limited to disjoint bands (below 700 Hz, above
    1.5 kHz) so that a tiny model learns to separate them in 100 steps.
    Returns (model, mixture [1, T], sources [1, T, 2]).
    """
    speech = real_speech(seconds=12.0)  # [T, 2]
    low = speech[:, 0]
    high = speech[:, 1]
    for _ in range(2):
        low = torchaudio.functional.lowpass_biquad(low, RATE, 700.0)
        high = torchaudio.functional.highpass_biquad(high, RATE, 1500.0)
    sources = 0.1 * torch.stack([low / low.std(), high / high.std()], -1)[None]
    mix = sources.sum(-1)  # [1, T]
    torch.manual_seed(0)
    model = build(
        "s4m-tiny",
        hidden_channels=16,
        bottleneck_channels=8,
        num_blocks=1,
        depth=2,
        d_state=4,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    crop = RATE // 2
    for _ in range(100):
        starts = torch.randint(
            0, mix.shape[1] - crop, (4,), generator=generator
        )
        batch_mix = torch.stack([mix[0, s : s + crop] for s in starts])
        batch_src = torch.stack([sources[0, s : s + crop] for s in starts])
        loss = -si_snr(batch_src, model(batch_mix)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), mix, sources


class RandomSpeakerOrder(torch.nn.Module):
    """Wraps a separator so that its speaker order changes on every call."""

    def __init__(self, separator, seed=0):
        super().__init__()
        self.separator = separator
        self.sample_rate = separator.sample_rate
        self.num_spks = separator.num_spks
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, mix):
        order = torch.randperm(self.num_spks, generator=self.generator)
        return self.separator(mix)[..., order]


def test_chunked_trained_model_matches_whole_file_on_real_speech(
    band_split_model,
):
    model, mix, sources = band_split_model
    interface = S4Separation(
        modules={"separator": RandomSpeakerOrder(model)},
        hparams={"sample_rate": RATE, "num_spks": 2},
        run_opts={"device": "cpu"},
    )
    whole = interface.separate_long(mix, chunk_seconds=0)
    _, gain_whole = si_snr_improvement(mix, sources, whole)
    assert float(gain_whole) > 10.0  # the model really separates
    for chunk_seconds in (1.0, 2.5):
        chunked = interface.separate_long(
            mix, chunk_seconds=chunk_seconds, overlap_seconds=0.25
        )
        _, gain_chunked = si_snr_improvement(mix, sources, chunked)
        assert abs(float(gain_chunked - gain_whole)) < 0.5
        assert float(si_snr(whole, chunked)) > 20.0


def test_chunked_bundled_model_matches_whole_file_on_real_speech():
    speech = 0.05 * real_speech(seconds=20.0)[None]  # [1, T, 2]
    mix = speech.sum(-1)
    interface = S4Separation.from_hparams(
        "s4m-tiny-minimix", run_opts={"device": "cpu"}
    )
    whole = interface.separate_long(mix, chunk_seconds=0)
    chunked = interface.separate_long(mix, chunk_seconds=6.0)
    _, gain_whole = si_snr_improvement(mix, speech, whole)
    _, gain_chunked = si_snr_improvement(mix, speech, chunked)
    assert abs(float(gain_chunked - gain_whole)) < 0.5
