"""Event files from host-side numbers, with TensorBoard's own record format.

Statistics reach the host in batches (one read per flush), so they are written
here from NumPy, one event per step holding every tag of that step. The file
is TensorBoard's: records framed by `tensorboard.summary.writer.record_writer`
(the writer TensorBoard ships for use without TensorFlow), the events those
`tf.summary.scalar` writes (a float32 scalar tensor with the scalars plugin's
metadata), read back by TensorBoard's reader as scalars. Files are opened
with `tf.io.gfile` on the TensorFlow backend (so `gs://` and other remote
paths work) and with TensorBoard's TF-free `gfile` elsewhere (local paths,
`s3://`, and any `fsspec` scheme), so JAX and torch users need no TensorFlow.
"""

import os
import socket
import time

import keras
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as cs_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.record_writer import RecordWriter

_files_opened = 0


def _gfile():
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.io.gfile
    from tensorboard.compat.tensorflow_stub.io import gfile

    return gfile


_SCALAR_METADATA = scalar_metadata.create_summary_metadata(
    display_name="", description=""
)
_SCALAR_METADATA.data_class = summary_pb2.DataClass.DATA_CLASS_SCALAR


def _scalar_tensor(value):
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[value])


class EventWriter:
    """Writes rows of scalars, one event per step, into one run directory."""

    def __init__(self, run_dir):
        global _files_opened
        gfile = _gfile()
        gfile.makedirs(run_dir)
        _files_opened += 1
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{_files_opened}.v2"
        )
        self._writer = RecordWriter(gfile.GFile(os.path.join(run_dir, name), "wb"))
        self._add(
            event_pb2.Event(
                wall_time=time.time(),
                file_version="brain.Event:2",
                source_metadata=event_pb2.SourceMetadata(writer="keras_fanin"),
            )
        )
        self.flush()
        self._described = set()  # tags whose metadata this file already has

    def _add(self, event):
        self._writer.write(event.SerializeToString())

    def write_step(self, step, values):
        """Writes `{tag: float}` at `step` as one event."""
        event = event_pb2.Event(wall_time=time.time(), step=int(step))
        for tag, value in values.items():
            entry = event.summary.value.add(tag=tag, tensor=_scalar_tensor(value))
            if tag not in self._described:
                # As tf.summary does: the plugin metadata on a tag's first point.
                entry.metadata.CopyFrom(_SCALAR_METADATA)
                self._described.add(tag)
        self._add(event)

    def write_layout(self, charts):
        """Writes a custom-scalars layout: `{title: regex}`, one chart each."""
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
        event = event_pb2.Event(wall_time=time.time(), step=0)
        event.summary.value.add(
            tag=cs_metadata.CONFIG_SUMMARY_TAG,
            tensor=tensor_pb2.TensorProto(
                dtype=types_pb2.DT_STRING,
                string_val=[layout.SerializeToString()],
            ),
            metadata=cs_metadata.create_summary_metadata(),
        )
        self._add(event)

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()
