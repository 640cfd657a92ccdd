"""Training and eval throughput of jaxcnn's real step, beside PyTorch.

    python -m benchmarks.throughput --model vgg16 --batch 128
    python -m benchmarks.throughput --model alexnet --repeats 5 --json

Times the step that `python -m jaxcnn.train` runs (steps.make_train_fn: the
pmap'd step with the on-device gather from the resident dataset, random crop
and flip, normalisation, loss, pmean, the whole optax chain with the EMA of
the parameters and of the BatchNorm statistics), after compilation, on
synthetic data, single device. Then, in the same process and interleaved
with it, the same architecture and optimizer in PyTorch (optional: `pip
install -r requirements-bench.txt`). PyTorch gets a fixed batch already on the
device, no augmentation: the optimistic case for it.

Prints images/s, ms/step, compile time, eval images/s, the cost of the input
part of the step (gather + crop/flip + normalise, timed alone), FLOPs per
image and, on a GPU it knows the peak of, model FLOPs utilisation. With
`--repeats R` the two frameworks take turns R times and the ratio is given as
median and min..max over the turns. `--json` prints one JSON object instead.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

from jaxcnn import config as config_lib, eval_step, optim, parallel, pipeline, steps
from jaxcnn import state as state_lib
from jaxcnn.data import make_synthetic
from jaxcnn.models import cpu_kernels, forward_flops

# name -> (experiment, config overrides). The experiments' own recipes, so
# the optimizer chain is the one their training runs use.
MODELS = {
    "vgg11": ("vgg", ["model.vgg.depth=11"]),
    "vgg13": ("vgg", ["model.vgg.depth=13"]),
    "vgg16": ("vgg", ["model.vgg.depth=16"]),
    "vgg19": ("vgg", ["model.vgg.depth=19"]),
    "alexnet": ("alexnet", []),
    "speednet": ("speedrun_airbench94", []),  # airbench94's recipe (batch 1024).
    "tiny": ("test", []),  # For smoke tests: milliseconds per step.
}

# Dense peak TFLOP/s by (chip, math). float32 convs and matmuls run as TF32
# on these chips by default in both XLA and cuDNN, so fp32 MFU is quoted
# against the TF32 peak (and against plain fp32 as well). H200 is the H100
# chip with more memory. Source: docs/anchors.md (NVIDIA datasheets).
PEAK_TFLOPS = {
    "h100": {"bfloat16": 989.0, "tf32": 495.0, "float32": 67.0},
    "h100 pcie": {"bfloat16": 756.0, "tf32": 378.0, "float32": 51.0},
}


# --- Set-up -------------------------------------------------------------------


def make_config(model: str, batch: int, dtype: str, steps_per_dispatch: int,
                train_size: int, overrides: list[str]) -> config_lib.Config:
  exp, model_overrides = MODELS[model]
  c = config_lib.load_experiment(exp)
  return config_lib.apply_overrides(c, model_overrides + [
      "data.source=synthetic",
      f"data.synthetic_train_size={train_size}",
      "data.synthetic_test_size=16",
      f"model.dtype={dtype}",
      f"train.batch_size={batch}",
      "train.num_devices=1",
      f"train.steps_per_dispatch={steps_per_dispatch}",
      # Long enough that no schedule runs out while timing.
      "train.num_steps=1000000",
  ] + overrides)


def peak_flops(device, dtype: str) -> dict[str, float] | None:
  """{'math': TFLOP/s} for a GPU we know, None elsewhere."""
  kind = device.device_kind.lower()
  if device.platform != "gpu" or not ("h100" in kind or "h200" in kind):
    return None
  chip = "h100 pcie" if "pcie" in kind else "h100"
  peaks = PEAK_TFLOPS[chip]
  if dtype == "bfloat16":
    return {"bfloat16": peaks["bfloat16"]}
  return {"tf32": peaks["tf32"], "float32": peaks["float32"]}


# --- The JAX side -------------------------------------------------------------


@dataclasses.dataclass
class JaxBench:
  """The real train step, its eval step and its input part, ready to time."""
  setup: state_lib.Setup
  steps_per_call: int
  train_fn: Callable
  state: Any
  acc: Any
  feed: steps.TrainFeed
  compile_s: float  # First call less one steady dispatch.
  first_call_s: float

  @classmethod
  def create(cls, config: config_lib.Config) -> "JaxBench":
    data = make_synthetic(config.data.synthetic_train_size,
                          config.data.synthetic_test_size, seed=config.seed)
    setup = state_lib.build(config, data=data)
    k = setup.config.train.steps_per_dispatch
    # Jitted: op by op, a VGG init takes longer than its compile.
    state = parallel.replicate(
        jax.jit(lambda: state_lib.create_train_state(setup))(), setup.devices)
    feed = steps.TrainFeed.place(setup)
    acc = feed.accumulator()
    # With data.small_crop_* (or first_crop_*) set (--set), the step of a
    # run's first, cheapest steps.
    train_fn = steps.make_train_fn(setup, k, crop_size=setup.crop_size_at(0))
    # The first call traces, compiles and runs one dispatch; the compile time
    # reported is that minus a steady dispatch (set once the timing is done).
    t0 = time.perf_counter()
    state, acc = train_fn(state, acc, *feed.inputs())
    jax.block_until_ready(acc)
    first_call_s = time.perf_counter() - t0
    return cls(setup, k, train_fn, state, acc, feed, first_call_s,
               first_call_s)

  def run(self, calls: int) -> float:
    """Seconds for `calls` dispatches (of steps_per_call steps each),
    back to back as the training loop issues them."""
    t0 = time.perf_counter()
    for _ in range(calls):
      # The step donates state and accumulator: rebind them every call.
      self.state, self.acc = self.train_fn(self.state, self.acc,
                                           *self.feed.inputs())
    jax.block_until_ready((self.state, self.acc))
    return time.perf_counter() - t0

  def check_finite(self) -> None:
    acc = jax.tree.map(np.asarray, parallel.unreplicate(self.acc))
    if int(acc["bad_step"]) != steps.NO_BAD_STEP:
      raise RuntimeError(f"non-finite loss at step {int(acc['bad_step'])}")

  def input_fn(self) -> Callable[[], Any]:
    """The data part of the step alone: pipeline.train_batch, as the step
    calls it, for one step's batch. Timed on its own it must write its
    output, which inside the step may fuse into the first conv, so its share
    is an upper bound."""
    setup = self.setup

    def data_part(train_x, train_y, perm2, step):
      return pipeline.train_batch(setup, train_x, train_y, perm2, step, 0,
                                  jax.lax.axis_index(parallel.AXIS))

    fn = jax.pmap(data_part, axis_name=parallel.AXIS, devices=setup.devices)
    step = parallel.replicate(np.int32(3), setup.devices)
    return lambda: fn(*self.feed.inputs(), step)

  def eval_fn(self, batches: int) -> tuple[Callable[[], Any], int]:
    """The trainer's eval step over `batches` train-sized batches."""
    setup = self.setup
    batch = setup.config.train.batch_size
    n = batch * batches
    images = np.resize(setup.data.train_images, (n,) + setup.data.image_shape)
    labels = np.resize(setup.data.train_labels, (n,))
    evaluator = eval_step.Evaluator(setup.model, setup.config, setup.devices,
                                    images, labels, batch_size=batch)
    variables = state_lib.variables_of(self.state, "raw")
    return (lambda: evaluator.totals(variables)), n


