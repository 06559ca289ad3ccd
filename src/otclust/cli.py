"""`otclust` command line: one module per subcommand in otclust.commands.

User mistakes (UserError) end with one line on stderr and exit status 2, never a traceback;
so does running out of memory in a part that does not say more precisely what to lower.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from otclust import __version__
from otclust.errors import UserError, is_out_of_memory, out_of_memory_message

COMMANDS = ["fit", "evaluate", "predict", "compare", "sweep", "report", "upgrade-checkpoint", "embed"]

# Advice when memory runs out where no finer guard caught it (e.g. while decoding the data).
GENERIC_MEMORY_ADVICE = "use a smaller data set or --image-size, a smaller --batch-size, or a machine with more memory"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otclust",
        description="Cluster unlabeled images into K groups by training a network whose pseudo-labels come from optimal transport.",
        epilog="Run 'otclust COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"otclust {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"otclust.commands.{name.replace('-', '_')}")
        except ModuleNotFoundError as error:
            if error.name == f"otclust.commands.{name.replace('-', '_')}":
                continue  # not part of this installation yet
            raise
        module.add_parser(subparsers)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    # Python's default shows the warning's file, line number and source line: noise to a user
    # of the command line, for whom a warning (a deprecated parameter) is one line like an error.
    return f"otclust: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    default_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = default_format


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except UserError as error:
        print(f"otclust: error: {error}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        print(f"otclust: error: {out_of_memory_message('running ' + args.command, GENERIC_MEMORY_ADVICE)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("otclust: interrupted; a fit keeps its latest checkpoint (30 s or one epoch old at most): use --resume to continue it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
