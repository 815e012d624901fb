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
USER_ERRORS = (FileNotFoundError, NotADirectoryError, ValueError, KeyError)

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
    "Print benchmark tables.\n\n"
    "--kernels times the selective scan of Mamba (sequential reference loop "
    "vs the chunked CPU scan, forward and forward+backward, with their "
    "speed-up and largest difference) and the S4 layer (kernel + FFT "
    "convolution) on CPU, with a fixed number of threads.",
)
def _benchmark_arguments(parser):
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="time the selective scan and the S4 layer kernels",
    )
    sizes = parser.add_argument_group("kernel sizes")
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
    parser.add_argument(
        "--threads", type=int, default=2, help="intra-op CPU threads (fixed)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repeats of fast kernels"
    )
    parser.add_argument(
        "--ref-repeats",
        type=int,
        default=1,
        help="timed repeats of the (slow) sequential reference loop",
    )

    def run(args):
        if not args.kernels:
            raise ValueError("nothing to benchmark; pass --kernels")
        # imported here so that the CLI starts without loading the models
        from speechbrain_s4.benchmark import format_kernel_table, kernel_benchmark

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

    return run


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
