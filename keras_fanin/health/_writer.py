"""Event files from host-side numbers, in TensorBoard's own format.

Statistics reach the host in batches (one read per flush), so they are written
here from NumPy, one event per step holding every tag of that step: TFRecord
framing as `tensorboard.summary.writer` frames it (the writer TensorBoard
ships for use without TensorFlow; the CRC here comes from `google-crc32c`, in
C), and the events `tf.summary.scalar` writes (a float32 scalar tensor with
the scalars plugin's metadata), read back by TensorBoard's reader as scalars.
The framing (`keras_fanin_logs._records`) is shared with `report`'s reader.
Files are opened with `tf.io.gfile` on the TensorFlow backend (so `gs://` and
other remote paths work) and with TensorBoard's TF-free `gfile` elsewhere
(local paths, `s3://`, any `fsspec` scheme): JAX and torch need no TensorFlow.
"""

import os
import socket
import struct
import time

import keras
import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as cs_metadata
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata

from keras_fanin_logs._records import frame
from keras_fanin_logs._signals import LAYERS_TAG, PLUGIN_NAME, encode_layers

_files_opened = 0


class _RecordFile:
    """TFRecord framing, as `tensorboard.summary.writer.record_writer` does."""

    def __init__(self, file):
        self._file = file

    def write(self, data):
        self._file.write(frame(data))

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


def gfile():
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.io.gfile
    from tensorboard.compat.tensorflow_stub.io import gfile

    return gfile


_SCALAR_METADATA = scalar_metadata.create_summary_metadata(
    display_name="", description=""
)
_SCALAR_METADATA.data_class = summary_pb2.DataClass.DATA_CLASS_SCALAR


_HISTOGRAM_METADATA = histogram_metadata.create_summary_metadata(
    display_name="", description=""
)
_HISTOGRAM_METADATA.data_class = summary_pb2.DataClass.DATA_CLASS_TENSOR


def _scalar_tensor(value):
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[value])


def _varint(n):
    out = bytearray()
    while True:
        bits, n = n & 0x7F, n >> 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _value_prefix(tag):
    """`Summary.value` entry of a float32 scalar tensor, all but its 4 bytes."""
    name = tag.encode()
    # TensorProto: dtype (field 1) = DT_FLOAT, float_val (field 5, packed) of
    # one float: 8 bytes with the value.
    tensor = b"\x08" + _varint(types_pb2.DT_FLOAT) + b"\x2a\x04"
    body = b"\x0a" + _varint(len(name)) + name + b"\x42" + _varint(len(tensor) + 4)
    return b"\x0a" + _varint(len(body) + len(tensor) + 4) + body + tensor


