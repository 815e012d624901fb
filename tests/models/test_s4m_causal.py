"""Causal, streaming S4M: causal primitives against loops, streaming equals
offline (random and real speech, several chunkings), latency against its
definition, training, registry and YAML."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml

from speechbrain_s4.benchmark import format_rtf_table, rtf_benchmark
from speechbrain_s4.brain import flatten_hparams
from speechbrain_s4.models import build
from speechbrain_s4.models.s4m_causal import (
    CausalDepthwiseConvNorm,
    CausalS4M,
    CausalS4MStream,
    causal_avg_pool,
    causal_upsample,
)
from speechbrain_s4.voices import (
    apt_install_command,
    find_voices,
    load_clip,
    missing_packages,
)

HPARAMS = Path(__file__).resolve().parents[2] / "hparams"
STREAM_TOL = 1e-4  # max|stream - offline| <= STREAM_TOL * max|offline|
TINY = {
    "hidden_channels": 16,
    "bottleneck_channels": 8,
    "num_blocks": 2,
    "d_state": 4,
}
DATASETS = (
    "wsj0mix",
    "librimix",
    "wham",
    "whamr",
    "lrs2mix",
    "echo2mix",
    "minimix",
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (no contention on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_causal(**kwargs) -> CausalS4M:
    return CausalS4M(**{**TINY, **kwargs})


def stream_in_chunks(model, mix, sizes):
    """Push ``mix`` [B, T] in chunks cycling through ``sizes`` (samples)."""
    stream = model.stream()
    outputs, start, index = [], 0, 0
    while start < mix.shape[-1]:
        size = sizes[index % len(sizes)]
        outputs.append(stream.push(mix[:, start : start + size]))
        start, index = start + size, index + 1
    outputs.append(stream.flush())
    return torch.cat(outputs, dim=1)  # [B, T, S]


def assert_close_to_peak(out, ref, tol=STREAM_TOL):
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item()
    peak = ref.abs().max().item()
    assert err <= tol * peak, f"max|out-ref| = {err:.3e} > {tol} x {peak:.3e}"


# ---------------------------------------------------------------------------
# Causal primitives: whole-signal result against loops, chunked = whole
# ---------------------------------------------------------------------------
def split_calls(fn, x, sizes):
    """Call ``fn(piece, state)`` on consecutive pieces of x [B, C, L]."""
    state, outputs, start, index = {}, [], 0, 0
    while start < x.shape[-1]:
        size = sizes[index % len(sizes)]
        outputs.append(fn(x[..., start : start + size], state))
        start, index = start + size, index + 1
    return torch.cat(outputs, dim=-1)


@pytest.mark.parametrize("stride", [1, 2])
def test_causal_depthwise_conv_matches_left_padded_loop(stride):
    torch.manual_seed(0)
    layer = CausalDepthwiseConvNorm(3, kernel_size=5, stride=stride).double()
    x = torch.randn(2, 3, 101, dtype=torch.float64)
    padded = F.pad(x, (4, 0))
    weight = layer.conv.weight[:, 0]  # [C, k]
    expected = torch.stack(
        [
            (padded[..., i * stride : i * stride + 5] * weight).sum(-1)
            + layer.conv.bias
            for i in range((101 + stride - 1) // stride)
        ],
        dim=-1,
    )  # output i from inputs [i stride - 4, i stride]
    expected = layer.norm(expected)
    with torch.no_grad():
        whole = layer(x)  # conv1d path (long input)
        short = layer(x[..., :40])  # explicit window sum (short input)
        chunked = split_calls(layer, x, [1, 3, 2, 7, 10])
    torch.testing.assert_close(whole, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        short, expected[..., : 40 // stride], atol=1e-12, rtol=0
    )
    torch.testing.assert_close(chunked, expected, rtol=0, atol=1e-12)


def test_causal_avg_pool_matches_loop_and_chunks():
    x = torch.randn(2, 3, 37, dtype=torch.float64)
    factor = 4
    padded = F.pad(x, (factor - 1, 0))
    expected = torch.stack(
        [
            padded[..., c * factor : c * factor + factor].mean(-1)
            for c in range(-(-37 // factor))
        ],
        dim=-1,
    )  # coarse c = mean of inputs [c r - r + 1, c r]
    torch.testing.assert_close(causal_avg_pool(x, factor), expected)
    chunked = split_calls(
        lambda piece, state: causal_avg_pool(piece, factor, state), x, [3, 1, 6]
    )
    torch.testing.assert_close(chunked, expected)


def test_causal_upsample_matches_floor_index_and_chunks():
    factor, fine_len = 4, 37
    coarse = torch.randn(2, 3, -(-fine_len // factor), dtype=torch.float64)
    expected = coarse[..., torch.arange(fine_len) // factor]
    torch.testing.assert_close(
        causal_upsample(coarse, fine_len, factor), expected
    )
    # streamed: fine frames in ragged pieces, each call given the coarse
    # frames that exist after it and did not before
    state, outputs, done = {}, [], 0
    for size in [1, 2, 5, 4, 3, 9, 13]:
        old, new = -(-done // factor), -(-(done + size) // factor)
        outputs.append(
            causal_upsample(coarse[..., old:new], size, factor, state)
        )
        done += size
    torch.testing.assert_close(torch.cat(outputs, dim=-1), expected)


# ---------------------------------------------------------------------------
# Streaming equals offline
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "chunk",
    [[80], [128], [256], [1, 7, 13, 100, 3, 257, 64]],
    ids=["10ms", "16ms", "32ms", "ragged"],
)
def test_causal_s4m_stream_equals_offline_on_noise(chunk):
    torch.manual_seed(0)
    model = tiny_causal().eval()
    mix = torch.randn(2, 4001)
    with torch.no_grad():
        offline = model(mix)
    assert_close_to_peak(stream_in_chunks(model, mix, chunk), offline)


def test_causal_s4m_with_decoder_s4_streams_at_16k():
    torch.manual_seed(1)
    model = tiny_causal(sample_rate=16000, decoder_s4=True, depth=3).eval()
    mix = torch.randn(1, 3333)
    with torch.no_grad():
        offline = model(mix)
    for sizes in ([160], [5, 300, 41]):
        assert_close_to_peak(stream_in_chunks(model, mix, sizes), offline)


@pytest.fixture(scope="module")
def speech_mix_8k():
    """Two Debian voices mixed at 0 dB, 1.5 s at 8 kHz, [1, T]."""
    if missing_packages(8000):
        pytest.skip(
            "Debian voice packages not installed: "
            + apt_install_command(missing_packages(8000))
        )
    voices = find_voices(8000)
    first, second = (voices[name] for name in sorted(voices)[:2])
    length = 12000
    sources = []
    for paths in (first, second):
        clip = torch.cat(
            [torch.from_numpy(load_clip(path, 8000)) for path in paths[:4]]
        )[:length]
        sources.append(clip / clip.abs().max())
    return (sources[0] + sources[1]).unsqueeze(0)


@pytest.mark.parametrize("chunk", [[80], [128], [256], [50, 131, 7]])
def test_causal_s4m_stream_equals_offline_on_real_speech(speech_mix_8k, chunk):
    torch.manual_seed(2)
    model = tiny_causal().eval()
    with torch.no_grad():
        offline = model(speech_mix_8k)
    assert offline.shape == (1, speech_mix_8k.shape[-1], 2)
    assert_close_to_peak(stream_in_chunks(model, speech_mix_8k, chunk), offline)


# ---------------------------------------------------------------------------
# Latency
# ---------------------------------------------------------------------------
def test_causal_s4m_reports_the_encoder_window_as_latency():
    model = build("s4m-tiny-causal", sample_rate=8000, **TINY)
    assert model.latency_samples == 31  # 4 ms = 32 samples, minus one
    assert model.latency_ms == pytest.approx(3.875)
    assert model.eval().stream().latency_ms == model.latency_ms
    wide = tiny_causal(sample_rate=16000)
    assert (wide.latency_samples, wide.latency_ms) == (63, 3.9375)


def test_causal_s4m_impulse_reaches_back_exactly_the_latency():
    # float64, so that the offline FFT convolutions' round-off (which
    # touches every sample) stays far below the threshold
    torch.manual_seed(3)
    model = tiny_causal().double().eval()
    d, hop = model.latency_samples, model.hop_samples
    mix = torch.randn(1, 600, dtype=torch.float64)
    with torch.no_grad():
        base = model(mix)
        for p in range(300, 300 + 2 * hop):
            hit = mix.clone()
            hit[0, p] += 1.0
            changed = (model(hit) - base).abs().amax(-1)[0] > 1e-9
            earliest = int(changed.nonzero()[0])
            assert earliest >= p - d, (p, earliest)
            if p % hop == hop - 1:  # the last sample of a hop: the bound
                assert earliest == p - d, (p, earliest)


def test_causal_s4m_output_ignores_future_samples():
    torch.manual_seed(4)
    model = tiny_causal(decoder_s4=True).double().eval()
    d = model.latency_samples
    mix = torch.randn(2, 900, dtype=torch.float64)
    with torch.no_grad():
        base = model(mix)
        for cut in (1, 77, 400, 899):
            future = mix.clone()
            future[:, cut:] = torch.randn(2, 900 - cut, dtype=torch.float64)
            out = model(future)
            keep = max(0, cut - d)
            torch.testing.assert_close(
                out[:, :keep], base[:, :keep], rtol=0, atol=1e-10
            )
            assert not torch.allclose(out[:, keep:], base[:, keep:])


def test_causal_s4m_stream_returns_each_sample_within_latency():
    torch.manual_seed(5)
    model = tiny_causal(num_blocks=1).eval()
    d = model.latency_samples
    stream = model.stream()
    emitted = 0
    slack = []
    for n in range(1, 301):  # one sample per push
        emitted += stream.push(torch.randn(1, 1)).shape[1]
        # every output t <= n - 1 - d is out once input n - 1 is in
        slack.append(emitted - max(0, n - d))
    assert min(slack) == 0  # never late, and exactly on time sometimes
    assert emitted + stream.flush().shape[1] == 300


# ---------------------------------------------------------------------------
# Training, shapes, padding
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("decoder_s4", [False, True])
def test_causal_s4m_every_parameter_gets_gradient(decoder_s4):
    model = tiny_causal(decoder_s4=decoder_s4)
    mix = torch.randn(2, 1203, requires_grad=True)
    model(mix).pow(2).mean().backward()
    missing = [
        name
        for name, param in model.named_parameters()
        if param.grad is None or not torch.any(param.grad != 0)
    ]
    assert missing == []
    assert torch.isfinite(mix.grad).all() and mix.grad.abs().sum() > 0


def test_causal_s4m_trains_toward_a_target():
    torch.manual_seed(6)
    model = tiny_causal(num_blocks=1)
    mix = torch.randn(2, 800)
    target = torch.stack([mix * 0.7, -mix * 0.3], dim=-1)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = (model(mix) - target).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("length", [1, 7, 8, 2001])
def test_causal_s4m_output_length_equals_input_length(length):
    model = tiny_causal().eval()
    with torch.no_grad():
        out = model(torch.randn(1, length))
        streamed = stream_in_chunks(model, torch.randn(1, length), [5])
    assert out.shape == streamed.shape == (1, length, 2)
    assert torch.isfinite(out).all()


def test_causal_s4m_padded_batch_matches_single_items():
    torch.manual_seed(7)
    model = tiny_causal().double().eval()
    lengths = [1501, 900, 333]
    items = [torch.randn(n, dtype=torch.float64) for n in lengths]
    batch = torch.zeros(len(items), max(lengths), dtype=torch.float64)
    for b, item in enumerate(items):
        batch[b, : len(item)] = item
    relative = torch.tensor(lengths, dtype=torch.float64) / max(lengths)
    with torch.no_grad():
        padded = model(batch, relative)
        for b, item in enumerate(items):
            alone = model(item[None])[0]
            torch.testing.assert_close(
                padded[b, : len(item)], alone, rtol=0, atol=1e-10
            )


# ---------------------------------------------------------------------------
# Stream errors
# ---------------------------------------------------------------------------
def test_causal_s4m_stream_rejects_misuse():
    model = tiny_causal()
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        model(torch.randn(100))
    with pytest.raises(RuntimeError, match="eval"):
        model.stream()
    model.eval()
    stream = model.stream()
    with pytest.raises(ValueError, match=r"\[B, n\]"):
        stream.push(torch.randn(100))
    first = stream.push(torch.randn(2, 100)).shape[1]
    with pytest.raises(ValueError, match="batch size 1"):
        stream.push(torch.randn(1, 100))
    assert stream.flush().shape == (2, 100 - first, 2)
    with pytest.raises(RuntimeError, match="flushed"):
        stream.push(torch.randn(2, 10))
    with pytest.raises(RuntimeError, match="already"):
        stream.flush()
    fresh = model.stream()
    assert isinstance(fresh, CausalS4MStream)
    assert fresh.flush().shape == (0, 0, 2)


def test_causal_s4m_stream_refuses_parameters_changed_after_start():
    model = tiny_causal().eval()
    stream = model.stream()
    with torch.no_grad():
        model.masknet.block.s4.layer.kernel.log_dt.add_(0.1)
    with pytest.raises(RuntimeError, match="setup_step"):
        stream.push(torch.randn(1, 200))


# ---------------------------------------------------------------------------
# Registry, sizes, YAML, benchmark
# ---------------------------------------------------------------------------
def test_causal_s4m_full_size_is_s4m_tiny_minus_one_s4_kernel():
    causal = build("s4m-tiny-causal")
    tiny = build("s4m-tiny")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # same layers; the unidirectional S4 has one C (H x N/2 complex) less
    assert count(tiny) - count(causal) == 512 * 8 * 2
    assert count(causal) == 1_820_775
    assert isinstance(causal, CausalS4M)
    assert (causal.sample_rate, causal.num_spks) == (8000, 2)


def test_causal_s4m_model_file_builds():
    overrides = {**TINY, "sample_rate": 16000, "num_spks": 3}
    with open(HPARAMS / "models" / "s4m-tiny-causal.yaml") as handle:
        separator = load_hyperpyyaml(handle, overrides)["separator"]
    assert isinstance(separator, CausalS4M)
    assert (separator.sample_rate, separator.num_spks) == (16000, 3)
    assert separator(torch.randn(2, 3203)).shape == (2, 3203, 3)


@pytest.mark.parametrize("dataset", DATASETS)
def test_causal_s4m_recipe_loads(dataset, tmp_path):
    recipe = HPARAMS / f"s4m-tiny-causal_{dataset}.yaml"
    assert f"results/s4m-tiny-causal_{dataset}/" in recipe.read_text()
    overrides = {
        "data_folder": str(tmp_path / "data"),
        "output_folder": str(tmp_path / "out"),
        "model": TINY,
        "training": {"num_workers": 0},
    }
    with open(recipe) as handle:
        hparams = load_hyperpyyaml(handle, overrides)
    separator = hparams["modules"]["separator"]
    assert isinstance(separator, CausalS4M)
    assert separator is hparams["checkpointer"].recoverables["separator"]
    flat = flatten_hparams(hparams)
    assert separator.sample_rate == flat["sample_rate"]
    assert separator.num_spks == flat["num_spks"]
    # same keys, in the same order, as the S4M-tiny recipe it mirrors
    original = HPARAMS / f"s4m-tiny_{dataset}.yaml"
    assert top_level_keys(recipe) == top_level_keys(original)


def top_level_keys(path: Path) -> list:
    return [
        line.split(":")[0]
        for line in path.read_text().splitlines()
        if line[:1].isalpha()
    ]


def test_rtf_benchmark_reports_every_chunk_size():
    rows = rtf_benchmark(
        chunk_ms=[10, 32], seconds=0.2, threads=1, warmup_chunks=1, **TINY
    )
    assert [row["chunk_samples"] for row in rows] == [80, 256, 1600]
    assert [row["chunk_ms"] for row in rows] == [10.0, 32.0, None]
    for row in rows:
        assert row["chunks"] >= 1 and row["rtf_p95"] >= 0
        assert row["cpu_rtf"] >= 0 and row["threads"] == 1
        duration_ms = 1000 * row["chunk_samples"] / 8000
        assert row["rtf_mean"] == pytest.approx(row["ms_mean"] / duration_ms)
    table = format_rtf_table(rows).splitlines()
    assert len(table) == 5 and "RTF p95" in table[1]
    assert table[-1].split()[0] == "offline"
