"""The train step: a pure function of (state, batch), as in flax's imagenet
example, and the pmap'd dispatch that feeds it from the devices.

    train_step(state, batch, setup=...) -> (state, metrics)

runs on one device's shard inside a pmap over parallel.AXIS: gradients are
averaged across devices (and BatchNorm statistics by the model's own
axis_name), metrics are summed. `make_train_fn(setup, k)` composes the input
pipeline (pipeline.train_batch), `train_step` and the metric accumulator
into one pmap'd call of k steps; `TrainFeed` places what that call reads
(training set, permutations, accumulator) on the devices.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn import optim, parallel, pipeline
from jaxcnn.state import Setup, TrainState

AXIS = parallel.AXIS
NO_BAD_STEP = np.iinfo(np.int32).max


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


def smoothed_cross_entropy(logits, labels, smoothing: float):
  """Cross-entropy against (1 - smoothing) * one_hot + smoothing / classes
  (label smoothing); the plain integer-label form when smoothing is 0."""
  if smoothing == 0:
    return cross_entropy(logits, labels)
  targets = optax.smooth_labels(
      jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32), smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_step(state: TrainState, batch: dict, *, setup: Setup,
               stem_frozen: bool = False,
               frozen_blocks: int = 0) -> tuple[TrainState, dict]:
  """One update from this device's shard `batch` ({'images': normalized
  float, 'labels': int; with data pruning, 'ids': the examples' indices,
  whose losses go into state.example_loss['loss']}). Returns the new state
  and the step's metrics, summed over devices: loss_sum, correct, count; and
  grad_norm (of the averaged gradient) and finite (loss and gradient norm
  are finite).
  `stem_frozen` (from setup.stem_frozen_from on): the model stops the
  gradient at its frozen stem, whose gradient is then zero; `frozen_blocks`
  k (from setup.frozen_blocks_from[k - 1] on, with the stem frozen): at
  the output of its k-th block too, so no backward pass runs below it."""
  cfg = setup.config
  device = jax.lax.axis_index(AXIS)
  dropout_key = jax.random.fold_in(
      jax.random.fold_in(state.rng, state.step), device)
  images, labels = batch["images"], batch["labels"]
  stem = {"stem_frozen": True} if stem_frozen else {}
  if frozen_blocks:
    stem["frozen_blocks"] = frozen_blocks

  def loss_fn(params):
    logits, new_vars = setup.model.apply(
        {"params": params, "batch_stats": state.batch_stats}, images,
        train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"],
        **stem)
    losses = smoothed_cross_entropy(logits, labels,
                                    float(cfg.train.label_smoothing))
    return jnp.mean(losses), (logits, new_vars.get("batch_stats", {}), losses)

  (loss, (logits, batch_stats, losses)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  example_loss = state.example_loss
  if setup.pruning:
    # Every device records the whole global batch's losses, so the tables
    # stay replicated.
    ids = jax.lax.all_gather(batch["ids"], AXIS).reshape(-1)
    table = example_loss["loss"].at[ids].set(
        jax.lax.all_gather(jax.lax.stop_gradient(losses), AXIS).reshape(-1))
    example_loss = {**example_loss, "loss": table}
  # Every device has the same shard size, so the mean of the device means is
  # the mean over the global batch.
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # The statistics' EMA, by the rule and decay of the parameters' EMA (the
  # last link of `tx`).
  ema_batch_stats = optim.ema_update(
      state.ema_batch_stats, batch_stats,
      optim.ema_decay_at(state.step + 1, cfg.optim.ema_decay,
                         cfg.optim.ema_ramp))
  grad_norm = optax.global_norm(grads)
  local_batch = labels.shape[0]
  correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  metrics = jax.lax.psum(
      {"loss_sum": loss * local_batch, "correct": correct,
       "count": jnp.float32(local_batch)}, AXIS)
  metrics["grad_norm"] = grad_norm
  metrics["finite"] = jnp.isfinite(metrics["loss_sum"]) & jnp.isfinite(grad_norm)
  slow = state.lookahead
  if cfg.optim.lookahead_every_steps:
    live, slow = optim.lookahead(
        state.step + 1, {"params": params, "batch_stats": batch_stats},
        slow, every=int(cfg.optim.lookahead_every_steps),
        decay=cfg.optim.lookahead_decay,
        start_step=int(round(cfg.optim.lookahead_start_epochs
                             * setup.steps_per_epoch)),
        steps_per_epoch=setup.steps_per_epoch, total_steps=setup.total_steps)
    params, batch_stats = live["params"], live["batch_stats"]
  state = state.replace(step=state.step + 1, params=params,
                        batch_stats=batch_stats,
                        ema_batch_stats=ema_batch_stats, opt_state=opt_state,
                        lookahead=slow, example_loss=example_loss)
  return state, metrics


# --- Metrics accumulated between logs -----------------------------------------


def new_accumulator() -> dict:
  """Zero sums, on the host; bad_step NO_BAD_STEP (none yet)."""
  zero = np.zeros((), np.float32)
  return {"loss_sum": zero, "correct": zero, "count": zero,
          "grad_norm_sum": zero, "steps": zero,
          "bad_step": np.array(NO_BAD_STEP, np.int32)}


def accumulate(acc: dict, metrics: dict, step) -> dict:
  """`acc` plus one step's metrics; bad_step keeps the first step (1-based,
  `step` is the state's step before the update) with a non-finite value."""
  return {
      "loss_sum": acc["loss_sum"] + metrics["loss_sum"],
      "correct": acc["correct"] + metrics["correct"],
      "count": acc["count"] + metrics["count"],
      "grad_norm_sum": acc["grad_norm_sum"] + metrics["grad_norm"],
      "steps": acc["steps"] + 1,
      "bad_step": jnp.where(metrics["finite"], acc["bad_step"],
                            jnp.minimum(acc["bad_step"], step + 1)),
  }


