"""The documentation: the site builds with `mkdocs build --strict`, and its
code runs.

The convention for code blocks in README.md and docs/ (docs/development.md,
"About these docs"): a ```python block runs, each page's blocks in order in
one namespace; an HTML comment `<!-- setup: ...` up to a `-->` line is a
hidden block, run where it stands; a Python block right after a line
`<!-- not run: REASON -->` is not run; ```bash blocks are not run, but the
`keras-fanin` subcommands and the scripts they name must exist; a fence with
no language, or `text`, is a diagram or output; any other language fails.
The public docstrings' `>>>` examples (the API reference's) run too.

Every page runs in one subprocess (one TensorFlow import), each in a fresh
namespace, working directory and Keras session.
"""

import dataclasses
import doctest
import inspect
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN, SHELL, TEXT = {"python"}, {"bash", "sh", "console"}, {"", "text"}
# The README's first two blocks, verbatim: .ci/run and the task rules run them.
DEMO_COMMAND = (
    'python3 -m venv .venv && .venv/bin/pip install -e ".[cpu,examples]" '
    "&& .venv/bin/python examples/deep_relu_init.py"
)
TEST_COMMAND = (
    'python3 -m venv .venv && .venv/bin/pip install -e ".[cpu,test]" '
    "&& .venv/bin/python -m pytest"
)
README_MAX_LINES = 150
# Setup run before a docstring's examples, by object; the default is IMPORTS.
IMPORTS = "import keras\nimport numpy as np\nimport keras_fanin\n"
A_MODEL = IMPORTS + textwrap.dedent(
    """
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, "relu", name="dense_1"),
        keras.layers.Dense(1, "sigmoid"),
    ])
    model.compile("sgd", "binary_crossentropy")
    """
)
DOCSTRING_SETUP = {"keras_fanin.GradientHealth": A_MODEL, "keras_fanin.report": A_MODEL}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<marker>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
_NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")
_SETUP = re.compile(r"^\s*<!--\s*setup\b")


@dataclasses.dataclass
class Block:
    kind: str  # "run", "setup", "skip", "shell" or "text"
    line: int  # the 1-based line of its first line of code
    code: str
    reason: str = ""


def _closes(line, marker):
    text = line.strip()
    return len(text) >= len(marker) and set(text) == {marker[0]}


def read_blocks(path):
    """The code blocks of a Markdown file, in order, each with its kind.

    Raises:
        ValueError: on a block the convention has no kind for: a language
            other than python, bash or text, a `not run` comment without a
            reason or not right before a Python block, an unclosed block.
    """
    lines = path.read_text().split("\n")
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    found, reason, i = [], None, 0
    while i < len(lines):
        where = f"{name}:{i + 1}"
        fence = _FENCE.match(lines[i])
        if fence:
            marker, indent = fence["marker"], fence["indent"]
            language = fence["info"].lower()
            end = next(
                (j for j in range(i + 1, len(lines)) if _closes(lines[j], marker)),
                None,
            )
            if end is None:
                raise ValueError(f"{where}: a code block that is never closed")
            body = [
                line[len(indent) :] if line.startswith(indent) else line.lstrip()
                for line in lines[i + 1 : end]
            ]
            if language in RUN:
                kind = "run" if reason is None else "skip"
            elif reason is not None:
                raise ValueError(
                    f"{where}: a `not run` comment before a {language or 'plain'} "
                    "block: it is for Python blocks, which run otherwise"
                )
            elif language in SHELL:
                kind = "shell"
            elif language in TEXT:
                kind = "text"
            else:
                raise ValueError(
                    f"{where}: a {language!r} block: use python (run), bash or "
                    "text, or extend tests/test_docs.py's convention"
                )
            found.append(Block(kind, i + 2, "\n".join(body), reason or ""))
            reason, i = None, end + 1
            continue
        if reason is not None:
            raise ValueError(
                f"{where}: a `not run` comment must be the line right before a "
                "```python fence"
            )
        skip = _NOT_RUN.match(lines[i])
        if skip:
            reason = skip["reason"].strip()
            if not reason:
                raise ValueError(f"{where}: `<!-- not run: -->` needs a reason")
        elif _SETUP.match(lines[i]):
            end = next(
                (j for j in range(i + 1, len(lines)) if lines[j].strip() == "-->"),
                None,
            )
            if end is None:
                raise ValueError(f"{where}: a setup comment with no `-->` line")
            code = textwrap.dedent("\n".join(lines[i + 1 : end]))
            found.append(Block("setup", i + 2, code))
            i = end
        i += 1
    return found