def time_calls(fn: Callable[[], Any], calls: int) -> float:
  """Seconds per call after one warm-up call."""
  jax.block_until_ready(fn())
  t0 = time.perf_counter()
  for _ in range(calls):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / calls


# --- The PyTorch side ---------------------------------------------------------


class TorchBench:
  """The same model and optimizer chain in PyTorch on a fixed batch."""

  def __init__(self, config: config_lib.Config, device_kind: str,
               threads: int, channels_last: bool | None):
    import torch
    from benchmarks import torch_models
    self.torch = torch
    torch.set_num_threads(threads)
    on_gpu = device_kind == "gpu"
    if on_gpu and not torch.cuda.is_available():
      raise RuntimeError("JAX runs on a GPU but this PyTorch has no CUDA")
    self.device = torch.device("cuda" if on_gpu else "cpu")
    if on_gpu:
      torch.backends.cudnn.benchmark = True
    m = config.model
    module = torch_models.create(m.name, depth=m.vgg.depth,
                                 num_classes=m.num_classes, dropout=m.dropout,
                                 widths=tuple(round(w * m.width) for w in
                                              m.speednet.widths),
                                 bn_momentum=m.bn_momentum)
    # NHWC suits oneDNN and cuDNN tensor cores both; measured faster on this
    # 2-core CPU for both models (docs/performance.md).
    self.channels_last = True if channels_last is None else channels_last
    fmt = (torch.channels_last if self.channels_last
           else torch.contiguous_format)
    self.module = module.to(self.device).to(memory_format=fmt)
    o = config.optim
    b = config.train.batch_size
    # The mirror has one SGD for every group (the recipes' groups differ in
    # their weight decay only); the decayed group's regex filters the decay.
    names = {g.optimizer for g in o.groups}
    if len(names) != 1 or not names <= {"sgd", "momentum", "nesterov"}:
      raise ValueError(f"no PyTorch mirror for the groups' optimizers "
                       f"{sorted(names)}")
    last = o.groups[-1]
    name = last.optimizer
    momentum = last.momentum if name in ("momentum", "nesterov") else 0.0
    lr, _ = optim.step_hparams(optim.group_schedule_config(o, last), b)
    decayed = [g for g in o.groups if g.weight_decay > 0]
    weight_decay = optim.step_hparams(
        optim.group_schedule_config(o, decayed[0]), b)[1] if decayed else 0.0
    self.opt = torch_models.Optimizer(
        self.module, lr=lr, momentum=momentum,
        nesterov=name == "nesterov", weight_decay=weight_decay,
        decay_filter=decayed[0].match if decayed else "(?!)",
        ema_decay=o.ema_decay)
    self.label_smoothing = float(config.train.label_smoothing)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, 32, 32, generator=gen)
    self.x = x.to(self.device).contiguous(memory_format=fmt)
    self.y = torch.randint(0, m.num_classes, (b,), generator=gen).to(
        self.device)
    self.bf16 = m.dtype == "bfloat16"

  def _autocast(self):
    if not self.bf16:
      return contextlib.nullcontext()
    return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16)

  def _sync(self):
    if self.device.type == "cuda":
      self.torch.cuda.synchronize()

  def step(self):
    self.module.train()
    self.opt.zero_grad()
    with self._autocast():
      logits = self.module(self.x)
    loss = self.torch.nn.functional.cross_entropy(
        logits.float(), self.y, label_smoothing=self.label_smoothing)
    loss.backward()
    self.opt.step()
    return loss

  def run(self, steps: int) -> float:
    self._sync()
    t0 = time.perf_counter()
    for _ in range(steps):
      loss = self.step()
    self._sync()
    elapsed = time.perf_counter() - t0
    if not bool(self.torch.isfinite(loss)):
      raise RuntimeError("PyTorch loss is not finite")
    return elapsed

  def eval_seconds_per_batch(self, calls: int) -> float:
    self.module.eval()
    with self.torch.no_grad(), self._autocast():
      self.module(self.x)
      self._sync()
      t0 = time.perf_counter()
      for _ in range(calls):
        self.module(self.x)
      self._sync()
    return (time.perf_counter() - t0) / calls


