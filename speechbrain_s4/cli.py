"""Command-line front door: ``speechbrain-s4 <command> ...``.

The CLI holds no logic of its own: each subcommand parses its arguments and
calls one function of the package. User errors (missing files, bad audio,
unknown model names) end with a one-line message and exit code 2, never a
traceback; bugs still raise.
"""

import argparse
import sys

from speechbrain_s4 import __version__

#: Exceptions that signal a problem with the user's input, not a bug.
USER_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    ValueError,
    KeyError,
)

#: name -> (help text, function adding the arguments, function running it)
COMMANDS = {}


def command(name, help_text):
    """Register a subcommand.

    The decorated function receives the ``argparse`` subparser and returns
    the callable that runs the command on the parsed namespace.

    Arguments
    ---------
    name : str
        The subcommand name as typed on the command line.
    help_text : str
        One paragraph shown by ``speechbrain-s4 --help`` and ``<name> --help``.

    Returns
    -------
    decorator
    """

    def register(add_arguments):
        COMMANDS[name] = (help_text, add_arguments)
        return add_arguments

    return register


@command(
    "benchmark",
    "Measure the separation models side by side (or the kernels).\n\n"
    "Without a flag: S4M-tiny, S4M, SPMamba and SpeechBrain's stock\n"
    "Sepformer and Conv-TasNet, measured in one run on this machine:\n"
    "parameters, MACs per second of audio at 8 kHz, CPU forward time of 1 s\n"
    "at 8 and 16 kHz (and its ratio to Sepformer's), peak memory of a\n"
    "forward (a fresh process per model), one training step, SI-SNRi from\n"
    "results CSVs (--results), and the time over each model's MAC floor at\n"
    "the machine's measured matmul speed. Prints the table with the speed\n"
    "goals reached or not and writes models.csv, models.md and models.png\n"
    "to --out. Takes a few minutes on 2 cores.\n\n"
    "--kernels times the selective scan of Mamba (sequential reference loop\n"
    "vs the chunked and fused C++ CPU scans, forward and forward+backward,\n"
    "with their speed-ups and largest difference) and the S4 layer.\n"
    "--streaming prints the causal S4M-tiny's real-time factor per chunk.\n\n"
    "examples:\n"
    "  speechbrain-s4 benchmark --threads 1 --out benchmark_out\n"
    "  speechbrain-s4 benchmark --models s4m-tiny sepformer \\\n"
    "      --results s4m-tiny=results/s4m-tiny/test_results.csv\n"
    "  speechbrain-s4 benchmark --kernels",
)
def _benchmark_arguments(parser):
    table = parser.add_mutually_exclusive_group()
    table.add_argument(
        "--kernels",
        action="store_true",
        help="time the selective scan and the S4 layer kernels instead",
    )
    table.add_argument(
        "--streaming",
        action="store_true",
        help="print the causal S4M-tiny's streaming real-time factors instead",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op CPU threads, fixed for the whole run (default 1: "
        "reproducible on a shared machine)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="most timed repeats per measurement (default 5)",
    )
    models = parser.add_argument_group("model table")
    models.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        default=None,
        help="registry names of the rows (default: s4m-tiny s4m spmamba "
        "sepformer convtasnet; sepformer is always measured)",
    )
    models.add_argument(
        "--results",
        nargs="+",
        default=[],
        metavar="NAME=CSV",
        help="a results CSV per model (its avg row's si-snr_i is shown)",
    )
    models.add_argument(
        "--train-seconds",
        type=float,
        default=4.0,
        metavar="S",
        help="crop of the training step at 8 kHz (default 4; 0 skips it)",
    )
    models.add_argument(
        "--budget-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="CPU seconds per measurement after which no further repeat "
        "starts (default 10)",
    )
    models.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the peak-memory subprocesses",
    )
    models.add_argument(
        "--out",
        default="benchmark_out",
        metavar="DIR",
        help="where to write models.csv, models.md, models.png "
        "(default: benchmark_out)",
    )
    sizes = parser.add_argument_group("kernel sizes (--kernels)")
    sizes.add_argument("--batch", type=int, default=4, help="batch size B")
    sizes.add_argument(
        "--d-inner", type=int, default=512, help="scan channels D (d_inner)"
    )
    sizes.add_argument("--d-state", type=int, default=16, help="state size N")
    sizes.add_argument("--length", type=int, default=4000, help="sequence length L")
    sizes.add_argument(
        "--s4-channels", type=int, default=512, help="S4 layer channels H"
    )
    sizes.add_argument("--s4-state", type=int, default=16, help="S4 state size N")
    sizes.add_argument(
        "--ref-repeats",
        type=int,
        default=1,
        help="timed repeats of the (slow) sequential reference loop",
    )
    streaming = parser.add_argument_group("streaming (--streaming)")
    streaming.add_argument(
        "--chunk-ms",
        type=float,
        nargs="+",
        default=[10.0, 16.0, 32.0],
        metavar="MS",
        help="chunk durations (default 10 16 32)",
    )
    streaming.add_argument(
        "--stream-seconds",
        type=float,
        default=4.0,
        metavar="S",
        help="audio streamed per chunk size (default 4)",
    )

    def run(args):
        if args.threads < 1 or args.repeats < 1:
            raise ValueError("--threads and --repeats must be at least 1")
        # imported here so that the CLI starts without loading the models
        if args.kernels:
            from speechbrain_s4.benchmark import (
                format_kernel_table,
                kernel_benchmark,
            )

            rows = kernel_benchmark(
                batch=args.batch,
                d_inner=args.d_inner,
                d_state=args.d_state,
                length=args.length,
                s4_channels=args.s4_channels,
                s4_state=args.s4_state,
                threads=args.threads,
                repeats=args.repeats,
                ref_repeats=args.ref_repeats,
            )
            print(format_kernel_table(rows, threads=args.threads))
            return
        if args.streaming:
            from speechbrain_s4.benchmark import (
                format_rtf_table,
                rtf_benchmark,
            )

            rows = rtf_benchmark(
                chunk_ms=args.chunk_ms,
                seconds=args.stream_seconds,
                threads=args.threads,
            )
            print(format_rtf_table(rows))
            return
        from speechbrain_s4.benchmark import (
            DEFAULT_MODELS,
            format_model_table,
            model_benchmark,
            write_model_report,
        )

        results = {}
        for pair in args.results:
            name, sep, path = pair.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--results expects NAME=CSV, got {pair!r}")
            results[name] = path
        report = model_benchmark(
            models=args.models or DEFAULT_MODELS,
            threads=args.threads,
            repeats=args.repeats,
            budget_s=args.budget_seconds,
            train_seconds=args.train_seconds,
            results=results,
            memory=not args.no_memory,
        )
        print(format_model_table(report))
        for path in write_model_report(report, args.out).values():
            print(f"wrote {path}")

    return run


