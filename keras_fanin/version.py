"""The version of keras_fanin, read by `setup.py` and `keras_fanin.__version__`."""

__version__ = "0.1.0"
