"""`keras-fanin check` and `keras-fanin fix`: the command line."""

import argparse
import json
import sys

from keras_fanin._check._check import check
from keras_fanin._check._fix import fix


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
    return _run("check", lambda: check(args.model), args.json)


def fix_main(argv: list[str]) -> int:
    """`keras-fanin fix IN.keras OUT.keras [--force] [--json]`: 0 if the fixed
    model passes `check`, 1 if problems remain (it is saved either way), 2 on
    a usage error (one line on stderr, never a traceback)."""
    parser = argparse.ArgumentParser(
        prog="keras-fanin fix",
        description="Re-draw the kernels `keras-fanin check` flags with the "
        "initializer it advises, write that initializer into each layer's "
        "config, save the model to OUT and check it again.",
    )
    parser.add_argument("model", help="path of the .keras file to fix")
    parser.add_argument("out", help="path of the .keras file to write")
    parser.add_argument(
        "--force", action="store_true", help="fix a model that has trained"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if not args.out.endswith(".keras"):
        print(
            f"keras-fanin fix: error: OUT must be a .keras path. Received: "
            f"{args.out!r}",
            file=sys.stderr,
        )
        return 2

    def fix_and_save():
        report = fix(args.model, force=args.force)
        report.model.save(args.out)
        return report

    return _run("fix", fix_and_save, args.json)


def _run(command, work, as_json):
    """Prints `work()`'s report (or one error line, exit 2); 0 if it is ok."""
    try:
        report = work()
    except (OSError, TypeError, ValueError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"keras-fanin {command}: error: {message}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if as_json else report)
    return 0 if report.ok else 1
