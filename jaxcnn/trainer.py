"""The training loop: `train_and_evaluate(config, workdir)` is what
`python -m jaxcnn.train` calls.

Where the parts live:
  state.py      TrainState; build: config + data -> model, optimizer, schedule
  pipeline.py   the epoch order and the on-device input pipeline
  steps.py      the pure train step, its pmap'd dispatch, TrainFeed
  eval_step.py  the evaluator (eval's too)
  checkpoint.py saving, and the order in which a run resumes
This module resumes a run, then loops: dispatch k steps, and between
dispatches log, collect statistics, evaluate, save and stop when asked, each
a named method of `_Loop`.
"""
from __future__ import annotations

import contextlib
import pathlib
import signal
import sys
import threading
import time
from typing import Any

import jax
import numpy as np

from jaxcnn import checkpoint, parallel, reporting
from jaxcnn.config import Config, diff
from jaxcnn.data import Dataset
from jaxcnn.eval_step import ALL_WEIGHTS, ENSEMBLE, WEIGHTS, Evaluator
# The names callers know the trainer by (python -m jaxcnn.train, tests).
from jaxcnn.state import (Setup, TrainState, build,  # noqa: F401
                          create_train_state, variables_of)
from jaxcnn.steps import NO_BAD_STEP, TrainFeed, make_train_fn
from jaxcnn.workdir_lock import WorkdirLock


class TrainingError(RuntimeError):
  """Training cannot go on (non-finite loss, incompatible workdir)."""


class Interrupted(RuntimeError):
  """SIGINT/SIGTERM: a checkpoint was written and training stopped."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


class _EvaluationStopped(Exception):
  """A signal arrived during an evaluation, which was abandoned."""


# Train calls the loop queues on the devices before it waits for them to
# finish (see _Loop.dispatch).
MAX_CALLS_IN_FLIGHT = 3

# Config fields that may change when a run resumes; any other difference
# between the checkpoint's config and the command's is refused.
RESUMABLE_CHANGES = (
    "train.num_epochs", "train.num_steps", "train.stop_at_train_error",
    "train.num_devices",
    "train.steps_per_dispatch", "train.log_every_steps",
    "train.eval_every_epochs", "train.eval_batch_size",
    "train.checkpoint_every_steps", "train.keep_checkpoints",
    "train.progress_bar", "train.collect_stats", "data.data_dir")


# Fields filled in from the data (state.resolve_with_data) that configs saved
# before them lack: such a config takes the current values.
ADDED_DATA_FIELDS = ("train_size", "image_shape", "class_names")

# Fields resolve_with_data fills in from the data when the config leaves them
# empty: they differ as a consequence of another change (data.train_limit,
# data.source), so a refusal names them after what the user changed.
DERIVED_FROM_DATA = ("data.channel_mean", "data.channel_std",
                     "data.train_size", "data.image_shape")


def _same_group_names(saved: Config, current: Config) -> None:
  """A group's name is a label, its regex says which parameters it holds:
  when the saved groups match what the current ones match, in the same
  order (a workdir of older code, whose groups legacy.upgrade named after
  their regexes), the saved ones take the current names, so that only a
  real difference (a rate, an optimizer) is refused, under today's name."""
  old, new = saved.optim.get("groups"), current.optim.get("groups")
  if not old or not new or len(old) != len(new):
    return
  if all(a.get("match") == b.get("match") for a, b in zip(old, new)):
    for a, b in zip(old, new):
      a.name = b.name


def incompatible_changes(saved: Config, current: Config,
                         given: Config | None = None
                         ) -> tuple[list[str], list[str]]:
  """(changed, derived): the `key: saved -> current` lines that forbid a
  resume, the fields the user set apart from those derived from the data.
  `given` is the config before the data's fields were filled in (a field set
  there is the user's, not derived); None: all of DERIVED_FROM_DATA are."""
  saved = saved.copy()
  for key in ADDED_DATA_FIELDS:
    if not saved.data.get(key):
      saved.data[key] = current.data[key]
  _same_group_names(saved, current)
  lines = [line for line in diff(saved, current)
           if line.split(":", 1)[0] not in RESUMABLE_CHANGES]
  derived_keys = {key for key in DERIVED_FROM_DATA
                  if given is None or not given.data.get(key.split(".", 1)[1])}
  changed = [l for l in lines if l.split(":", 1)[0] not in derived_keys]
  derived = [l for l in lines if l.split(":", 1)[0] in derived_keys]
  return changed, derived


