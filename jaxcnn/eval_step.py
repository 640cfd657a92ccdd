"""The one evaluator, of the trainer and of `python -m jaxcnn.eval` (through
jaxcnn.evaluation) alike: `Evaluator` places a split on the devices once,
padded to whole batches with the padding masked out (each image counts
exactly once, on any device count), and evaluates the raw and EMA weights of
a train state, with optional test-time augmentation, one pmap'd batch per
call, summing loss, top-1 and top-5 hits and the confusion matrix. Between
batches the host shows progress and can stop the pass (a signal during the
trainer's evaluations).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import augment, parallel
from jaxcnn.config import Config, ConfigError
from jaxcnn.data import DataError
from jaxcnn.state import TrainState, variables_of
from jaxcnn.steps import cross_entropy

AXIS = parallel.AXIS


@dataclasses.dataclass
class EvalData:
  images: Any  # [devices, batches, batch, H, W, C] uint8, sharded.
  labels: Any  # [devices, batches, batch] int32
  mask: Any  # [devices, batches, batch] float32: 0 for padding.
  count: int  # Real examples.


def place_eval_data(images: np.ndarray, labels: np.ndarray, devices: list,
                    batch_size: int) -> EvalData:
  """Pads the split to whole batches over the devices; each image counts once.

  `devices` are all the devices of the pmap; this process places the rows of
  its own devices (all of them with one process)."""
  n = len(labels)
  if n == 0:
    raise ConfigError("the evaluation split is empty")
  per_device = max(1, math.ceil(min(batch_size, n) / len(devices)))
  batches = math.ceil(n / (per_device * len(devices)))
  total = batches * per_device * len(devices)
  pad = total - n
  images = np.concatenate(
      [images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
  mask = np.concatenate([np.ones((n,), np.float32), np.zeros((pad,), np.float32)])
  shape = (len(devices), batches, per_device)
  rows = parallel.local_rows(devices)
  local = parallel.local_part(devices)
  return EvalData(
      images=parallel.shard(
          images.reshape(shape + images.shape[1:])[rows], local),
      labels=parallel.shard(labels.reshape(shape)[rows], local),
      mask=parallel.shard(mask.reshape(shape)[rows], local), count=n)


def _check_tta(tta: str) -> None:
  if tta not in augment.TTA_MODES:
    raise ConfigError(f"unknown test-time augmentation {tta!r}; use one of "
                      f"{', '.join(augment.TTA_MODES)}")


def _eval_body(model, config: Config, tta: str):
  """(body, init): adds one batch to the totals, and the zero totals."""
  _check_tta(tta)
  num_classes = config.model.num_classes
  mean = np.asarray(config.data.channel_mean, np.float32)
  std = np.asarray(config.data.channel_std, np.float32)
  normalization = config.data.normalization

  def body(variables, totals, batch):
    x_u8, y, m = batch
    x = augment.normalize(x_u8, normalization, mean, std)
    logits = augment.tta_logits(
        lambda x: model.apply(variables, x, train=False).astype(jnp.float32),
        x, tta)
    pred = jnp.argmax(logits, -1)
    k = min(5, num_classes)
    top_k = jax.lax.top_k(logits, k)[1]
    in_top_k = jnp.any(top_k == y[:, None], axis=-1)
    return {
        "loss_sum": totals["loss_sum"] + jnp.sum(cross_entropy(logits, y) * m),
        "correct": totals["correct"] + jnp.sum((pred == y) * m),
        "correct_top5": totals["correct_top5"] + jnp.sum(in_top_k * m),
        "count": totals["count"] + jnp.sum(m),
        "confusion": totals["confusion"].at[y, pred].add(m),
    }

  def init():
    zero = jnp.zeros((), jnp.float32)
    return {"loss_sum": zero, "correct": zero, "correct_top5": zero,
            "count": zero,
            "confusion": jnp.zeros((num_classes, num_classes), jnp.float32)}

  return body, init


class _Pass:
  """_eval_body over the placed batches, one batch per call; each device
  adds its batches in order and the devices' totals are summed once at the
  end."""

  def __init__(self, model, config: Config, devices: list, tta: str):
    body, init = _eval_body(model, config, tta)
    self.local = parallel.local_part(devices)

    def one(variables, images, labels, mask, totals, i):
      return body(variables, totals, (images[i], labels[i], mask[i]))

    self._one = jax.pmap(one, axis_name=AXIS, devices=devices,
                         in_axes=(0, 0, 0, 0, 0, None), donate_argnums=(4,))
    self._sum = jax.pmap(lambda t: jax.lax.psum(t, AXIS), axis_name=AXIS,
                         devices=devices)
    self._init = jax.jit(init)

  def __call__(self, variables, data: EvalData, before_batch=None):
    total = data.images.shape[1]
    totals = parallel.replicate(jax.device_get(self._init()), self.local)
    for i in range(total):
      if before_batch is not None:
        before_batch(i, total)
      totals = self._one(variables, data.images, data.labels, data.mask,
                         totals, np.int32(i))
      # One batch at a time: progress is real and a stop is prompt.
      jax.block_until_ready(totals)
    if before_batch is not None:
      before_batch(total, total)
    return self._sum(totals)


def summarize_eval(totals: dict) -> dict:
  """Host-side numbers from the summed eval outputs of one device."""
  totals = jax.tree.map(np.asarray, parallel.unreplicate(totals))
  count = float(totals["count"])
  return {
      "loss": float(totals["loss_sum"]) / count,
      "accuracy": float(totals["correct"]) / count,
      "top5_accuracy": float(totals["correct_top5"]) / count,
      "count": int(round(count)),
      "confusion": totals["confusion"].round().astype(np.int64),
  }


WEIGHTS = ("raw", "ema")


class Evaluator:
  """Evaluates train states of one model and config on one split, data
  parallel over `devices` (those of the pmap, of every process; this
  process places its own rows). The split is placed once and each pass
  (one per test-time augmentation) compiled once, then reused for every
  state: the trainer's evaluations every few epochs, eval's --all_steps.

  Called with a state, it returns {weights: {loss, accuracy, top5_accuracy,
  count, confusion [true, predicted]}}: `weights` among WEIGHTS; `tta` one
  of augment.TTA_MODES (default: the evaluator's); `before_batch(weights,
  done, total)` is called before each batch and once at the end (done ==
  total), and what it raises stops the pass; `replicated`: the state is the
  trainer's, replicated over this process's devices (else it is replicated
  here, after a check that the images fit the model)."""

  def __init__(self, model, config: Config, devices: list, images: np.ndarray,
               labels: np.ndarray, *, batch_size: int, tta: str = "none"):
    _check_tta(tta)
    self.model, self.config, self.devices, self.tta = model, config, devices, tta
    self.batch_size = int(batch_size)
    self.local = parallel.local_part(devices)
    self.image_shape = tuple(int(d) for d in images.shape[1:])
    self.data = place_eval_data(images, np.asarray(labels).astype(np.int32),
                                devices, self.batch_size)
    self.count = self.data.count
    self.batches = int(self.data.images.shape[1])  # Per pass.
    self._passes: dict[str, _Pass] = {}
    self._checked = False

  def totals(self, variables, tta: str | None = None,
             before_batch=None) -> dict:
    """The summed totals (on the devices) of replicated `variables`."""
    tta = self.tta if tta is None else tta
    if tta not in self._passes:
      self._passes[tta] = _Pass(self.model, self.config, self.devices, tta)
    return self._passes[tta](variables, self.data, before_batch)

  def __call__(self, state: TrainState, weights=WEIGHTS, *,
               tta: str | None = None, before_batch=None,
               replicated: bool = False) -> dict[str, dict]:
    out = {}
    for name in weights:
      variables = variables_of(state, name)
      if not replicated:
        if not self._checked:
          self._check_fits(variables)
        variables = parallel.replicate(variables, self.local)
      hook = None if before_batch is None else (
          lambda done, total, name=name: before_batch(name, done, total))
      out[name] = summarize_eval(self.totals(variables, tta, hook))
    return out

  def _check_fits(self, variables: dict) -> None:
    # A wrong image size would otherwise fail inside the compiled step with a
    # shape error about some matmul.
    x = jax.ShapeDtypeStruct((1,) + self.image_shape, np.float32)
    try:
      jax.eval_shape(lambda v, x: self.model.apply(v, x, train=False),
                     variables, x)
    except Exception as e:
      why = str(e).strip().splitlines()[0].split(" (https://")[0][:240]
      raise DataError(
          f"images of shape {self.image_shape} do not fit this checkpoint's "
          f"model: {type(e).__name__}: {why}") from e
    self._checked = True
