"""Types that are checked: mypy (configured in pyproject.toml) on the package,
strict on the modules that define the public API; the README's examples as a
user's code; and wrong calls, which it must report."""

import re
import subprocess
import sys

from tests.test_docs import PAGES, ROOT, read_blocks

# Names the README's snippets take as given (a user's model and data).
PRELUDE = """\
from typing import Any

import keras
import keras_fanin

model: Any
make_model: Any
x: Any
y: Any
x_train: Any
x_probe: Any
y_probe: Any
dataset: Any
RANK: int
"""

# Each line is a mistake the annotations exist to catch.
WRONG = """\
import keras_fanin

keras_fanin.FanScaling(mode="fan_inn")
keras_fanin.He(gain=[2.0])
keras_fanin.calculate_gain(3)
keras_fanin.fix("model.keras", force="yes")
keras_fanin.compute_fans("3x3")
runs: str = keras_fanin.report("logs").runs
"""


def _mypy(cache, *files):
    """mypy with the project's configuration, from the checkout (so that
    `import keras_fanin` is this package), on `files` or the package.

    A cache of its own: mypy reuses a cached module's errors, file path
    included, for the same module name and text at another path."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", ROOT / "pyproject.toml",
         "--cache-dir", cache, *map(str, files)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def _user_pages():
    """`{page: its Python code}`: every page's setup and run blocks in order
    (tests/test_docs.py's convention), as one module: the code a user copies
    from README.md and the docs."""
    pages = {}
    for path in PAGES:
        code = [b.code for b in read_blocks(path) if b.kind in ("setup", "run")]
        if code:
            pages[path.relative_to(ROOT).as_posix()] = "\n\n".join(code)
    return pages


def test_the_package_type_checks(tmp_path):
    code, out = _mypy(tmp_path / "cache")
    assert code == 0, out


def test_the_docs_examples_type_check_as_user_code(tmp_path):
    pages = _user_pages()
    assert {"README.md", "docs/initializers.md", "docs/gradient-health.md"} <= set(
        pages
    )
    files = []
    for i, code in enumerate(pages.values()):
        path = tmp_path / f"page_{i}.py"
        path.write_text(PRELUDE + "\n" + code)
        files.append(path)
    # A page's blocks run in one namespace and may give a name a new value
    # of another type, as a user's notebook does.
    code, out = _mypy(tmp_path / "cache", "--allow-redefinition", *files)
    assert code == 0, out


def test_wrong_calls_are_reported(tmp_path):
    path = tmp_path / "wrong.py"
    path.write_text(WRONG)
    code, out = _mypy(tmp_path / "cache", path)
    assert code == 1
    reported = {
        int(line)
        for line in re.findall(rf"^{re.escape(str(path))}:(\d+): error", out, re.M)
    }
    wrong = {
        number
        for number, line in enumerate(WRONG.splitlines(), 1)
        if line.startswith(("keras_fanin.", "runs:"))
    }
    assert reported == wrong, out