def fresh_workdir_suggestion(workdir: str) -> str:
  """A sibling of `workdir` that does not exist yet (W_2, W_3, ...)."""
  base = str(workdir).rstrip("/") or "runs/run"
  n = 2
  while pathlib.Path(f"{base}_{n}").exists():
    n += 1
  return f"{base}_{n}"


def refused_resume_message(workdir: str, changed: list[str],
                           derived: list[str]) -> str:
  """One line: what the user changed first, then what follows from the data
  (the channel statistics by name only: their values are long and say
  nothing), then how to start afresh."""
  def short(line: str) -> str:
    key = line.split(":", 1)[0]
    return key if key in ("data.channel_mean", "data.channel_std") else line
  if changed:
    text = f"{workdir} holds a run with a different config: " + "; ".join(
        changed)
    if derived:
      text += " (and, derived from the data: " + "; ".join(
          short(l) for l in derived) + ")"
  else:
    text = (f"{workdir} holds a run trained on other data (derived from the "
            "data: " + "; ".join(short(l) for l in derived) + ")")
  return (text + "; nothing was changed: to start afresh use a new "
          f"--workdir, e.g. --workdir {fresh_workdir_suggestion(workdir)}")


def eval_command(workdir: str, tta: str = "none", fraction: float = 1.0) -> str:
  """The command that evaluates the latest checkpoint of `workdir`."""
  import shlex
  command = f"python -m jaxcnn.eval --workdir {shlex.quote(str(workdir))}"
  if tta != "none":
    command += f" --tta {tta}"
    if fraction != 1:
      command += f" --tta_fraction {fraction:g}"
  return command


class _StopFlag:
  """SIGINT/SIGTERM set a flag; the loop checkpoints and stops at the next
  step boundary. A second SIGINT stops at once."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _crossed(prev: int, now: int, every: int) -> bool:
  return every > 0 and now // every > prev // every


def train_and_evaluate(config: Config, workdir: str, *,
                       data: Dataset | None = None) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  Returns the final evaluation: {'step', 'raw': {...}, 'ema': {...}}, with
  'tta' (train.final_tta) and the training seconds when it trained.
  """
  setup = build(config, data)
  is_main = jax.process_index() == 0
  say = (lambda text: print(text, file=sys.stderr, flush=True)) if is_main \
      else (lambda text: None)
  # Processes of one run share the workdir; the first one holds the lock.
  lock = WorkdirLock(workdir).acquire() if is_main else None
  try:
    fresh = create_train_state(setup)
    restored = _resume_state(setup, workdir, fresh, say, config)
    state = fresh if restored is None else restored
    del fresh, restored
    # The flag covers the evaluations after training too: a signal there
    # stops them, and the run says that its final checkpoint is saved.
    with _StopFlag() as stop:
      loop = _Loop(setup, workdir, state, say, is_main, stop)
      try:
        while loop.step < setup.total_steps and not loop.target_reached:
          prev = loop.step
          loop.dispatch()
          loop.between_dispatches(prev)
        result = loop.final_result()
      finally:
        loop.close()
      if stop.signum is not None:  # It came while the results were printed.
        raise loop.finished_interrupt(stop.signum, evaluated=True)
    return result
  finally:
    if lock is not None:
      lock.release()


def _resume_state(setup: Setup, workdir: str, fresh: TrainState,
                  say, given: Config | None = None) -> TrainState | None:
  """The state to resume from, in checkpoint.restore_latest_good's resume
  order (None: start afresh); a saved config must agree with this one,
  RESUMABLE_CHANGES aside, and the checkpoint must not be past this run's
  end (`given`: the config before the data's fields were filled in)."""
  def target(saved_config: Config) -> dict:
    changed, derived = incompatible_changes(saved_config, setup.config, given)
    if changed or derived:
      raise TrainingError(refused_resume_message(workdir, changed, derived))
    return fresh.to_dict()

  restored = checkpoint.restore_latest_good(workdir, target,
                                            skip_unreadable=True, say=say)
  if restored is None:
    return None
  state = TrainState.from_dict(restored.state)
  step, total = int(state.step), setup.total_steps
  if step > total:
    # Resuming would train nothing and report the longer run's step as if it
    # were this one's.
    train = setup.config.train
    length = (f"train.num_steps={train.num_steps}" if train.num_steps
              else f"train.num_epochs={train.num_epochs}")
    raise TrainingError(
        f"{workdir} is at step {step}, past this run's end at step {total} "
        f"({length}); nothing was changed: evaluate it with "
        f"`{eval_command(workdir)}`, or train longer with "
        f"train.num_steps above {step}")
  say(f"resuming from checkpoint step {step} in {workdir}")
  return state