def _page_id(path):
    return str(path.relative_to(ROOT))


def _runs_code(path):
    try:
        return any(b.kind in ("run", "setup") for b in read_blocks(path))
    except ValueError:
        return True  # its test then reports the error


RUNNABLE = [path for path in PAGES if _runs_code(path)]


def docstring_examples():
    """{"keras_fanin.He": (file, [(line, source), ...]), ...}: the `>>>`
    examples of every public name's docstring and its public members'."""
    import keras_fanin
    import keras_fanin_logs

    objects = {}
    for module in (keras_fanin, keras_fanin_logs):
        for name in module.__all__:
            if name.startswith("__"):
                continue
            obj = getattr(module, name)
            objects.setdefault(f"{module.__name__}.{name}", obj)
            if inspect.isclass(obj):
                for member, value in vars(obj).items():
                    routine = inspect.isfunction(value) or isinstance(
                        value, (property, classmethod, staticmethod)
                    )
                    if routine and not member.startswith("_"):
                        objects[f"{module.__name__}.{name}.{member}"] = value
    parser = doctest.DocTestParser()
    found, seen = {}, set()
    for name, obj in objects.items():
        doc = inspect.getdoc(obj)
        if not doc or ">>>" not in doc or id(obj) in seen:
            continue
        seen.add(id(obj))  # keras_fanin.report is keras_fanin_logs.report
        examples = [
            (example.lineno + 1, example.source)
            for example in parser.get_examples(doc)
            if not example.options.get(doctest.SKIP)
        ]
        found[name] = (f"<docstring of {name}>", examples)
    return found


