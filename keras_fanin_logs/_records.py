"""TFRecord framing both ways, and the event files of a run directory.

An event file is a sequence of records: an 8-byte little-endian length, the
masked CRC-32C of those 8 bytes, the data (one serialized `Event`), and the
masked CRC-32C of the data. GradientHealth writes them here rather than with
`tf.summary` (no TensorFlow on JAX or torch), and `report` reads them here
rather than with TensorBoard's `EventFileLoader`, which imports TensorFlow
whenever it is installed: seconds of start-up and its C++ log lines.

Local paths are read with `os`; a path with a scheme (`gs://`, `s3://`, an
`fsspec` protocol) through TensorBoard's TF-free `gfile`, and where that
lacks the scheme or its package (`gcsfs`, `s3fs`) through `tf.io.gfile` if
TensorFlow is installed: only then is TensorFlow imported.
"""

import os
import struct

try:
    from google_crc32c import value as _crc32c
except ImportError:  # pragma: no cover - the pure-Python fallback
    # mypy: the fallback binds the same name; both take bytes, return an int.
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import (  # type: ignore[no-redef]
        crc32c as _crc32c,
    )

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


def masked_crc(data) -> int:
    """TFRecord's masked CRC-32C of `data`.

    With `google-crc32c` (C, a dependency) it costs microseconds; TensorBoard's
    own writer computes it in pure Python, a byte at a time, which costs
    milliseconds per event of a deep model: most of a flush.
    """
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record holding `data`."""
    header = _LENGTH.pack(len(data))
    return header + _CRC.pack(masked_crc(header)) + data + _CRC.pack(masked_crc(data))


def records(content: bytes):
    """The data of each whole, intact record in `content`, in order.

    Stops at a record cut short (a file still being written) or one whose
    CRC does not match, as TensorBoard's reader does: what follows cannot be
    trusted to be framed.
    """
    end, at = len(content), 0
    while at + 12 <= end:
        header = content[at : at + 8]
        (length,) = _LENGTH.unpack(header)
        if _CRC.unpack_from(content, at + 8)[0] != masked_crc(header):
            return
        start = at + 12
        if start + length + 4 > end:
            return
        data = content[start : start + length]
        if _CRC.unpack_from(content, start + length)[0] != masked_crc(data):
            return
        yield data
        at = start + length + 4


def _remote(path):
    return "://" in path


class RemotePathError(ValueError):
    """A remote path that no installed file system can read."""


def _gfile(path):
    """A `gfile` module that reads `path`'s scheme."""
    from tensorboard.compat.tensorflow_stub.io import gfile

    try:
        gfile.get_filesystem(path)
        return gfile
    # fsspec without gcsfs / s3fs (ImportError), or a scheme only TensorFlow
    # knows, as its in-memory `ram://` (ValueError).
    except (ImportError, ValueError) as error:
        import importlib.util

        if importlib.util.find_spec("tensorflow") is None:
            raise RemotePathError(
                f"Cannot read {path!r}: {error} (or install TensorFlow, whose "
                "tf.io.gfile reads it)."
            ) from None
    import tensorflow as tf

    return tf.io.gfile


def read_bytes(path: str) -> bytes:
    if _remote(path):
        with _gfile(path).GFile(path, "rb") as file:
            return file.read()
    with open(path, "rb") as file:
        return file.read()


def is_dir(path: str) -> bool:
    if _remote(path):
        fs = _gfile(path)
        try:
            return fs.isdir(path)
        except Exception:  # noqa: BLE001 - an unreachable remote path is "none"
            return False
    return os.path.isdir(path)


def list_dir(path: str) -> list[str]:
    try:
        return list(_gfile(path).listdir(path) if _remote(path) else os.listdir(path))
    except Exception:  # noqa: BLE001 - unreadable is "nothing to read"
        return []


def walk(path: str):
    """`os.walk` for local and remote paths, top down, sorted."""
    if not _remote(path):
        yield from os.walk(path)
        return
    fs = _gfile(path)
    try:
        yield from fs.walk(path)
    except Exception:  # noqa: BLE001
        return


def join(directory: str, name: str) -> str:
    if _remote(directory):
        return directory.rstrip("/") + "/" + name
    return os.path.join(directory, name)


def event_files(directory: str) -> list[str]:
    """The `events.out.tfevents.*` files in `directory`, in writing order.

    Names are `events.out.tfevents.<time>.<host>.<pid>.<n>.v2`: ordered by
    time, then by GradientHealth's per-process counter `n`.
    """
    if not is_dir(directory):
        return []
    files = [
        join(directory, name)
        for name in list_dir(directory)
        if "tfevents" in name and not name.endswith(".profile-empty")
    ]

    def order(path):
        parts = path.rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1].split(".")
        ends = (parts[3], parts[-2]) if len(parts) > 4 else ("0", "0")
        return [int(p) if p.isdigit() else 0 for p in ends], path

    return sorted(files, key=order)