class _Loop:
  """One training run's loop state: the replicated train state, its feed and
  accumulator, the eval data, the writers and the clock."""

  def __init__(self, setup: Setup, workdir: str, state: TrainState, say,
               is_main: bool, stop: _StopFlag):
    config = setup.config
    self.setup, self.workdir, self.say, self.stop = setup, workdir, say, stop
    self.manager = checkpoint.make_manager(workdir,
                                           keep=config.train.keep_checkpoints)
    if is_main:
      pathlib.Path(workdir, "config.json").write_text(config.to_json())
    self.step = self.start_step = int(state.step)
    local = setup.local_devices
    self.state_r = parallel.replicate(state, local)
    epoch = setup.steps.data_epoch_of(self.step)
    self.feed = TrainFeed.place(
        setup, epoch, self.host_scores() if setup.steps.pruned(epoch) else None)
    self.acc = self.feed.accumulator()
    # (steps per call, stem frozen, crop side, frozen blocks) -> compiled
    # train_fn.
    self.train_fns: dict[tuple, Any] = {}
    # The evaluator of `python -m jaxcnn.eval` too: it prints these figures.
    self.test_eval = Evaluator(
        setup.model, config, setup.devices, setup.data.test_images,
        setup.data.test_labels, batch_size=config.train.eval_batch_size)
    # The validation split (data.validation_size > 0), evaluated beside the
    # test split; the best checkpoint (WORKDIR/best) is chosen on it.
    self.val_eval = self.best_manager = self.best_value = None
    if len(setup.data.validation_labels):
      self.val_eval = Evaluator(
          setup.model, config, setup.devices, setup.data.validation_images,
          setup.data.validation_labels,
          batch_size=config.train.eval_batch_size)
      self.best_manager = checkpoint.make_best_manager(workdir)
      self.best_value = max(checkpoint.best_values(workdir).values(),
                            default=None)
    self.stats_fn = None
    if config.train.collect_stats:
      from jaxcnn import stats  # Only built when asked for: no cost otherwise.
      self.stats_fn = stats.StatsCollector(setup)
    self.writer = reporting.MetricWriter(workdir, enabled=is_main)
    self.progress = reporting.Progress(
        setup.total_steps, self.step,
        enabled=is_main and config.train.progress_bar)
    if is_main:  # Status lines go above the bar, not onto its line.
      self.say = self.progress.write
    # On XLA CPU, devices are threads of one pool: with many queued calls,
    # the all-reduce of one call waited for threads held by the next ones
    # until XLA's 40 s rendezvous timeout killed the process (seen with 4
    # fake devices on 2 cores). There a call starts once the previous one is
    # done; GPUs keep the asynchronous queue.
    self.one_call_in_flight = (setup.devices[0].platform == "cpu"
                               and setup.num_devices > 1)
    # Otherwise at most MAX_CALLS_IN_FLIGHT calls are queued: with JAX's
    # asynchronous dispatch the loop would run ahead to the next log, and a
    # SIGTERM would wait for all those steps (minutes on a CPU) before its
    # checkpoint. (The state and accumulator are donated, so the loop waits
    # on the newest call's output.)
    self.calls_queued = 0
    self.clock = _Clock()
    self.mark_log()
    # train.stop_at_train_error: reached (now, or by the run resumed: its
    # 'target' record at the restored step is under this run's target too)
    # means the run is complete.
    target = config.train.stop_at_train_error
    self.target_reached = target > 0 and any(
        r["step"] == self.step and r["train_error"] <= target
        for r in reporting.read_metrics(workdir, "target"))
    self.result = None
    self.timing = None
    self.say(f"training {config.model.name} on {setup.data.source}: "
             f"{len(setup.data.train_labels)} train / "
             + (f"{len(setup.data.validation_labels)} validation / "
                if self.val_eval is not None else "")
             + f"{len(setup.data.test_labels)} test images, "
             f"{setup.num_devices} {setup.devices[0].platform} device(s), "
             f"batch {config.train.batch_size}, {setup.steps_per_epoch} "
             f"steps/epoch, steps {self.step}->{setup.total_steps}")
    if self.target_reached:
      self.say(f"step {self.step} reached train.stop_at_train_error="
               f"{config.train.stop_at_train_error:g} before: nothing to "
               "train")

  # --- Training ---------------------------------------------------------------

  def dispatch(self) -> None:
    """Runs the next train_fn call: steps_per_dispatch steps (one at a time
    near the end, so the run stops exactly at total_steps)."""
    setup, step = self.setup, self.step
    n = setup.config.train.steps_per_dispatch
    frozen_from = setup.stem_frozen_from
    if step + n > setup.total_steps or any(
        s is not None and step < s < step + n
        for s in (frozen_from, setup.small_crop_until, setup.first_crop_until,
                  setup.steps.dispatch_end(step), *setup.frozen_blocks_from)):
      # Stop exactly at the end, at the steps the stem and the blocks
      # freeze, at the steps the crops grow (to the next stage, to the whole
      # image) and before a pruned data epoch.
      n = 1
    key = (n, frozen_from is not None and step >= frozen_from,
           setup.crop_size_at(step), setup.frozen_blocks_at(step))
    epoch = setup.steps.data_epoch_of(step)
    if (setup.steps.pruned(epoch)
        and step == setup.steps.data_epoch_start(epoch)):
      self.start_pruned_epoch(epoch)
    self.feed.at_epoch(epoch)
    if key not in self.train_fns:
      self.train_fns[key] = make_train_fn(setup, *key)
    t0 = time.time()
    if self.one_call_in_flight or self.calls_queued >= MAX_CALLS_IN_FLIGHT:
      jax.block_until_ready(self.state_r.step)
      self.calls_queued = 0
    self.state_r, self.acc = self.train_fns[key](self.state_r, self.acc,
                                                 *self.feed.inputs())
    self.calls_queued += 1
    self.step += n
    if self.clock.first_call is None:  # It compiled: time it apart.
      jax.block_until_ready(self.acc)
      self.clock.first_call_done(time.time() - t0, n)
      self.progress.exclude(time.time() - t0)  # The bar's rate: steps only.
      self.say(f"compiled and ran the first step in {time.time() - t0:.1f}s")
      self.mark_log()

  def host_scores(self) -> np.ndarray:
    """The loss table that chose the current data epoch's images."""
    return np.asarray(parallel.unreplicate(self.state_r.example_loss["scores"]))

  def start_pruned_epoch(self, epoch: int) -> None:
    """At the first step of a pruned data epoch: the loss table as it stands
    becomes the epoch's scores (in the state, so a resumed run picks the
    same images; doing it twice changes nothing) and picks its images."""
    setup = self.setup
    loss = np.asarray(parallel.unreplicate(self.state_r.example_loss["loss"]))
    self.state_r = self.state_r.replace(example_loss={
        "loss": self.state_r.example_loss["loss"],
        "scores": parallel.replicate(loss, setup.local_devices)})
    self.feed.at_epoch(epoch, loss, force=True)
    steps, n = setup.steps, len(loss)
    kept_loss = np.sort(loss)[n - steps.kept:]
    threshold = float(kept_loss[0])
    unseen = int(np.sum(np.isinf(loss)))
    self.writer.write("prune", self.step, data_epoch=epoch, kept=steps.kept,
                      of=n, steps=steps.pruned_steps,
                      threshold=threshold if np.isfinite(threshold) else None,
                      never_trained=unseen)
    self.say(f"step {self.step}: data epoch {epoch} trains on the "
             f"{steps.kept} of {n} images of highest loss (>= "
             f"{threshold:.4g}; {unseen} never trained on) in "
             f"{steps.pruned_steps} steps")

  def between_dispatches(self, prev: int) -> None:
    """Logs, collects statistics, saves, evaluates and stops when due.

    A signal (self.stop) saves and stops: before the step's evaluation or
    during it (between its batches). At the end of training the checkpoint
    is written first, so a signal during the final evaluation (train.
    final_tta's can take minutes) leaves a complete, saved run."""
    train, step = self.setup.config.train, self.step
    spe = self.setup.steps_per_epoch
    at_end = step >= self.setup.total_steps
    log = _crossed(prev, step, train.log_every_steps) or at_end
    if not (log or at_end or self.stop.signum is not None
            or _crossed(prev, step, train.eval_every_epochs * spe)
            or _crossed(prev, step, train.checkpoint_every_steps)):
      return
    acc_host = jax.tree.map(np.asarray, parallel.unreplicate(self.acc))
    self.check_finite(acc_host)
    if log:
      error = self.log(acc_host)
      if (train.stop_at_train_error > 0 and error is not None
          and error <= train.stop_at_train_error):
        # The target is reached: this step is the run's end.
        self.writer.write("target", step, train_error=error,
                          stop_at_train_error=train.stop_at_train_error,
                          epoch=step / spe)
        self.say(f"step {step} (epoch {step / spe:.2f}): training error "
                 f"{error:.2%} <= train.stop_at_train_error="
                 f"{train.stop_at_train_error:g}: training ends here")
        self.target_reached = at_end = True
      self.collect_stats()
    evaluate = at_end or _crossed(prev, step, train.eval_every_epochs * spe)
    save = (at_end or self.stop.signum is not None
            or _crossed(prev, step, train.checkpoint_every_steps))
    if at_end:
      self.timing = self.clock.training_seconds(
          step - self.start_step - self.clock.first_call["steps"])
      if self.timing is not None:
        # from_step: where this process started (a resumed run's timing
        # covers only its own steps).
        self.writer.write("timing", step, from_step=self.start_step,
                          **self.timing)
    if save:
      with self.paused():
        self.save()
    if evaluate and self.stop.signum is None:
      try:
        self.evaluate(at_end)
      except _EvaluationStopped:
        pass
    signum = self.stop.signum
    if signum is None:
      return
    if not save:  # The signal came during the evaluation.
      with self.paused():
        self.save()
    checkpoint.wait(self.manager)
    if at_end:
      raise self.finished_interrupt(signum)
    raise Interrupted(
        f"{signal.Signals(signum).name}: stopped at step {step} after "
        "writing a checkpoint; run the same command to resume", signum)

  def finished_interrupt(self, signum: int,
                         evaluated: bool = False) -> Interrupted:
    """The stop of a run whose training is done and saved: how to evaluate
    it instead of waiting (`evaluated`: the evaluation had ended, printed)."""
    train = self.setup.config.train
    tta = train.final_tta
    how = f"`{eval_command(self.workdir)}`"
    if tta != "none":
      how += (" (with train.final_tta's test-time augmentation: "
              f"`{eval_command(self.workdir, tta, train.final_tta_fraction)}`)")
    stopped = ("its evaluation is printed above; evaluate it again with"
               if evaluated else "the evaluation was stopped. Evaluate it with")
    return Interrupted(
        f"{signal.Signals(signum).name}: training is complete and its final "
        f"checkpoint (step {self.step}) is saved in {self.workdir}; "
        f"{stopped} {how}", signum)

  @contextlib.contextmanager
  def paused(self):
    """Time that is not training: out of the training seconds and out of the
    progress bar's rate."""
    with self.clock.paused(), self.progress.paused():
      yield

  def run_eval(self, what: str, evaluator: Evaluator | None = None,
               tta: str = "none", weights: tuple[str, ...] = WEIGHTS) -> dict:
    """The figures of `weights` (default raw and EMA) under `evaluator`
    (default: the test split's) with progress over its batches (one weight
    set after the other) when the bar is on; a signal stops it between
    batches (_EvaluationStopped)."""
    evaluator = self.test_eval if evaluator is None else evaluator
    fraction = self.setup.config.train.final_tta_fraction
    batches = evaluator.pass_batches(tta, fraction)
    offset = {name: i * batches for i, name in enumerate(weights)}
    bar = self.progress.sub_bar(what, len(weights) * batches)

    def before_batch(name, done, total):
      if self.stop.signum is not None:
        raise _EvaluationStopped
      bar.update(offset[name] + done)

    try:
      return evaluator(self.state_r, weights, tta=tta,
                       before_batch=before_batch, replicated=True,
                       tta_fraction=fraction)
    finally:
      bar.close()

  # --- Between dispatches -----------------------------------------------------

  def check_finite(self, acc_host: dict) -> None:
    bad = int(acc_host["bad_step"])
    if bad != NO_BAD_STEP:
      saved = checkpoint.saved_steps(self.workdir)
      raise TrainingError(
          f"non-finite loss or gradient at step {bad} (lr "
          f"{float(self.setup.schedule(bad - 1)):.4g}); stopped without "
          f"saving; last good checkpoint: {saved[-1] if saved else 'none'}")

  def log(self, acc_host: dict) -> float | None:
    """Writes the mean train metrics since the last log; resets them.
    Returns the training error logged (None: nothing to log)."""
    if acc_host["count"] <= 0:
      return None
    step, batch = self.step, self.setup.config.train.batch_size
    # Training time only: less evaluation, statistics and saving since.
    seconds = max(time.time() - self.last_log_time
                  - (self.clock.excluded - self.excluded_at_log), 1e-9)
    steps_done = max(step - self.last_log_step, 1)
    metrics = {
        "loss": float(acc_host["loss_sum"] / acc_host["count"]),
        "accuracy": float(acc_host["correct"] / acc_host["count"]),
        "grad_norm": float(acc_host["grad_norm_sum"] / acc_host["steps"]),
        "learning_rate": float(self.setup.schedule(step - 1)),
        "examples_per_sec": steps_done * batch / seconds,
        "sec_per_batch": seconds / steps_done,
        "epoch": step / self.setup.steps_per_epoch,
    }
    self.writer.write("train", step, **metrics)
    self.progress.update(step, loss=metrics["loss"], acc=metrics["accuracy"],
                         img_s=round(metrics["examples_per_sec"]))
    self.acc = self.feed.accumulator()
    self.mark_log()
    return 1.0 - metrics["accuracy"]

  def mark_log(self) -> None:
    """The start of the next log interval: now."""
    self.last_log_step, self.last_log_time = self.step, time.time()
    self.excluded_at_log = self.clock.excluded

  def collect_stats(self) -> None:
    if self.stats_fn is not None:
      with self.paused():
        self.writer.write("stats", self.step, **self.stats_fn(self.state_r))

  def evaluate(self, at_end: bool) -> None:
    """Test (and validation) accuracy of the raw and EMA weights (and with
    train.final_tta at the end); the result is what train_and_evaluate
    returns. Each metric's name starts with its split: test_accuracy_raw,
    validation_accuracy_raw, ..."""
    step, spe = self.step, self.setup.steps_per_epoch
    with self.paused():
      results = self.run_eval(f"evaluating step {step}")
      splits = {"test": results}
      if self.val_eval is not None:
        splits["validation"] = self.run_eval(
            f"evaluating step {step} (validation)", self.val_eval)
      self.writer.write(
          "eval", step, epoch=step / spe,
          **{f"{split}_{k}_{w}": r[w][k] for split, r in splits.items()
             for w in ("raw", "ema")
             for k in ("accuracy", "loss", "top5_accuracy")})
      self.progress.write(
          f"step {step} (epoch {step / spe:.1f}): " + ", ".join(
              f"{split} accuracy raw {r['raw']['accuracy']:.2%}, EMA "
              f"{r['ema']['accuracy']:.2%}" for split, r in splits.items()))
      self.result = {"step": step, **results}
      if "validation" in splits:
        self.result["validation"] = splits["validation"]
        self.save_if_best(splits["validation"]["raw"]["accuracy"])
      if at_end and self.setup.config.train.final_tta != "none":
        self.result["tta"] = self.evaluate_tta()

  def save_if_best(self, value: float) -> None:
    """Writes WORKDIR/best when `value` (checkpoint.BEST_METRIC) beats every
    evaluation so far, of this process and of the runs it resumes."""
    if self.best_value is not None and value <= self.best_value:
      return
    state = jax.device_get(parallel.unreplicate(self.state_r).to_dict())
    checkpoint.save_best(self.best_manager, self.step, state,
                         self.setup.config, value)
    self.best_value = value

  def evaluate_tta(self) -> dict:
    """The final evaluation with train.final_tta, logged as kind 'eval_tta':
    raw and EMA weights, and their ensemble with train.final_tta_ensemble,
    each weight set's wall seconds apart (its compile included)."""
    setup, step = self.setup, self.step
    train = setup.config.train
    tta, fraction = train.final_tta, train.final_tta_fraction
    label = tta if fraction == 1 else f"{tta} on the {fraction:.0%} least " \
        "confident"
    names = ALL_WEIGHTS if train.final_tta_ensemble else WEIGHTS
    results, seconds = {}, {}
    for i, name in enumerate(names):
      t0 = time.time()
      results.update(self.run_eval(
          f"evaluating with TTA ({label}), {name} "
          f"({i + 1}/{len(names)})", tta=tta, weights=(name,)))
      seconds[name] = time.time() - t0
    # Raw and EMA together, as before the ensemble.
    both = seconds["raw"] + seconds["ema"]
    self.writer.write(
        "eval_tta", step, tta=tta, tta_fraction=fraction, seconds=both,
        **{f"seconds_{w}": seconds[w] for w in names},
        **{f"test_{k}_{w}": results[w][k] for w in names
           for k in ("accuracy", "loss", "top5_accuracy")})
    self.say(f"step {step}: test accuracy with TTA ({label}) raw "
             f"{results['raw']['accuracy']:.2%}, EMA "
             f"{results['ema']['accuracy']:.2%}" + (
                 f", raw + EMA ensemble {results[ENSEMBLE]['accuracy']:.2%}"
                 if ENSEMBLE in results else ""))
    return {"mode": tta, "fraction": fraction, "seconds": both, **results}

  def save(self) -> None:
    # What the metrics say is on disk with the checkpoint (a SIGKILL loses
    # neither).
    self.writer.flush()
    # Host (numpy) copies: every process passes the same values and orbax's
    # primary process writes them, whatever the device count.
    checkpoint.save(self.manager, self.step,
                    jax.device_get(parallel.unreplicate(self.state_r).to_dict()),
                    self.setup.config)

  def close(self) -> None:
    try:
      checkpoint.wait(self.manager)
    finally:
      self.manager.close()
      if self.best_manager is not None:
        self.best_manager.close()
      self.progress.close()
      self.writer.close()

  def final_result(self) -> dict:
    """The last evaluation (made now if there was nothing left to train),
    with the training seconds; both printed."""
    result = self.result
    if result is None:
      try:
        result = {"step": self.step, **self.run_eval(
            f"evaluating step {self.step}")}
        if self.val_eval is not None:
          result["validation"] = self.run_eval(
              f"evaluating step {self.step} (validation)", self.val_eval)
      except _EvaluationStopped:
        raise self.finished_interrupt(self.stop.signum) from None
    timing = self.timing
    if timing is not None:
      result.update(timing)
      steps = self.step - self.start_step
      self.say(
          f"training time {timing['train_seconds']:.1f}s for {steps} steps "
          f"(compile {timing['compile_seconds']:.1f}s, evaluation and "
          "checkpoints excluded)" if timing["compile_seconds"] is not None
          else f"training time {timing['train_seconds']:.1f}s, compile "
          "included")
    self.say(f"final: step {result['step']}, test accuracy raw "
             f"{result['raw']['accuracy']:.2%}, EMA "
             f"{result['ema']['accuracy']:.2%} on {result['raw']['count']} "
             "images")
    if "validation" in result:
      val = result["validation"]
      self.say(f"final: validation accuracy raw {val['raw']['accuracy']:.2%}, "
               f"EMA {val['ema']['accuracy']:.2%} on {val['raw']['count']} "
               "images")
    return result