# --- The dispatch: input pipeline, k train steps, accumulation ----------------


def make_train_fn(setup: Setup, num_steps: int, stem_frozen: bool = False,
                  crop_size: int | None = None, frozen_blocks: int = 0):
  """A pmap'd function running `num_steps` train steps per call:
  (state, acc, train_x, train_y, perm2) -> (state, acc), the state and
  accumulator donated. perm2 is pipeline.feed_permutations of the first
  step's data epoch. `stem_frozen`, `frozen_blocks`: see train_step;
  `crop_size`: the steps train on crops of that side, None: the data's (the
  caller picks them by step: Setup.stem_frozen_from, Setup.crop_size_at,
  Setup.frozen_blocks_at)."""
  if frozen_blocks and not stem_frozen:
    raise ValueError("frozen_blocks needs stem_frozen")
  step_fn = functools.partial(train_step, setup=setup, stem_frozen=stem_frozen,
                              frozen_blocks=frozen_blocks)

  def one_step(state, acc, train_x, train_y, perm2, base):
    images, labels, ids = pipeline.train_batch(
        setup, train_x, train_y, perm2, state.step, base,
        jax.lax.axis_index(AXIS), crop_size=crop_size, with_ids=True)
    new_state, metrics = step_fn(
        state, {"images": images, "labels": labels, "ids": ids})
    return new_state, accumulate(acc, metrics, state.step)

  def run(state, acc, train_x, train_y, perm2):
    base = setup.steps.data_epoch_start(setup.steps.data_epoch_of(state.step))
    if num_steps == 1:
      return one_step(state, acc, train_x, train_y, perm2, base)

    def body(carry, _):
      return one_step(*carry, train_x, train_y, perm2, base), None

    (state, acc), _ = jax.lax.scan(body, (state, acc), None, length=num_steps)
    return state, acc

  return jax.pmap(run, axis_name=AXIS, devices=setup.devices,
                  donate_argnums=(0, 1))


@dataclasses.dataclass
class TrainFeed:
  """What a train_fn call reads, on this process's devices: the uint8
  training set and labels (whole, on every device), the permutations of
  the current epoch and the next, and a fresh metric accumulator."""
  setup: Setup
  train_x: Any
  train_y: Any
  perm2: Any = None
  epoch: int | None = None

  @classmethod
  def place(cls, setup: Setup, epoch: int = 0,
            scores: np.ndarray | None = None) -> "TrainFeed":
    local = setup.local_devices
    feed = cls(setup,
               parallel.replicate(setup.data.train_images, local),
               parallel.replicate(setup.data.train_labels.astype(np.int32),
                                  local))
    feed.at_epoch(epoch, scores)
    return feed

  def at_epoch(self, epoch: int, scores: np.ndarray | None = None, *,
               force: bool = False) -> None:
    """Places the permutations of data epoch `epoch` and the next (if not
    already, or `force`); `scores`: the loss table that picks a pruned
    epoch's images (see pipeline.feed_permutations)."""
    if epoch != self.epoch or force:
      perm = pipeline.feed_permutations(self.setup, epoch, scores)
      self.perm2 = parallel.replicate(perm, self.setup.local_devices)
      self.epoch = epoch

  def accumulator(self) -> dict:
    return parallel.replicate(new_accumulator(), self.setup.local_devices)

  def inputs(self) -> tuple:
    """(train_x, train_y, perm2): a train_fn's arguments after state, acc."""
    return self.train_x, self.train_y, self.perm2