@command(
    "separate",
    "Separate the speakers of audio files.\n\n"
    "Each input (any format soundfile reads; multi-channel files are\n"
    "averaged to mono; any sample rate, resampled to the model's and back)\n"
    "gives <name>_s1.wav, <name>_s2.wav, ... in the output folder, at the\n"
    "input's sample rate, as 32-bit float WAV without normalisation. Long\n"
    "files are separated in overlapping chunks with the speakers realigned\n"
    "between chunks (--chunk-seconds; the model chooses by default).\n\n"
    "examples:\n"
    "  speechbrain-s4 separate meeting.flac -o separated/\n"
    "  speechbrain-s4 separate a.wav b.wav --model exported/s4m-tiny",
)
def _separate_arguments(parser):
    parser.add_argument("inputs", nargs="+", metavar="IN", help="audio files")
    parser.add_argument(
        "-o",
        "--output-dir",
        default=".",
        metavar="DIR",
        help="where to write the estimates (default: the current folder)",
    )
    _model_arguments(parser)
    _chunk_arguments(parser)

    def run(args):
        from pathlib import Path

        inputs = [Path(path) for path in args.inputs]
        for path in inputs:
            if not path.is_file():
                raise FileNotFoundError(f"no audio file at {path}")
        stems = [path.stem for path in inputs]
        clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
        if clashes:
            raise ValueError(
                f"several inputs are named {', '.join(clashes)}; their "
                "estimates would overwrite each other: separate them into "
                "different output folders"
            )
        # imported once the arguments are known to be sane (it takes seconds)
        from speechbrain_s4.audio import write_estimates
        from speechbrain_s4.inference import S4Separation

        model = _load_model(S4Separation, args)
        for path in inputs:
            estimates = model.separate_file(
                path,
                chunk_seconds=args.chunk_seconds,
                overlap_seconds=args.overlap_seconds,
                progress=False if args.no_progress else None,
            )  # [1, T, S] at the input's rate
            rate = _file_rate(path)
            for written in write_estimates(
                estimates[0], rate, args.output_dir, path.stem
            ):
                print(written)

    return run


