"""`keras-fanin check`: the command line."""

import argparse
import json
import sys

from keras_fanin._check._check import check


def cli_main(argv: list[str]) -> int:
    """`keras-fanin check MODEL.keras [--json]`: 0 if no problem, 1 if any, 2 on
    a usage error (one line on stderr, never a traceback)."""
    parser = argparse.ArgumentParser(
        prog="keras-fanin check",
        description="Check a saved Keras model's initialisation before training: "
        "one forward and backward pass on standard-normal inputs.",
    )
    parser.add_argument("model", help="path of a .keras file")
    parser.add_argument("--json", action="store_true", help="print JSON")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse has printed the usage and the error
        return int(exit_.code or 0)
    try:
        report = check(args.model)
    except (OSError, TypeError, ValueError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"keras-fanin check: error: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
    return 0 if report.ok else 1
