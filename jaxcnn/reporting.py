"""Where metrics go: JSON lines and TensorBoard in the workdir, a progress bar.

Only process 0 writes (the caller passes `enabled=False` elsewhere).
"""
from __future__ import annotations

import contextlib
import json
import pathlib
import sys
import time
from typing import Any


def _plain(value: Any) -> Any:
  try:
    return value.item()  # numpy / jax scalars
  except AttributeError:
    return value


class _EventFile:
  """A TensorBoard event file written synchronously: each `add_scalars` is on
  disk when it returns. (tensorboardX's SummaryWriter queues events for a
  thread that flushes every two minutes, and its flush() skips the queue, so
  a killed run left a 0-byte file.)"""

  def __init__(self, logdir: pathlib.Path):
    from tensorboardX.event_file_writer import EventsWriter
    logdir.mkdir(parents=True, exist_ok=True)
    self._writer = EventsWriter(str(logdir / "events"))
    self._writer.flush()

  def add_scalars(self, prefix: str, values: dict, step: int,
                  wall_time: float) -> None:
    from tensorboardX.proto import event_pb2
    from tensorboardX.summary import scalar
    for k, v in values.items():
      self._writer.write_event(event_pb2.Event(
          wall_time=wall_time, step=step, summary=scalar(f"{prefix}/{k}", v)))
    self._writer.flush()

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class MetricWriter:
  """Appends one JSON object per line to WORKDIR/metrics.jsonl and mirrors
  scalars to TensorBoard event files in WORKDIR/tensorboard (if tensorboardX
  is installed). Both are flushed at every write: a killed run's event file
  holds what its metrics.jsonl holds (tensorboardX alone keeps up to two
  minutes of events in memory)."""

  def __init__(self, workdir, *, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._file = None
    if not enabled:
      return
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self.path = workdir / "metrics.jsonl"
    self._file = open(self.path, "a")
    try:
      self._tb = _EventFile(workdir / "tensorboard")
    except ImportError:
      print("tensorboardX is not installed: no TensorBoard event files.",
            file=sys.stderr)

  def write(self, kind: str, step: int, **values: Any) -> None:
    if not self.enabled:
      return
    record = {"kind": kind, "step": int(step), "time": round(time.time(), 3)}
    record.update({k: _plain(v) for k, v in values.items()})
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      self._tb.add_scalars(
          kind, {k: v for k, v in record.items()
                 if k not in ("kind", "step", "time")
                 and isinstance(v, (int, float))},
          int(step), record["time"])

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()
    if self._file is not None:
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir, kind: str | None = None) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if kind is None or r["kind"] == kind]


class _NoBar:
  def update(self, done: int) -> None:
    pass

  def close(self) -> None:
    pass


class _SubBar:
  """A second, transient bar under the steps' bar (an evaluation's batches)."""

  def __init__(self, desc: str, total: int):
    from tqdm import tqdm
    self._bar = tqdm(total=total, desc=desc, unit="batch", leave=False,
                     position=1, dynamic_ncols=True, file=sys.stderr)

  def update(self, done: int) -> None:
    self._bar.update(done - self._bar.n)

  def close(self) -> None:
    self._bar.close()


class Progress:
  """A tqdm bar over steps, updated at log intervals only (no per-step cost).

  Its clock counts training only: time spent elsewhere (`paused`, `exclude`:
  compilation, evaluation, checkpoints) is taken out of its rate and elapsed
  time, or a run's end would show evaluation seconds as seconds per step."""

  def __init__(self, total: int, initial: int, *, enabled: bool):
    self._bar = None
    if enabled:
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=initial, unit="step",
                       dynamic_ncols=True, file=sys.stderr)

  def update(self, step: int, **postfix: Any) -> None:
    if self._bar is None:
      return
    self._bar.update(step - self._bar.n)
    self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                           for k, v in postfix.items()}, refresh=True)

  def exclude(self, seconds: float) -> None:
    """Takes `seconds` that just passed out of the bar's clock."""
    if self._bar is not None:
      self._bar.start_t += seconds
      self._bar.last_print_t += seconds

  @contextlib.contextmanager
  def paused(self):
    t0 = time.time()
    try:
      yield
    finally:
      self.exclude(time.time() - t0)

  def sub_bar(self, desc: str, total: int):
    """A bar over `total` units (evaluation batches) while the steps' bar is
    on; nothing otherwise."""
    return _SubBar(desc, total) if self._bar is not None else _NoBar()

  def write(self, text: str) -> None:
    if self._bar is not None:
      self._bar.write(text, file=sys.stderr)
    else:
      print(text, file=sys.stderr, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