@command(
    "export",
    "Turn a training run into an inference folder.\n\n"
    "RUN_DIR is a train.py output folder (results/<model>_<dataset>/<seed>)\n"
    "holding the hyperparams.yaml train.py saved and save/CKPT+* checkpoints.\n"
    "The checkpoint with the best validation SI-SNR is exported (or the one\n"
    "given with --checkpoint) to OUT_DIR as hyperparams.yaml (the\n"
    "separator's definition, copied from the run) + separator.ckpt, checked\n"
    "by rebuilding the model and loading the weights strictly. Works for\n"
    "every model of the package. Load the result with\n"
    "S4Separation.from_hparams(OUT_DIR) or `separate --model OUT_DIR`.",
)
def _export_arguments(parser):
    parser.add_argument("run_dir", metavar="RUN_DIR", help="train.py output folder")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="inference folder")
    parser.add_argument(
        "--checkpoint",
        metavar="CKPT_DIR",
        help="export this CKPT+... folder instead of the best one",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an existing inference folder",
    )

    def run(args):
        from speechbrain_s4.inference import export_recipe

        info = export_recipe(
            args.run_dir, args.out_dir, args.checkpoint, args.overwrite
        )
        score = info["valid_si_snr"]
        print(
            f"exported {info['model']} from {info['checkpoint']}"
            + (f" (validation SI-SNR {score:.2f} dB)" if score is not None else "")
            + f" to {info['folder']}"
        )

    return run


@command(
    "milestone",
    "Copy a training checkpoint into a compact, resumable milestone.\n\n"
    "CKPT_DIR is one save/CKPT+... folder of a train.py run. Every file is\n"
    "copied as is except the optimiser's state, stored in bfloat16 (half\n"
    "its size; restored to float32 on load), so the milestone can be\n"
    "committed. To continue training from it, copy the folder into the\n"
    "run's save/ folder and start the same train.py command again.",
)
def _milestone_arguments(parser):
    parser.add_argument("checkpoint", metavar="CKPT_DIR", help="a CKPT+... folder")
    parser.add_argument(
        "out_dir",
        metavar="OUT_DIR",
        help="milestone folder, or an existing folder to write it into "
        "under the checkpoint's name",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing milestone"
    )

    def run(args):
        from speechbrain_s4.milestones import save_milestone

        info = save_milestone(args.checkpoint, args.out_dir, args.overwrite)
        print(
            f"wrote {info['folder']}: {info['bytes_after'] / 1e6:.1f} MB "
            f"(checkpoint {info['bytes_before'] / 1e6:.1f} MB; optimizer "
            "state in bfloat16)"
        )

    return run


