#!/usr/bin/env python3
"""Benchmark: long-audio separation on CPU, memory and time vs length.

Separates mixtures of several lengths (default 1, 3 and 10 minutes at
8 kHz) with a full-size S4M-tiny (1.83 M parameters; random weights: the
computation is that of a trained model) through
``S4Separation.separate_long`` with the model's default chunking, each
length in a fresh subprocess so that its peak memory is its own. Prints
one row per length: chunks, wall and process CPU time, CPU seconds per
minute of audio (constant when time is linear in length), and peak
resident memory (``ru_maxrss``) of the whole process.

    python benchmarks/long_audio.py                  # 1, 3, 10 minutes
    python benchmarks/long_audio.py --minutes 0.5 2 --threads 1
    python benchmarks/long_audio.py --whole-minutes 0.5 1  # no chunking

The mixtures are real speech from the Debian voices when installed (two
voices' prompts, looped to the length), white noise otherwise. The goal of
issue 6: 10 minutes at 8 kHz under 2 GB peak memory, time linear in length.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mixture(seconds, rate, seed=0):
    """[1, T] real-speech (or noise) mixture of ``seconds``."""
    import numpy as np
    import torch

    from speechbrain_s4.voices import find_voices, load_clip

    length = int(seconds * rate)
    voices = find_voices(rate)
    names = [v for v in ("en_US_f_Allison", "it_IT_m_Carlo") if v in voices]
    if len(names) < 2:
        generator = torch.Generator().manual_seed(seed)
        return 0.1 * torch.randn(1, length, generator=generator), "noise"
    sources = []
    for name in names:
        clips = [load_clip(path, rate) for path in voices[name][:40]]
        speech = np.concatenate(clips)
        speech = np.tile(speech, length // len(speech) + 1)[:length]
        sources.append(speech / (speech.std() + 1e-8))
    mix = 0.05 * torch.from_numpy(sources[0] + sources[1]).float()
    return mix[None], "speech"


def worker(minutes, threads, whole):
    """Separate one mixture; print a JSON line with the measurements."""
    import torch

    from speechbrain_s4.chunking import chunk_bounds
    from speechbrain_s4.inference import S4Separation
    from speechbrain_s4.models import build

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rate = 8000
    separator = build("s4m-tiny", sample_rate=rate).eval()
    model = S4Separation(
        modules={"separator": separator},
        hparams={"sample_rate": rate, "num_spks": 2},
        run_opts={"device": "cpu"},
    )
    mix, kind = mixture(minutes * 60, rate)
    chunk_seconds, overlap_seconds = model.chunking(0 if whole else None)
    chunks = (
        1
        if whole
        else len(
            chunk_bounds(
                mix.shape[1],
                round(chunk_seconds * rate),
                round(overlap_seconds * rate),
            )
        )
    )
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu = time.perf_counter(), time.process_time()
    estimates = model.separate_long(
        mix, chunk_seconds=0 if whole else None, progress=False
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    assert estimates.shape == (1, mix.shape[1], 2)
    assert bool(torch.isfinite(estimates).all())
    print(
        json.dumps(
            {
                "minutes": minutes,
                "mode": "whole" if whole else "chunked",
                "signal": kind,
                "chunk_s": chunk_seconds,
                "overlap_s": overlap_seconds,
                "chunks": chunks,
                "wall_s": wall,
                "cpu_s": cpu,
                "peak_gb": peak / 2**20,
                "before_gb": baseline / 2**20,
            }
        )
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="*", default=[1, 3, 10])
    parser.add_argument(
        "--whole-minutes",
        type=float,
        nargs="*",
        default=[],
        help="also separate these lengths in one pass (no chunking)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.threads, args.whole)
        return 0
    env = dict(os.environ, PYTHONPATH=ROOT)
    rows = []
    runs = [(m, False) for m in args.minutes]
    runs += [(m, True) for m in args.whole_minutes]
    for minutes, whole in runs:
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            str(minutes),
            "--threads",
            str(args.threads),
        ] + (["--whole"] if whole else [])
        result = subprocess.run(
            command, capture_output=True, text=True, env=env
        )
        if result.returncode != 0:
            rows.append({"minutes": minutes, "error": result.stderr[-500:]})
            print(f"{minutes} min: failed\n{result.stderr[-2000:]}")
            continue
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print()
    print(
        f"S4M-tiny (1.83 M), 8 kHz, CPU, {args.threads} thread(s); "
        "peak = max RSS of the whole process"
    )
    header = (
        f"{'minutes':>7}  {'mode':>7}  {'signal':>6}  {'chunks':>6}  "
        f"{'wall s':>8}  {'CPU s':>8}  {'CPU s/min':>9}  {'peak GB':>7}"
    )
    print(header)
    for row in rows:
        if "error" in row:
            print(f"{row['minutes']:>7g}  failed")
            continue
        print(
            f"{row['minutes']:>7g}  {row['mode']:>7}  {row['signal']:>6}  "
            f"{row['chunks']:>6}  {row['wall_s']:>8.1f}  {row['cpu_s']:>8.1f}  "
            f"{row['cpu_s'] / row['minutes']:>9.1f}  {row['peak_gb']:>7.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
