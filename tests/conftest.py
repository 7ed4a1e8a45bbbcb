import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """`tf_only` tests need TensorFlow itself, not only the TF backend's Keras."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    skip = pytest.mark.skip(
        reason=f"tf_only: needs the TensorFlow backend, not {backend}"
    )
    for item in items:
        if item.get_closest_marker("tf_only"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts from the same global seed and an empty Keras session."""
    keras.utils.set_random_seed(1234)
    yield
    # free_memory=False skips a full gc.collect(), which cost 0.2 s per test
    # (two minutes of the suite); the models here are tiny and the regular
    # collector frees them.
    keras.backend.clear_session(free_memory=False)
