"""The data every example trains on: scikit-learn's bundled 8x8 digits.

1797 images of the digits 0-9 as 64 features, shipped inside scikit-learn, so
nothing is downloaded. Standardised per feature (zero mean, unit variance: the
inputs the fan-in rule assumes) and split 75/25 with every class in both parts.
"""

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

CHANCE = 0.1  # ten balanced classes


def load_data(seed=0):
    """Returns `x_train, x_val, y_train, y_val` (float32 features, int labels)."""
    digits = load_digits()
    x = digits.data.astype("float32")
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    return train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
