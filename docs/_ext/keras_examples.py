"""A griffe extension: Keras-style "Examples:" sections, read as Google style.

keras_fanin's docstrings write their examples as Keras does: the section
title, a blank line, then a doctest block at the title's indentation. Griffe's
Google-style parser wants the block indented under the title, with no blank
line, and otherwise renders the `>>>` lines as nested block quotes. This
rewrites each such block into that form before the docstring is parsed, so
the source keeps Keras's style and the site shows highlighted examples.
Loaded by mkdocs.yml (mkdocstrings' `extensions` option); not part of the
package.
"""

import re

import griffe

# "Example:" or "Examples:", a blank line, then lines up to the next blank
# line, the first of them a doctest prompt.
_SECTION = re.compile(
    r"^(?P<title>Examples?:)\n\n(?P<block>>>> .*(?:\n(?!\n).*)*)",
    re.MULTILINE,
)


def google_examples(text):
    """Returns `text` with each Keras-style example block indented under its title."""

    def indent(match):
        lines = match["block"].split("\n")
        return match["title"] + "\n" + "\n".join("    " + line for line in lines)

    return _SECTION.sub(indent, text)


class KerasExamples(griffe.Extension):
    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = google_examples(obj.docstring.value)
