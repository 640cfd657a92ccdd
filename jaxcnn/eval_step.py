"""The eval step: a pmap'd pass over a split placed on the devices, summing
loss, top-1 and top-5 hits and the confusion matrix, with optional test-time
augmentation; BatchwiseEvalFn, the same pass one batch per call (the
trainer's: progress, and a signal honoured between batches); and
evaluate_state, which runs either for the raw and the EMA weights of a
(replicated) train state.
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


def _eval_body(model, config: Config, tta: str):
  """(body, init): the scan body that adds one batch to the totals, and the
  zero totals."""
  if tta not in augment.TTA_MODES:
    raise ConfigError(f"unknown test-time augmentation {tta!r}; use one of "
                      f"{', '.join(augment.TTA_MODES)}")
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


def make_eval_fn(model, config: Config, devices: list, tta: str = "none"):
  """pmap'd (variables, images, labels, mask) -> summed loss, top-1, top-5
  correct, count and confusion matrix [true, predicted] over the split.
  `tta`: test-time augmentation, one of augment.TTA_MODES."""
  body, init = _eval_body(model, config, tta)

  def run(variables, images, labels, mask):
    totals, _ = jax.lax.scan(lambda t, b: (body(variables, t, b), None),
                             init(), (images, labels, mask))
    return jax.lax.psum(totals, AXIS)

  return jax.pmap(run, axis_name=AXIS, devices=devices)


class BatchwiseEvalFn:
  """make_eval_fn's pass, one batch per call: between calls the host can
  show progress and stop (a signal during the final evaluation). Called as
  make_eval_fn's function is, plus `before_batch(done, total)`, called
  before each batch and once at the end (done == total); what it raises
  stops the pass.

  Each device adds its batches in the order make_eval_fn's scan does and
  the devices' totals are summed once at the end, so the figures are those
  of make_eval_fn."""

  def __init__(self, model, config: Config, devices: list, tta: str = "none"):
    body, init = _eval_body(model, config, tta)
    self.local = parallel.local_part(devices)

    def one(variables, images, labels, mask, totals, i):
      return body(variables, totals, (images[i], labels[i], mask[i]))

    self._one = jax.pmap(one, axis_name=AXIS, devices=devices,
                         in_axes=(0, 0, 0, 0, 0, None), donate_argnums=(4,))
    self._sum = jax.pmap(lambda t: jax.lax.psum(t, AXIS), axis_name=AXIS,
                         devices=devices)
    self._init = jax.jit(init)

  def __call__(self, variables, images, labels, mask, before_batch=None):
    total = images.shape[1]
    totals = parallel.replicate(jax.device_get(self._init()), self.local)
    for i in range(total):
      if before_batch is not None:
        before_batch(i, total)
      totals = self._one(variables, images, labels, mask, totals,
                         np.int32(i))
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


def evaluate_state(eval_fn, state_r: TrainState, eval_data: EvalData,
                   before_batch=None) -> dict:
  """{'raw': {...}, 'ema': {...}} for a replicated state. `before_batch(
  name, done, total)` (a BatchwiseEvalFn only): progress and stopping."""
  out = {}
  for name in ("raw", "ema"):
    hook = {} if before_batch is None else {
        "before_batch": lambda done, total, name=name: before_batch(
            name, done, total)}
    totals = eval_fn(variables_of(state_r, name), eval_data.images,
                     eval_data.labels, eval_data.mask, **hook)
    out[name] = summarize_eval(totals)
  return out