# Runs in the subprocess: argv = root, the JSON spec, the JSON result path.
RUNNER = r"""
import json, os, sys, time, traceback
root, spec_path, out_path = sys.argv[1:4]
sys.path.insert(0, root)
import keras
results = {}
with open(spec_path) as file:
    spec = json.load(file)
for name, page in spec.items():
    os.chdir(page["workdir"])
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    namespace = {"__name__": "__main__"}
    start, error = time.perf_counter(), page.get("error")
    for line, code in page["blocks"] if error is None else []:
        try:
            # Padded so that a traceback gives the Markdown file's line.
            exec(compile("\n" * (line - 1) + code, page["file"], "exec"), namespace)
        except BaseException:
            error = traceback.format_exc()
            break
    results[name] = {"error": error, "seconds": round(time.perf_counter() - start, 2)}
    with open(out_path, "w") as file:  # after each page: a crash keeps the rest
        json.dump(results, file)
"""


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Runs every page's and docstring's code in one subprocess: {name: result}."""
    base = tmp_path_factory.mktemp("docs_code")
    spec = {}
    for path in RUNNABLE:
        page = {"file": str(path), "blocks": []}
        try:
            page["blocks"] = [
                (b.line, b.code)
                for b in read_blocks(path)
                if b.kind in ("run", "setup")
            ]
        except ValueError as error:
            page["error"] = str(error)
        spec[_page_id(path)] = page
    for name, (file, examples) in docstring_examples().items():
        setup = DOCSTRING_SETUP.get(name, IMPORTS)
        blocks = [(1, setup)] + [(line, source) for line, source in examples]
        spec[name] = {"file": file, "blocks": blocks}
    for i, page in enumerate(spec.values()):
        page["workdir"] = str(base / f"page_{i}")
        os.mkdir(page["workdir"])
    spec_path, out_path = base / "spec.json", base / "results.json"
    spec_path.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(ROOT), str(spec_path), str(out_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    for name in spec:  # pages a crash of the interpreter never reached
        results.setdefault(
            name, {"error": f"not run: the runner exited {proc.returncode}\n"
                   + proc.stderr[-3000:]}
        )  # fmt: skip
    return results


def test_every_code_block_follows_the_convention():
    errors = []
    for path in PAGES:
        try:
            read_blocks(path)
        except ValueError as error:
            errors.append(str(error))
    assert errors == []


def test_the_convention_gives_each_block_its_kind(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- setup: x\nx = 1\n-->\n\n```python\ny = x\n```\n\n"
        "<!-- not run: needs a GPU -->\n```python\nz = 1\n```\n\n"
        "- a list item:\n\n  ```bash\n  keras-fanin report logs\n  ```\n\n"
        "```\na diagram\n```\n\n````text\n```python\n````\n"
    )
    blocks = read_blocks(page)
    assert [(b.kind, b.line) for b in blocks] == [
        ("setup", 2), ("run", 6), ("skip", 11), ("shell", 17), ("text", 21),
        ("text", 25),
    ]  # fmt: skip
    assert blocks[0].code == "x = 1" and blocks[2].reason == "needs a GPU"
    assert blocks[3].code == "keras-fanin report logs"


@pytest.mark.parametrize(
    "text, message",
    [
        ("```js\nx\n```\n", "'js' block"),
        ("<!-- not run: -->\n```python\nx\n```\n", "needs a reason"),
        ("<!-- not run: slow -->\n```bash\nx\n```\n", "before a bash block"),
        ("<!-- not run: slow -->\n\n```python\nx\n```\n", "right before"),
        ("```python\nx\n", "never closed"),
        ("<!-- setup: x\nx = 1\n", "no `-->` line"),
    ],
    ids=["language", "no-reason", "not-python", "not-right-before", "unclosed",
         "unclosed-setup"],
)  # fmt: skip
def test_the_convention_refuses_a_block_it_has_no_kind_for(tmp_path, text, message):
    page = tmp_path / "page.md"
    page.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        read_blocks(page)


@pytest.mark.parametrize("page", RUNNABLE, ids=_page_id)
def test_page_code_runs(ran, page):
    result = ran[_page_id(page)]
    assert result["error"] is None, result["error"]


def test_docstring_examples_run(ran):
    names = set(docstring_examples())
    # The initializers, the gain, lsuv, GradientHealth, check, fix: at least.
    assert len(names) >= 10, sorted(names)
    errors = {name: ran[name]["error"] for name in names if ran[name]["error"]}
    assert errors == {}, "\n".join(f"{k}:\n{v}" for k, v in errors.items())


def test_shell_blocks_name_commands_and_scripts_that_exist():
    from keras_fanin_logs._cli import _parser

    help_text = _parser().format_help()
    missing = []
    for path in PAGES:
        for block in read_blocks(path):
            if block.kind != "shell":
                continue
            for line in block.code.split("\n"):
                line = re.sub(r"\s#.*$", "", line)
                try:
                    words = shlex.split(line)
                except ValueError:
                    words = line.split()
                where = f"{_page_id(path)}: {line.strip()}"
                for i, word in enumerate(words):
                    if re.fullmatch(r"(examples|benchmarks)/[\w./-]+\.py", word):
                        if not (ROOT / word).is_file():
                            missing.append(f"{where}: no file {word}")
                    if word == "keras-fanin" and i + 1 < len(words):
                        command = words[i + 1]
                        if not re.search(rf"^\s+{command}\s", help_text, re.M):
                            missing.append(f"{where}: no command {command!r}")
    assert missing == []


def test_readme_is_a_front_page_that_starts_with_the_two_commands():
    readme = ROOT / "README.md"
    lines = readme.read_text().split("\n")
    assert len(lines) <= README_MAX_LINES + 1, len(lines)
    first_two = [b.code.strip() for b in read_blocks(readme)[:2]]
    assert first_two == [DEMO_COMMAND, TEST_COMMAND]
    # MkDocs checks the site's links; the README's relative ones are checked here.
    targets = re.findall(r"\]\(((?!https?:)[^)#\s]+)", readme.read_text())
    assert targets, "the README links the documentation's pages"
    assert [t for t in targets if not (ROOT / t).exists()] == []


def test_site_builds_strict(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = tmp_path / "site"
    # The changelog is included, not copied; the API reference is generated.
    changelog = (site / "changelog" / "index.html").read_text()
    assert "Unreleased" in changelog
    api = (site / "api" / "initializers" / "index.html").read_text()
    assert "keras_fanin.He" in api and "negative_slope" in api
    assert (site / "deep_relu_init.png").is_file()
