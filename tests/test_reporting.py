"""Metric files and the progress bar (jaxcnn/reporting.py)."""
import os
import struct
import time

import pytest

from jaxcnn import reporting


def read_scalars(path) -> dict:
  """{(tag, step): value} of a TFRecord event file, read as TensorBoard
  does (length, its CRC, the Event proto, its CRC)."""
  from tensorboardX.proto import event_pb2
  data, at, out = path.read_bytes(), 0, {}
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
    at += 12 + length + 4
    for value in event.summary.value:
      out[(value.tag, event.step)] = value.simple_value
  return out


def test_tensorboard_events_are_on_disk_at_each_write(tmp_path):
  # A run killed with SIGKILL never closes its writer: what metrics.jsonl
  # holds must already be in the event file (tensorboardX alone buffers up
  # to two minutes and leaves a 0-byte file).
  pytest.importorskip("tensorboardX")
  writer = reporting.MetricWriter(tmp_path)
  writer.write("train", 7, loss=0.25, accuracy=0.5)
  files = os.listdir(tmp_path / "tensorboard")
  assert len(files) == 1
  scalars = read_scalars(tmp_path / "tensorboard" / files[0])
  assert scalars == {("train/loss", 7): 0.25, ("train/accuracy", 7): 0.5}
  assert reporting.read_metrics(tmp_path, "train")[0]["step"] == 7
  writer.close()


def test_progress_clock_leaves_out_paused_time(tmp_path):
  progress = reporting.Progress(100, 0, enabled=True)
  bar = progress._bar
  start = bar.start_t
  with progress.paused():
    time.sleep(0.3)
  progress.exclude(2.0)
  assert bar.start_t - start >= 2.3
  assert bar.format_dict["elapsed"] < 0.3
  progress.close()