class EventWriter:
    """Writes rows of scalars, one event per step, into one run directory."""

    def __init__(self, run_dir):
        global _files_opened
        fs = gfile()
        fs.makedirs(run_dir)
        _files_opened += 1
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{_files_opened:06d}.v2"
        )
        self._writer = _RecordFile(fs.GFile(os.path.join(run_dir, name), "wb"))
        self._add(
            event_pb2.Event(
                wall_time=time.time(),
                file_version="brain.Event:2",
                source_metadata=event_pb2.SourceMetadata(writer="keras_fanin"),
            )
        )
        self.flush()
        self._prefixes = {}  # tag -> its encoded Summary.Value up to the float

    def _add(self, event):
        self._writer.write(event.SerializeToString())

    def write_step(self, step, values):
        """Writes `{tag: float}` at `step` as one event.

        The event is encoded by hand from cached per-tag bytes (the protobuf
        wire format, which is stable): building one message object per value
        made the host's share of a logged step grow with depth. Each tag's
        first point goes through protobuf, with the plugin metadata, as
        `tf.summary` writes it.
        """
        parts = []
        for tag, value in values.items():
            prefix = self._prefixes.get(tag)
            if prefix is None:
                entry = summary_pb2.Summary.Value(
                    tag=tag, tensor=_scalar_tensor(value), metadata=_SCALAR_METADATA
                ).SerializeToString()
                parts.append(b"\x0a" + _varint(len(entry)) + entry)
                self._prefixes[tag] = _value_prefix(tag)
            else:
                parts.append(prefix + struct.pack("<f", value))
        summary = b"".join(parts)
        self._writer.write(
            b"\x09"  # Event.wall_time, a double
            + struct.pack("<d", time.time())
            + b"\x10"  # Event.step, a varint
            + _varint(int(step))
            + b"\x2a"  # Event.summary, a message
            + _varint(len(summary))
            + summary
        )

    def write_layout(self, charts, step=0):
        """Writes a custom-scalars layout: `{title: regex}`, one chart each.

        TensorBoard's custom-scalars plugin reads a run's last layout, so a
        run may write a larger one later."""
        layout = layout_pb2.Layout(
            category=[
                layout_pb2.Category(
                    title="gradient health",
                    chart=[
                        layout_pb2.Chart(
                            title=title,
                            multiline=layout_pb2.MultilineChartContent(tag=[regex]),
                        )
                        for title, regex in charts.items()
                    ],
                )
            ]
        )
        event = event_pb2.Event(wall_time=time.time(), step=int(step))
        event.summary.value.add(
            tag=cs_metadata.CONFIG_SUMMARY_TAG,
            tensor=tensor_pb2.TensorProto(
                dtype=types_pb2.DT_STRING,
                string_val=[layout.SerializeToString()],
            ),
            metadata=cs_metadata.create_summary_metadata(),
        )
        self._add(event)

    def write_histograms(self, step, histograms):
        """Writes `{tag: [k, 3] float64 (left, right, count)}` at `step` as one
        event, the tensors `tf.summary.histogram` writes (histograms plugin)."""
        event = event_pb2.Event(wall_time=time.time(), step=int(step))
        for tag, buckets in histograms.items():
            tensor = tensor_pb2.TensorProto(
                dtype=types_pb2.DT_DOUBLE,
                tensor_content=np.ascontiguousarray(buckets, "<f8").tobytes(),
            )
            tensor.tensor_shape.dim.add(size=len(buckets))
            tensor.tensor_shape.dim.add(size=3)
            event.summary.value.add(
                tag=tag, tensor=tensor, metadata=_HISTOGRAM_METADATA
            )
        self._add(event)

    def write_image(self, step, tag, png, width, height, description=""):
        """Writes one PNG image at `step`, as `tf.summary.image` stores it.

        The images plugin reads a string tensor `[width, height, png, ...]`.
        """
        metadata = image_metadata.create_summary_metadata(
            display_name=tag, description=description
        )
        metadata.data_class = summary_pb2.DataClass.DATA_CLASS_BLOB_SEQUENCE
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[str(width).encode(), str(height).encode(), png],
        )
        tensor.tensor_shape.dim.add(size=3)
        self._add_value(step, tag, tensor, metadata)

    def write_text(self, step, tag, rows):
        """Writes strings at `step` for the text plugin (its TEXT tab).

        `rows` is a list of strings (shown as a one-column table) or of
        equal-length lists of strings (a table).
        """
        table = bool(rows) and not isinstance(rows[0], str)
        array = [list(r) if table else [r] for r in rows]
        metadata = text_metadata.create_summary_metadata(
            display_name=tag, description=""
        )
        metadata.data_class = summary_pb2.DataClass.DATA_CLASS_TENSOR
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[cell.encode() for row in array for cell in row],
        )
        tensor.tensor_shape.dim.add(size=len(array))
        if table:
            tensor.tensor_shape.dim.add(size=len(array[0]))
        self._add_value(step, tag, tensor, metadata)

    def write_layer_table(self, step, rows):
        """Writes the layer table for the GRADIENT HEALTH dashboard at `step`.

        `rows` are `(name, activation or "", has_kernel)` in forward order,
        stored as JSON in a string tensor under the dashboard's plugin name:
        the data TensorBoard lists that plugin by, so its tab is active for
        these logs alone.
        """
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(
                plugin_name=PLUGIN_NAME, content=b'{"version": 1}'
            ),
            data_class=summary_pb2.DataClass.DATA_CLASS_TENSOR,
        )
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, string_val=[encode_layers(rows)]
        )
        self._add_value(step, LAYERS_TAG, tensor, metadata)

    def _add_value(self, step, tag, tensor, metadata):
        event = event_pb2.Event(wall_time=time.time(), step=int(step))
        event.summary.value.add(tag=tag, tensor=tensor, metadata=metadata)
        self._add(event)

    def write_restart(self, step):
        """Marks a (re)start at `step`, as TensorFlow's session log does:
        after a run's first, TensorBoard's reader drops the points it has
        read at `step` and after, so a resumed run's line does not double."""
        self._add(
            event_pb2.Event(
                wall_time=time.time(),
                step=int(step),
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
            )
        )

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()
