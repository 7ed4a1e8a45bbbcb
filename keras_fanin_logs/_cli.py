"""The `keras-fanin` command: `report LOGDIR`, `check MODEL` and `fix IN OUT`.

    keras-fanin report logs                # per-layer table of GradientHealth's logs
    keras-fanin report logs --json         # the same as JSON
    keras-fanin report logs --png flow.png # and the gradient-flow picture
    keras-fanin check model.keras          # the initialisation check
    keras-fanin fix in.keras out.keras     # re-draw what check flags, save

Also `python -m keras_fanin ...`. Exit codes: 0 done, 2 a usage error or
nothing to read (one line on stderr, no traceback); `check` and `fix` return
their own.
"""

import argparse
import sys
import textwrap


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-fanin",
        description="Gradient-flow reports and initialisation checks for Keras.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    report = commands.add_parser(
        "report",
        help="per-layer table of what GradientHealth logged under LOGDIR",
        description="Per-layer table of what keras_fanin.GradientHealth logged: "
        "latest grad norm, update ratio, dead/saturated fraction, the first step "
        "each crossed its threshold, and the warnings raised.",
    )
    report.add_argument("log_dir", metavar="LOGDIR", help="GradientHealth's log_dir")
    report.add_argument("--json", action="store_true", help="print JSON instead")
    report.add_argument(
        "--png", metavar="FILE", help="write the gradient-flow picture to FILE"
    )
    commands.add_parser(
        "check",
        help="check a model's initialisation before training (see check --help)",
        add_help=False,
    )
    commands.add_parser(
        "fix",
        help="re-draw the kernels check flags and save the model (see fix --help)",
        add_help=False,
    )
    return parser


def _progress(line):
    # A counter rewritten in place; cleared when reading ends (empty line).
    sys.stderr.write("\r" + line.ljust(79)[:79] + ("\r" if not line else ""))
    sys.stderr.flush()


def _report(args):
    from keras_fanin_logs._report import report

    try:
        result = report(args.log_dir, _progress if sys.stderr.isatty() else None)
    except ValueError as error:
        print(f"keras-fanin report: error: {error}", file=sys.stderr)
        return 2
    print(result.to_json() if args.json else result)
    if args.png:
        picture = result.picture()
        if picture is None:
            print(
                f"keras-fanin report: error: no per-layer signals to draw in "
                f"{args.log_dir!r}",
                file=sys.stderr,
            )
            return 2
        try:
            with open(args.png, "wb") as file:
                file.write(picture.png())
        except OSError as error:
            print(f"keras-fanin report: error: {error}", file=sys.stderr)
            return 2
        print(
            textwrap.fill(
                f"wrote {args.png} ({picture.width}x{picture.height}): "
                f"{picture.legend()}",
                100,
                subsequent_indent="  ",
            ),
            file=sys.stderr,
        )
    return 0


def _check(command, argv):
    try:
        from keras_fanin._check import cli_main, fix_main
    except ImportError:
        print(f"keras-fanin {command}: not available in this version", file=sys.stderr)
        return 2
    return (cli_main if command == "check" else fix_main)(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs `keras-fanin` with `argv` (default: the command line's); the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["check"], ["fix"]):
        return _check(argv[0], argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "report":
        return _report(args)
    parser.print_help(sys.stderr)
    return 2