# --- Running it ---------------------------------------------------------------


def spread(values: list[float]) -> dict:
  return {"median": statistics.median(values), "min": min(values),
          "max": max(values), "all": values}


def benchmark(args) -> dict:
  config = make_config(args.model, args.batch, args.dtype,
                       args.steps_per_dispatch, args.train_size, args.set)
  device = jax.devices()[0]
  k = args.steps_per_dispatch
  calls = max(1, -(-args.steps // k))  # Whole dispatches covering --steps.
  steps = calls * k
  batch = args.batch
  # Progress goes to stderr whatever the output format, so a long run shows
  # where it is while stdout stays one JSON object.
  say = lambda *a: print(*a, file=sys.stderr, flush=True)
  load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

  say(f"{args.model} batch {batch} {args.dtype}, {steps} steps x "
      f"{args.repeats} repeats on {device.device_kind} ({device.platform})")
  if not args.cpu_paths:
    cpu_kernels.CPU_PATHS = False  # Read when the step is traced, below.
  bench = JaxBench.create(config)
  say(f"jax: first call (compile + one dispatch) {bench.first_call_s:.1f}s")
  torch_bench = None
  torch_error = None
  if not args.no_torch and args.model in ("vgg11", "vgg13", "vgg16", "vgg19",
                                          "alexnet", "speednet"):
    try:
      torch_bench = TorchBench(bench.setup.config, device.platform,
                               args.threads, args.channels_last)
    except Exception as e:  # Optional: report and go on with JAX alone.
      torch_error = f"{type(e).__name__}: {e}"
      say(f"torch: skipped ({torch_error})")

  # Warm-up: caches, allocator, and on GPU autotuning, outside the timing.
  bench.run(max(1, -(-args.warmup // k)))
  if torch_bench is not None:
    torch_bench.run(max(1, args.warmup))

  jax_ips, torch_ips, ratios = [], [], []
  for r in range(args.repeats):
    jax_ips.append(steps * batch / bench.run(calls))
    line = f"repeat {r + 1}: jax {jax_ips[-1]:.1f} img/s"
    if torch_bench is not None:
      torch_ips.append(steps * batch / torch_bench.run(steps))
      ratios.append(jax_ips[-1] / torch_ips[-1])
      line += f", torch {torch_ips[-1]:.1f} img/s, ratio {ratios[-1]:.2f}"
    say(line)
  bench.check_finite()

  data_s = time_calls(bench.input_fn(), max(3, args.steps))
  step_s = batch / statistics.median(jax_ips)
  bench.compile_s = max(0.0, bench.first_call_s - k * step_s)
  eval_ips = None
  if args.eval_calls > 0:
    eval_fn, eval_images = bench.eval_fn(args.eval_batches)
    eval_ips = eval_images / time_calls(eval_fn, args.eval_calls)

  fwd = forward_flops(bench.setup.model, bench.setup.data.image_shape)
  train_flops = 3 * fwd  # Forward, and twice that for the backward pass.
  result = {
      "model": args.model, "batch": batch, "dtype": args.dtype,
      "steps_per_dispatch": k, "timed_steps": steps, "repeats": args.repeats,
      "device": device.device_kind, "platform": device.platform,
      "jax_version": jax.__version__,
      "cpu_threads": args.threads if device.platform == "cpu" else None,
      "cpu_paths": args.cpu_paths,
      # Which XLA CPU kernels ran the convolutions (cpu_kernels docstring).
      "cpu_convs": (("ynnpack" if cpu_kernels.cpu_convs_use_ynnpack()
                     else "eigen")
                    if device.platform == "cpu" else None),
      "conv_impl": config.model.conv_impl,
      # Other processes on the machine slow both sides, PyTorch's OpenMP
      # threads the more: read the ratios with the load beside them.
      "load_average_1min": [load_before, os.getloadavg()[0]
                            if hasattr(os, "getloadavg") else None],
      "flops_per_image_forward": fwd, "flops_per_image_train": train_flops,
      "jax": {
          "train_images_per_s": spread(jax_ips),
          "train_ms_per_step": 1e3 * step_s,
          "compile_s": bench.compile_s,
          "first_call_s": bench.first_call_s,
          "eval_images_per_s": eval_ips,
          "input_ms_per_step": 1e3 * data_s,
          "input_share_of_step": data_s / step_s,
      },
  }
  peaks = peak_flops(device, args.dtype)
  if peaks:
    ips = statistics.median(jax_ips)
    result["jax"]["mfu"] = {m: ips * train_flops / (p * 1e12)
                            for m, p in peaks.items()}
  if torch_bench is not None:
    t_eval = (torch_bench.eval_seconds_per_batch(args.eval_calls)
              if args.eval_calls > 0 else None)
    import torch
    result["torch"] = {
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "channels_last": torch_bench.channels_last,
        "train_images_per_s": spread(torch_ips),
        "train_ms_per_step": 1e3 * batch / statistics.median(torch_ips),
        "eval_images_per_s": batch / t_eval if t_eval else None,
        "note": "fixed batch on the device, no augmentation",
    }
    if peaks:
      result["torch"]["mfu"] = {
          m: statistics.median(torch_ips) * train_flops / (p * 1e12)
          for m, p in peaks.items()}
    result["ratio_jax_over_torch"] = spread(ratios)
    # Each side's best repeat: the least disturbed by other processes.
    result["best_ratio_jax_over_torch"] = max(jax_ips) / max(torch_ips)
    if eval_ips and t_eval:
      result["eval_ratio_jax_over_torch"] = eval_ips * t_eval / batch
  elif torch_error:
    result["torch"] = {"error": torch_error}
  return result


def report(result: dict) -> str:
  """The human-readable summary; the ratio lines come last."""
  j = result["jax"]
  ips = j["train_images_per_s"]
  load = result["load_average_1min"]
  lines = [
      f"{result['model']} batch {result['batch']} {result['dtype']} on "
      f"{result['device']} (jax {result['jax_version']}), "
      f"{result['steps_per_dispatch']} step(s) per dispatch"
      + (f", {result['cpu_convs']} convs, CPU paths "
         f"{'on' if result['cpu_paths'] else 'off'}"
         if result["cpu_convs"] else "")
      + (f", load average {load[0]:.1f} -> {load[1]:.1f}"
         if load[0] is not None else ""),
      f"  FLOPs per image: {result['flops_per_image_forward'] / 1e9:.3f} G "
      f"forward, {result['flops_per_image_train'] / 1e9:.3f} G train step",
      f"  jax   train {ips['median']:8.1f} img/s (min {ips['min']:.1f}, max "
      f"{ips['max']:.1f}), {j['train_ms_per_step']:.1f} ms/step, compile "
      f"{j['compile_s']:.1f} s",
  ]
  if j["eval_images_per_s"]:
    lines.append(f"  jax   eval  {j['eval_images_per_s']:8.1f} img/s")
  lines.append(
      f"  jax   input part alone {j['input_ms_per_step']:.2f} ms/step = "
      f"{100 * j['input_share_of_step']:.1f}% of the step")
  if "mfu" in j:
    lines.append("  jax   MFU " + ", ".join(
        f"{100 * v:.1f}% of {m} peak" for m, v in j["mfu"].items()))
  t = result.get("torch")
  if t and "error" not in t:
    tips = t["train_images_per_s"]
    r = result["ratio_jax_over_torch"]
    lines.append(
        f"  torch train {tips['median']:8.1f} img/s (min {tips['min']:.1f}, "
        f"max {tips['max']:.1f}), {t['train_ms_per_step']:.1f} ms/step "
        f"[{t['note']}]")
    if t["eval_images_per_s"]:
      lines.append(f"  torch eval  {t['eval_images_per_s']:8.1f} img/s")
    if "mfu" in t:
      lines.append("  torch MFU " + ", ".join(
          f"{100 * v:.1f}% of {m} peak" for m, v in t["mfu"].items()))
    lines += [
        f"  ratio jax/torch train: {r['median']:.2f} (min {r['min']:.2f}, max "
        f"{r['max']:.2f} over {len(r['all'])} interleaved repeats; best vs "
        f"best {result['best_ratio_jax_over_torch']:.2f})",
    ]
    if "eval_ratio_jax_over_torch" in result:
      lines.append(f"  ratio jax/torch eval:  "
                   f"{result['eval_ratio_jax_over_torch']:.2f}")
  elif t:
    lines.append(f"  torch: {t['error']}")
  return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m benchmarks.throughput", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="vgg16", choices=sorted(MODELS))
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--steps", type=int, default=10,
                 help="timed train steps per repeat")
  p.add_argument("--warmup", type=int, default=2,
                 help="untimed steps after compilation")
  p.add_argument("--repeats", type=int, default=3,
                 help="alternate JAX and PyTorch timings this many times")
  p.add_argument("--steps_per_dispatch", type=int, default=1,
                 help="train steps per call (lax.scan), as "
                 "train.steps_per_dispatch")
  p.add_argument("--no-torch", "--no_torch", dest="no_torch",
                 action="store_true", help="time JAX only")
  p.add_argument("--train_size", type=int, default=0,
                 help="synthetic training images held on the device (default "
                 "4096, at least one epoch of 2 dispatches)")
  p.add_argument("--eval_batches", type=int, default=2,
                 help="batches per eval call")
  p.add_argument("--eval_calls", type=int, default=3,
                 help="timed eval calls (0: skip eval, saving its compile)")
  p.add_argument("--cpu_paths", type=int, choices=[0, 1], default=1,
                 help="0: plain select-and-scatter pool gradients and conv "
                 "kernel gradients (cpu_kernels.CPU_PATHS); with --set "
                 "model.conv_impl=xla and XLA_FLAGS=--xla_cpu_experimental_"
                 "ynn_fusion_type=+individual_convolution (YNNPACK convs), "
                 "close to the unoptimised model")
  p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                 help="PyTorch CPU threads (default: the cores XLA uses)")
  p.add_argument("--channels_last", type=int, choices=[0, 1], default=None,
                 help="PyTorch memory format (default: channels last)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="extra jaxcnn config override (repeatable)")
  p.add_argument("--json", action="store_true",
                 help="print one JSON object on stdout instead of text")
  args = p.parse_args(argv)
  if min(args.batch, args.steps, args.repeats, args.steps_per_dispatch) < 1:
    p.error("--batch, --steps, --repeats and --steps_per_dispatch must be >= 1")
  if args.train_size == 0:
    args.train_size = max(4096, 2 * args.batch * args.steps_per_dispatch)
  if args.channels_last is not None:
    args.channels_last = bool(args.channels_last)
  args.cpu_paths = bool(args.cpu_paths)
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  cpu_kernels.prefer_eigen_convolutions()  # Before XLA starts.
  result = benchmark(args)
  if args.json:
    print(json.dumps(result, indent=1))
  else:
    print(report(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