@command(
    "convert",
    "Convert an original S4M or SPMamba checkpoint to an inference folder.\n\n"
    "ARCH is s4m (JusperLee/S4M) or spmamba (JusperLee/SPMamba). Keys are\n"
    "mapped and checked strictly (S4M's stored C~ is turned back into C).\n"
    "Give the original constructor's keyword arguments when the checkpoint\n"
    "was not trained with the defaults, e.g.\n"
    "  speechbrain-s4 convert s4m best_model.pth s4m-8k \\\n"
    "      --kwargs sample_rate=8000 num_blocks=16\n"
    "The written folder is verified: rebuilt from its YAML, loaded strictly,\n"
    "and equal in output to the converted model.",
)
def _convert_arguments(parser):
    parser.add_argument("arch", metavar="ARCH", help="s4m or spmamba")
    parser.add_argument("checkpoint", metavar="CKPT", help="original checkpoint")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="inference folder")
    parser.add_argument(
        "--kwargs",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="original constructor arguments (numbers, true/false, text)",
    )
    parser.add_argument(
        "--reference-cpu-kernel",
        action="store_true",
        help="S4M only: reproduce the reference's CPU-fallback S4 kernel "
        "(conj_symmetric=False) instead of the exact kernel",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an existing inference folder",
    )

    def run(args):
        from speechbrain_s4.inference import convert_checkpoint

        info = convert_checkpoint(
            args.arch,
            args.checkpoint,
            args.out_dir,
            overwrite=args.overwrite,
            conj_symmetric=not args.reference_cpu_kernel,
            **_parse_kwargs(args.kwargs),
        )
        print(f"converted {args.checkpoint} ({info['model']}) to {info['folder']}")

    return run


@command(
    "evaluate",
    "Score separation against reference sources (SI-SNRi, SDRi).\n\n"
    "Every audio file MIX_DIR/<name> is a mixture whose speaker k reference\n"
    "is REF_DIR_k/<name> (the WSJ0-2mix layout: mix/ s1/ s2/). The model\n"
    "(--model) separates each mixture, or --estimates DIR reads the files\n"
    "<stem>_s1.wav, ... that `separate` wrote. Prints per-file and average\n"
    "SI-SNR, SI-SNRi (SpeechBrain's, best permutation) and BSS Eval SDR,\n"
    "SDRi (fast_bss_eval, 512 taps); --csv also writes SpeechBrain's\n"
    "test_results.csv layout.\n\n"
    "example:\n"
    "  speechbrain-s4 evaluate test/mix test/s1 test/s2 --model exported/",
)
def _evaluate_arguments(parser):
    parser.add_argument("mix_dir", metavar="MIX_DIR", help="mixtures")
    parser.add_argument(
        "ref_dirs", nargs="+", metavar="REF_DIR", help="one folder per speaker"
    )
    parser.add_argument(
        "--estimates",
        metavar="DIR",
        help="score these already separated files instead of running a model",
    )
    parser.add_argument("--csv", metavar="FILE", help="also write a results CSV")
    _model_arguments(parser)
    _chunk_arguments(parser)

    def run(args):
        from speechbrain_s4.inference import (
            evaluate_folders,
            format_results_table,
        )
        from speechbrain_s4.metrics import write_results_csv

        rows = evaluate_folders(
            args.mix_dir,
            args.ref_dirs,
            separation=args.model,
            estimates_folder=args.estimates,
            chunk_seconds=args.chunk_seconds,
            run_opts=_run_opts(args),
            progress=False if args.no_progress else None,
        )
        print(format_results_table(rows))
        if args.csv:
            write_results_csv(rows, args.csv)
            print(f"wrote {args.csv}")

    return run


@command(
    "minimix",
    "Build the minimix real-speech 2-speaker set from Debian voices.\n\n"
    "Writes OUT_DIR/wav8k (and/or wav16k) with train/valid/test mixtures\n"
    "(mix_clean, mix_both), sources s1, s2, noise and metadata.json, from\n"
    "the installed Debian voice packages; nothing is downloaded. The same\n"
    "as python -m speechbrain_s4.minimix.",
)
def _minimix_arguments(parser):
    # minimix's own options (speechbrain_s4.minimix.add_arguments), added
    # only when this subcommand is parsed: importing minimix (scipy,
    # SpeechBrain) takes seconds that every other command should not pay
    parse_known_args = parser.parse_known_args

    def parse_with_minimix_options(args=None, namespace=None):
        from speechbrain_s4.minimix import add_arguments

        add_arguments(parser)
        parser.parse_known_args = parse_known_args
        return parse_known_args(args, namespace)

    parser.parse_known_args = parse_with_minimix_options

    def run(args):
        from speechbrain_s4.minimix import build_from_args

        for rate, path in build_from_args(args).items():
            print(f"{rate} Hz: {path}")

    return run


