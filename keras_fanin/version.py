"""The version of keras_fanin: `keras_fanin.__version__`, and the wheel's
(pyproject.toml reads it from this file's text). It is CHANGELOG.md's newest
version heading."""

__version__ = "0.1.0"
