"""The one evaluator, of the trainer and of `python -m jaxcnn.eval` (through
jaxcnn.evaluation) alike: `Evaluator` places a split on the devices once,
padded to whole batches with the padding masked out (each image counts
exactly once, on any device count), and evaluates the raw and EMA weights of
a train state, with optional test-time augmentation, one pmap'd batch per
call, summing loss, top-1 and top-5 hits and the confusion matrix. Between
batches the host shows progress and can stop the pass (a signal during the
trainer's evaluations).

Test-time augmentation can be given to only the least confident images (a
`tta_fraction` below 1, hiverge's cifar10_speedrun: the 25% whose largest
softmax probability under the plain forward pass is smallest): one plain
pass over the split gives every image's results and confidence, a second
pass augments the chosen images alone, and their results replace the plain
ones. Both passes write each image's results at its own position, summed
over the devices, so the choice is global: the same on any device count and
process count.
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


def eval_layout(n: int, num_devices: int, batch_size: int) -> tuple[int, int]:
  """(batches, images per device and batch) that place_eval_data gives n
  images over num_devices devices in global batches of batch_size."""
  per_device = max(1, math.ceil(min(batch_size, n) / num_devices))
  return math.ceil(n / (per_device * num_devices)), per_device


def place_eval_data(images: np.ndarray, labels: np.ndarray, devices: list,
                    batch_size: int) -> EvalData:
  """Pads the split to whole batches over the devices; each image counts once.

  `devices` are all the devices of the pmap; this process places the rows of
  its own devices (all of them with one process). Image j of the split is at
  [d, i, b] with j = (d * batches + i) * per_device + b: the padding comes
  last."""
  n = len(labels)
  if n == 0:
    raise ConfigError("the evaluation split is empty")
  batches, per_device = eval_layout(n, len(devices), batch_size)
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


def check_tta_fraction(fraction: float, what: str = "tta_fraction") -> float:
  """`fraction` as a float in (0, 1], else a ConfigError naming `what`."""
  try:
    value = float(fraction)
  except (TypeError, ValueError):
    value = math.nan
  if not 0 < value <= 1:
    raise ConfigError(
        f"{what} must be in (0, 1] (the fraction of the least confident test "
        f"images that get the test-time augmentation; 1: all), got {fraction!r}")
  return value


def _logits_fn(model, config: Config, tta: str):
  """logits(variables, uint8 images) in float32 under test-time
  augmentation `tta`. `variables` is one weight set's, or a tuple of
  several (weight_variables' 'ensemble'): then the log of the mean of
  their softmax probabilities, each under `tta`."""
  _check_tta(tta)
  mean = np.asarray(config.data.channel_mean, np.float32)
  std = np.asarray(config.data.channel_std, np.float32)
  normalization = config.data.normalization

  def one(variables, x):
    return augment.tta_logits(
        lambda x: model.apply(variables, x, train=False).astype(jnp.float32),
        x, tta)

  def logits(variables, x_u8):
    x = augment.normalize(x_u8, normalization, mean, std)
    if not isinstance(variables, tuple):
      return one(variables, x)
    probs = [jax.nn.softmax(one(v, x), -1) for v in variables]
    return jnp.log(sum(probs) / len(probs))

  return logits


def _per_image(logits, y, num_classes: int) -> dict:
  """Each image's loss, top-1 and top-5 hit, prediction and confidence (its
  largest softmax probability), all float32."""
  pred = jnp.argmax(logits, -1)
  top_k = jax.lax.top_k(logits, min(5, num_classes))[1]
  f32 = jnp.float32
  return {"loss": cross_entropy(logits, y).astype(f32),
          "correct": (pred == y).astype(f32),
          "correct_top5": jnp.any(top_k == y[:, None], axis=-1).astype(f32),
          "pred": pred.astype(f32),
          "confidence": jnp.max(jax.nn.softmax(logits, -1), -1).astype(f32)}


def _eval_body(model, config: Config, tta: str):
  """(body, init): adds one batch to the totals, and the zero totals."""
  num_classes = config.model.num_classes
  logits_of = _logits_fn(model, config, tta)

  def body(variables, totals, batch):
    x_u8, y, m = batch
    logits = logits_of(variables, x_u8)
    image = _per_image(logits, y, num_classes)
    pred = jnp.argmax(logits, -1)
    return {
        "loss_sum": totals["loss_sum"] + jnp.sum(image["loss"] * m),
        "correct": totals["correct"] + jnp.sum(image["correct"] * m),
        "correct_top5": totals["correct_top5"] + jnp.sum(
            image["correct_top5"] * m),
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
  """`body(variables, totals, (images, labels, mask), index)` over the placed
  batches, one batch per call (`index`: the batch's position in
  place_eval_data's layout, device-major); each device adds its batches in
  order and the devices' totals are summed once at the end."""

  def __init__(self, body, devices: list):
    self.local = parallel.local_part(devices)

    def one(variables, images, labels, mask, totals, i):
      index = jax.lax.axis_index(AXIS) * labels.shape[0] + i
      return body(variables, totals, (images[i], labels[i], mask[i]), index)

    self._one = jax.pmap(one, axis_name=AXIS, devices=devices,
                         in_axes=(0, 0, 0, 0, 0, None), donate_argnums=(4,))
    self._sum = jax.pmap(lambda t: jax.lax.psum(t, AXIS), axis_name=AXIS,
                         devices=devices)

  def __call__(self, variables, data: EvalData, init: dict, before_batch=None):
    """The summed totals (on the devices), from the host zeros `init`."""
    total = data.images.shape[1]
    totals = parallel.replicate(init, self.local)
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


IMAGE_RESULTS = ("loss", "correct", "correct_top5", "pred", "confidence")


def _image_body(model, config: Config, tta: str):
  """A _Pass body writing each image's results (_per_image) at its position
  (place_eval_data's layout) of one vector per result; the other devices'
  vectors hold zeros there, so the summed vectors hold every image once."""
  logits_of = _logits_fn(model, config, tta)
  num_classes = config.model.num_classes

  def body(variables, out, batch, index):
    x_u8, y, _ = batch
    image = _per_image(logits_of(variables, x_u8), y, num_classes)
    start = index * y.shape[0]
    return {k: jax.lax.dynamic_update_slice(out[k], image[k], (start,))
            for k in IMAGE_RESULTS}

  return body


def least_confident(confidence: np.ndarray, fraction: float) -> np.ndarray:
  """Indices (ascending) of the int(n * fraction) images of smallest
  confidence, ties broken by position."""
  k = int(len(confidence) * fraction)
  return np.sort(np.argsort(confidence, kind="stable")[:k])


def totals_of_images(images: dict, labels: np.ndarray,
                     num_classes: int) -> dict:
  """The summed totals (as _eval_body's, on the host) of per-image results."""
  confusion = np.zeros((num_classes, num_classes), np.float64)
  np.add.at(confusion, (labels, images["pred"].astype(np.int64)), 1.0)
  return {"loss_sum": np.float64(images["loss"].astype(np.float64).sum()),
          "correct": np.float64(images["correct"].sum()),
          "correct_top5": np.float64(images["correct_top5"].sum()),
          "count": np.float64(len(labels)), "confusion": confusion}


def summarize_eval(totals: dict) -> dict:
  """Host-side numbers from the summed totals (host arrays, Evaluator.totals)."""
  count = float(totals["count"])
  return {
      "loss": float(totals["loss_sum"]) / count,
      "accuracy": float(totals["correct"]) / count,
      "top5_accuracy": float(totals["correct_top5"]) / count,
      "count": int(round(count)),
      "confusion": totals["confusion"].round().astype(np.int64),
  }


# The weight sets the trainer evaluates, and every one an Evaluator can:
# 'ensemble' averages the raw and EMA weights' predicted probabilities (two
# forward passes an image; see _logits_fn).
WEIGHTS = ("raw", "ema")
ENSEMBLE = "ensemble"
ALL_WEIGHTS = WEIGHTS + (ENSEMBLE,)


def weight_variables(state: TrainState, weights: str):
  """What an evaluation pass takes for one name of ALL_WEIGHTS: a weight
  set's variables (state.variables_of), or for 'ensemble' the tuple of the
  raw and the EMA ones."""
  if weights == ENSEMBLE:
    return tuple(variables_of(state, w) for w in WEIGHTS)
  if weights not in WEIGHTS:
    raise ValueError(f"weights must be one of {', '.join(ALL_WEIGHTS)}, got "
                     f"{weights!r}")
  return variables_of(state, weights)


class Evaluator:
  """Evaluates train states of one model and config on one split, data
  parallel over `devices` (those of the pmap, of every process; this
  process places its own rows). The split is placed once and each pass
  (one per test-time augmentation) compiled once, then reused for every
  state: the trainer's evaluations every few epochs, eval's --all_steps.

  Called with a state, it returns {weights: {loss, accuracy, top5_accuracy,
  count, confusion [true, predicted]}}: `weights` among ALL_WEIGHTS; `tta` one
  of augment.TTA_MODES and `tta_fraction` in (0, 1] (the least confident
  images that get it; defaults: the evaluator's); `before_batch(weights,
  done, total)` is called before each batch and once at the end (done ==
  total == pass_batches()), and what it raises stops the pass; `replicated`:
  the state is the trainer's, replicated over this process's devices (else
  it is replicated here, after a check that the images fit the model)."""

  def __init__(self, model, config: Config, devices: list, images: np.ndarray,
               labels: np.ndarray, *, batch_size: int, tta: str = "none",
               tta_fraction: float = 1.0):
    _check_tta(tta)
    self.model, self.config, self.devices, self.tta = model, config, devices, tta
    self.tta_fraction = check_tta_fraction(tta_fraction)
    self.batch_size = int(batch_size)
    self.local = parallel.local_part(devices)
    self.image_shape = tuple(int(d) for d in images.shape[1:])
    self.images = images
    self.labels = np.asarray(labels).astype(np.int32)
    self.data = place_eval_data(images, self.labels, devices, self.batch_size)
    self.count = self.data.count
    self.batches = int(self.data.images.shape[1])  # Per plain pass.
    self._passes: dict[str, tuple[_Pass, dict]] = {}  # With its zeros.
    self._image_passes: dict[str, _Pass] = {}
    self._checked = False

  def _options(self, tta, tta_fraction) -> tuple[str, float]:
    tta = self.tta if tta is None else tta
    _check_tta(tta)
    fraction = self.tta_fraction if tta_fraction is None else \
        check_tta_fraction(tta_fraction)
    return tta, fraction

  def _selective(self, tta: str, fraction: float) -> bool:
    return tta != "none" and fraction < 1

  def pass_batches(self, tta: str | None = None,
                   tta_fraction: float | None = None) -> int:
    """The batches of one weight set's pass: before_batch's `total`."""
    tta, fraction = self._options(tta, tta_fraction)
    if not self._selective(tta, fraction):
      return self.batches
    k = int(self.count * fraction)
    return self.batches + (
        eval_layout(k, len(self.devices), self._subset_batch(k))[0] if k
        else 0)

  def totals(self, variables, tta: str | None = None, before_batch=None,
             tta_fraction: float | None = None) -> dict:
    """The summed totals (host arrays) of replicated `variables`."""
    tta, fraction = self._options(tta, tta_fraction)
    if self._selective(tta, fraction):
      return self._selective_totals(variables, tta, fraction, before_batch)
    if tta not in self._passes:
      body, init = _eval_body(self.model, self.config, tta)
      self._passes[tta] = (
          _Pass(lambda v, t, batch, _: body(v, t, batch), self.devices),
          jax.device_get(jax.jit(init)()))
    run, init = self._passes[tta]
    totals = run(variables, self.data, init, before_batch)
    return jax.tree.map(np.asarray, parallel.unreplicate(totals))

  def image_results(self, variables, tta: str, data: EvalData | None = None,
                    before_batch=None) -> dict:
    """Per-image results (float32 [count] each: loss, correct, correct_top5,
    pred, confidence) of replicated `variables` on `data` (default: the
    split), under test-time augmentation `tta`."""
    _check_tta(tta)
    data = self.data if data is None else data
    if tta not in self._image_passes:
      self._image_passes[tta] = _Pass(
          _image_body(self.model, self.config, tta), self.devices)
    _, batches, per_device = data.labels.shape  # This process's devices.
    # Every device's images, padding included.
    zero = np.zeros((len(self.devices) * batches * per_device,), np.float32)
    out = self._image_passes[tta](variables, data,
                                  {k: zero for k in IMAGE_RESULTS},
                                  before_batch)
    out = jax.tree.map(np.asarray, parallel.unreplicate(out))
    return {k: v[:data.count] for k, v in out.items()}

  def _subset_batch(self, k: int) -> int:
    """The global batch for k chosen images: as many batches as
    batch_size needs, of equal size, so little is padding (1,250 images in
    batches of 1,000 are two of 625, not two of 1,000)."""
    batches = math.ceil(k / self.batch_size)
    return math.ceil(k / batches)

  def _selective_totals(self, variables, tta: str, fraction: float,
                        before_batch) -> dict:
    # One progress count over both passes: the plain pass's batches, then
    # the chosen images'.
    total = self.pass_batches(tta, fraction)
    hook = None if before_batch is None else (  # Its end is not the end.
        lambda i, n: before_batch(i, total) if i < n else None)
    plain = self.image_results(variables, "none", before_batch=hook)
    chosen = least_confident(plain["confidence"], fraction)
    if not len(chosen) and before_batch is not None:
      before_batch(total, total)
    if len(chosen):
      subset = place_eval_data(self.images[chosen], self.labels[chosen],
                               self.devices, self._subset_batch(len(chosen)))
      hook = None if before_batch is None else (
          lambda i, _: before_batch(self.batches + i, total))
      augmented = self.image_results(variables, tta, subset, hook)
      for k in plain:
        plain[k] = plain[k].copy()
        plain[k][chosen] = augmented[k]
    return totals_of_images(plain, self.labels, self.config.model.num_classes)

  def __call__(self, state: TrainState, weights=WEIGHTS, *,
               tta: str | None = None, before_batch=None,
               replicated: bool = False,
               tta_fraction: float | None = None) -> dict[str, dict]:
    out = {}
    for name in weights:
      variables = weight_variables(state, name)
      if not replicated:
        if not self._checked:
          self._check_fits(variables[0] if isinstance(variables, tuple)
                           else variables)
        variables = parallel.replicate(variables, self.local)
      hook = None if before_batch is None else (
          lambda done, total, name=name: before_batch(name, done, total))
      out[name] = summarize_eval(
          self.totals(variables, tta, hook, tta_fraction=tta_fraction))
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
