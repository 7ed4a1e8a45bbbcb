"""Packaging for keras_fanin; the version lives in keras_fanin/version.py."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
version = {}
exec((HERE / "keras_fanin" / "version.py").read_text(), version)

# TensorFlow comes through an extra, as JAX ships jax[cpu] / jax[cuda12]: the
# `tensorflow` and `tensorflow-cpu` wheels install the same `tensorflow` module
# under two distribution names, and a plain requirement on one would pull the
# other in next to a user's existing install. See "Installing" in
# docs/getting-started.md.
TENSORFLOW = "2.21"
setup(
    name="keras-fanin",
    version=version["__version__"],
    description=(
        "Fan-in initializers with a tunable gain and a gradient-health "
        "TensorBoard callback for Keras 3."
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(
        include=["keras_fanin", "keras_fanin.*", "keras_fanin_logs*"]
    ),
    package_data={
        "keras_fanin": ["py.typed"],
        "keras_fanin_logs": ["py.typed", "_dashboard/static/*"],
    },
    install_requires=[
        "keras>=3.15",
        "numpy>=1.26",
        "tensorboard>=2.21",
        # GradientHealth's event files: TFRecord CRCs in C, not pure Python.
        "google-crc32c>=1.5",
    ],
    entry_points={
        "console_scripts": ["keras-fanin = keras_fanin_logs._cli:main"],
        # The GRADIENT HEALTH tab of `tensorboard --logdir`.
        "tensorboard_plugins": [
            "gradient_health = keras_fanin_logs._dashboard:GradientHealthPlugin"
        ],
    },
    extras_require={
        "cpu": [f"tensorflow-cpu>={TENSORFLOW}"],
        "gpu": [f"tensorflow[and-cuda]>={TENSORFLOW}"],
        "tensorflow": [f"tensorflow>={TENSORFLOW}"],
        "examples": ["matplotlib>=3.8", "scikit-learn>=1.4", "keras-tuner>=1.4"],
        "test": [
            "pytest>=8",
            "scipy>=1.11",
            "jax>=0.4",
            # A CPU build: a newer or unpinned torch resolves to CUDA (GBs).
            "torch==2.13.0",
            "matplotlib>=3.8",
            "scikit-learn>=1.4",
            "keras-tuner>=1.4",
            "ruff>=0.6",
            # The dashboard's browser tests drive the system's Chromium.
            "playwright>=1.40",
            # The documentation site: tests/test_docs.py builds it (--strict).
            "mkdocs>=1.6",
            "mkdocs-material>=9.5",
            "mkdocstrings[python]>=0.26",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Framework :: Keras",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