@command(
    "demo",
    "Separate a real two-speaker mixture with the bundled model, offline.\n\n"
    "Mixes one utterance of each of two voices of minimix's test split\n"
    "(held out from training; Debian voice packages, see DATA_NOTE.md),\n"
    "separates it, prints SI-SNRi and SDRi against the true sources and\n"
    "writes mixture.wav, source1/2.wav, mixture_s1/2.wav (estimates) and\n"
    "spectrograms.png to the output folder.\n\n"
    "examples:\n"
    "  speechbrain-s4 demo\n"
    "  speechbrain-s4 demo -o demo_out --seed 3 --model exported/s4m-tiny",
)
def _demo_arguments(parser):
    parser.add_argument(
        "-o",
        "--output-dir",
        default="demo_out",
        metavar="DIR",
        help="where to write the wavs and the PNG (default: demo_out)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="chooses the utterances"
    )
    _model_arguments(parser)

    def run(args):
        from speechbrain_s4.demo import run_demo

        result = run_demo(
            args.output_dir,
            model=args.model,
            seed=args.seed,
            run_opts=_run_opts(args),
        )
        voices = " + ".join(result["voices"])
        print(
            f"{voices} ({result['level_db']:.1f} dB apart): "
            f"SI-SNRi {result['si-snr_i']:.2f} dB, "
            f"SDRi {result['sdr_i']:.2f} dB"
        )
        for path in result["files"]:
            print(path)

    return run


def _model_arguments(parser):
    """--model and --device, shared by separate and evaluate."""
    parser.add_argument(
        "--model",
        metavar="DIR|NAME",
        default=None,
        help="inference folder (from export/convert) or bundled model name "
        "(default: the bundled s4m-tiny-minimix)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu or cuda:0 (default: cuda if available)",
    )


def _chunk_arguments(parser):
    """Long-audio options, shared by separate and evaluate."""
    parser.add_argument(
        "--chunk-seconds",
        type=float,
        default=None,
        metavar="S",
        help="chunk length for long files (default: the model's; 0: whole "
        "file in one pass)",
    )
    parser.add_argument(
        "--overlap-seconds",
        type=float,
        default=None,
        metavar="S",
        help="overlap between chunks (default: the model's, at most a "
        "quarter of the chunk)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar"
    )


def _run_opts(args):
    """SpeechBrain run options from ``--device``."""
    return {} if args.device is None else {"device": args.device}


def _load_model(interface, args):
    """The separation interface for ``--model`` on ``--device``."""
    return interface.from_hparams(args.model, run_opts=_run_opts(args))


def _file_rate(path):
    """Sample rate of an audio file."""
    import soundfile

    return soundfile.info(str(path)).samplerate


def _parse_kwargs(pairs):
    """KEY=VALUE strings -> dict; values parsed as YAML scalars."""
    import yaml

    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--kwargs expects KEY=VALUE, got {pair!r}")
        kwargs[key] = yaml.safe_load(value)
    return kwargs


def build_parser():
    """Return the top-level parser with every registered subcommand.

    Returns
    -------
    argparse.ArgumentParser

    Example
    -------
    >>> parser = build_parser()
    >>> parser.prog
    'speechbrain-s4'
    """
    parser = argparse.ArgumentParser(
        prog="speechbrain-s4",
        description=(
            "State-space speech separation (S4M, SPMamba) for SpeechBrain."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"speechbrain-s4 {__version__}"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (help_text, add_arguments) in COMMANDS.items():
        sub = subparsers.add_parser(
            name,
            help=help_text.split(".")[0],
            description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(run=add_arguments(sub))
    return parser


def main(argv=None):
    """Run the CLI and return its exit code.

    Arguments
    ---------
    argv : list of str, optional
        Arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns
    -------
    int
        0 on success, 2 on a user error.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 0
    try:
        args.run(args)
    except USER_ERRORS as err:
        message = err.args[0] if err.args else str(err)
        print(f"speechbrain-s4 {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
