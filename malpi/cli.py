"""The ``malpi`` command. Each area registers its own sub-commands; imports stay lazy."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from malpi import quiet

DESCRIPTION = (
    "MaLPi: drive, record, train and evaluate a small robot car, on the car or in its simulator."
)

# Each module defines register(commands, bench): ``commands`` is the top-level
# sub-parser set, ``bench`` the one under ``malpi bench``. Registration must not
# import heavy libraries (TensorFlow, OpenCV): handlers import what they need.
AREAS = [
    "malpi.policy.cli",
    "malpi.recorder.cli",
    "malpi.sim.cli",
    "malpi.daemon.cli",
    "malpi.setup.cli",
    "malpi.rl.cli",
    "malpi.operator.cli",
    "malpi.operator.keys_cli",
    "malpi.web.cli",
    "malpi.bench.cli",
    "malpi.train.cli",
]


class HelpFormatter(argparse.HelpFormatter):
    """Says each option's default after its help, unless the help says it or it has none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or not action.option_strings
            or default is None
            or default is False
            or default == ""
            or default == []
            or default is argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """This parser and every sub-command's, depth first."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                found += _parsers(sub)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="malpi",
        description=DESCRIPTION,
        epilog="malpi COMMAND --help describes each command.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging, everything TensorFlow and LiteRT print, and a traceback on error",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench_parser = commands.add_parser(
        "bench", help="measure performance (prints a table; --json FILE)"
    )
    bench = bench_parser.add_subparsers(dest="bench", required=True, metavar="WHAT")
    for name in AREAS:
        importlib.import_module(name).register(commands, bench)
    for each in _parsers(parser):  # sub-parsers do not inherit the formatter
        each.formatter_class = HelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # TensorFlow's C++ start-up chatter: the level is read when TensorFlow is imported (by a
    # handler, never while the parser is built); what ignores it, malpi.quiet filters.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet.set_enabled(not args.verbose)
    quiet.quiet_tensorflow_import()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `malpi ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 141
    except Exception as exc:  # a clear one-line error for the user, the trace with -v
        if args.verbose:
            raise
        print(f"malpi: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
