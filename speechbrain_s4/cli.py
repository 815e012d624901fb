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