class _Clock:
  """Training seconds: wall time from the end of the first call (which
  compiles) to the last step, less the time `paused()` (evaluation,
  statistics, checkpoint writing)."""

  def __init__(self):
    self.first_call: dict | None = None  # {'seconds', 'steps'}
    self.start: float | None = None
    self.excluded = 0.0

  def first_call_done(self, seconds: float, steps: int) -> None:
    self.first_call = {"seconds": seconds, "steps": steps}
    self.start = time.time()

  @contextlib.contextmanager
  def paused(self):
    t0 = time.time()
    try:
      yield
    finally:
      self.excluded += time.time() - t0

  def training_seconds(self, steps_after_first: int) -> dict | None:
    if self.start is None:
      return None
    return _training_seconds(self.first_call,
                             time.time() - self.start - self.excluded,
                             steps_after_first)


def _training_seconds(first_call: dict, wall_after_first: float,
                      steps_after_first: int) -> dict:
  """Training and compile seconds: the steps after the first call took
  `wall_after_first`; the first call's steps are counted at their mean, and
  the rest of the first call is compilation. Without later steps the first
  call's time is all we have (compile unknown: None)."""
  if steps_after_first <= 0:
    return {"train_seconds": first_call["seconds"], "compile_seconds": None}
  per_step = wall_after_first / steps_after_first
  first_steps = first_call["steps"] * per_step
  return {"train_seconds": wall_after_first + first_steps,
          "compile_seconds": max(first_call["seconds"] - first_steps, 0.0)}
