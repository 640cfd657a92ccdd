"""jaxcnn.eval_step.Evaluator, the one evaluator of the trainer and of
`python -m jaxcnn.eval`: the eval command prints the figures training
logged, and both are those of a direct model apply; every image counts once
on any device count; progress between batches, and a stop."""
import json

import jax
import numpy as np
import pytest

from jaxcnn import augment, cli, config as config_lib, eval_step, reporting
from jaxcnn import parallel, restore, trainer
from jaxcnn import eval as eval_cli
from jaxcnn.data import load_from_config


def tiny_config(*overrides):
  return config_lib.apply_overrides(config_lib.load_experiment("test"),
                                    list(overrides))


def direct_logits(model, variables, config, images, tta="none"):
  """The logits of one plain model apply over the whole split (of the
  test-time augmentation's views), in float64."""
  mean = np.asarray(config.data.channel_mean, np.float32)
  std = np.asarray(config.data.channel_std, np.float32)
  x = augment.normalize(images, config.data.normalization, mean, std)
  return np.asarray(augment.tta_logits(
      lambda x: model.apply(variables, x, train=False), x, tta), np.float64)


def direct(model, variables, config, images, labels, tta="none",
           logits=None) -> dict:
  """The figures of `logits` (default: direct_logits), in float64."""
  if logits is None:
    logits = direct_logits(model, variables, config, images, tta)
  pred = logits.argmax(-1)
  top5 = np.argsort(-logits, axis=-1)[:, :5]
  shifted = logits - logits.max(-1, keepdims=True)
  logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  n = config.model.num_classes
  confusion = np.zeros((n, n), np.int64)
  np.add.at(confusion, (labels, pred), 1)
  return {"accuracy": np.mean(pred == labels),
          "top5_accuracy": np.mean((top5 == labels[:, None]).any(-1)),
          "loss": -np.mean(logp[np.arange(len(labels)), labels]),
          "confusion": confusion}


def run_eval_cli(capsys, *argv) -> dict:
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    cli.run_main(lambda: eval_cli.main(list(argv) + ["--json"]))
  assert exit_info.value.code == 0
  return json.loads(capsys.readouterr().out)


def test_eval_prints_what_training_logged_and_both_equal_direct_apply(
    tmp_path, capsys):
  assert len(jax.local_devices()) == 4
  workdir = str(tmp_path / "run")
  # 48 divides neither the 200 test nor the 100 validation images: the last
  # batch is padded.
  trainer.train_and_evaluate(tiny_config(
      "optim.groups.*.optimizer=adam", "optim.groups.*.lr=0.01",
      "train.num_steps=16", "train.eval_every_epochs=0",
      "data.validation_size=100", "train.final_tta=mirror",
      "train.eval_batch_size=48", "train.num_devices=4"), workdir)
  logged = reporting.read_metrics(workdir, "eval")[-1]
  logged_tta = reporting.read_metrics(workdir, "eval_tta")[-1]
  assert logged["step"] == logged_tta["step"] == 16
  report = run_eval_cli(capsys, "--workdir", workdir)
  assert report["step"] == 16 and report["num_devices"] == 4
  validation = run_eval_cli(capsys, "--workdir", workdir,
                            "--split", "validation")["results"]
  tta = run_eval_cli(capsys, "--workdir", workdir, "--tta", "mirror")
  assert tta["tta"] == "mirror"
  config, state, _ = restore.load_checkpoint(workdir)
  data = load_from_config(config.data, config.seed)
  from jaxcnn.models import create_model
  model = create_model(config.model)
  for w in ("raw", "ema"):
    got = report["results"][w]
    # The same evaluator on the same devices: the same figures, to the bit.
    for k in ("accuracy", "loss", "top5_accuracy"):
      assert got[k] == logged[f"test_{k}_{w}"], (w, k)
      assert validation[w][k] == logged[f"validation_{k}_{w}"], (w, k)
      assert tta["results"][w][k] == logged_tta[f"test_{k}_{w}"], (w, k)
    assert validation[w]["count"] == 100
    mirrored = direct(model, trainer.variables_of(state, w), config,
                      data.test_images, data.test_labels, "mirror")
    assert tta["results"][w]["confusion"] == mirrored["confusion"].tolist()
    assert tta["results"][w]["loss"] == pytest.approx(mirrored["loss"],
                                                      rel=1e-4)
    want = direct(model, trainer.variables_of(state, w), config,
                  data.test_images, data.test_labels)
    assert got["count"] == len(data.test_labels) == 200
    assert got["accuracy"] == pytest.approx(want["accuracy"])
    assert got["top5_accuracy"] == pytest.approx(want["top5_accuracy"])
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
    assert got["confusion"] == want["confusion"].tolist()
    rows = want["confusion"].sum(1)
    assert got["per_class_accuracy"] == pytest.approx(
        [want["confusion"][i, i] / rows[i] for i in range(10)])
  raw, ema = report["results"]["raw"], report["results"]["ema"]
  assert raw["confusion"] != ema["confusion"] or raw["loss"] != ema["loss"]


@pytest.fixture(scope="module")
def fresh():
  setup = trainer.build(tiny_config("train.num_steps=8"))
  return setup, trainer.create_train_state(setup)


@pytest.mark.parametrize("devices", [1, 3])
def test_every_image_counts_once_on_any_device_count(fresh, devices):
  setup, state = fresh
  data = setup.data
  want = direct(setup.model, trainer.variables_of(state, "ema"), setup.config,
                data.test_images, data.test_labels)
  evaluator = eval_step.Evaluator(
      setup.model, setup.config, jax.local_devices()[:devices],
      data.test_images, data.test_labels, batch_size=48)
  got = evaluator(state, ("ema",))["ema"]
  assert got["count"] == evaluator.count == 200
  np.testing.assert_array_equal(got["confusion"], want["confusion"])
  assert got["accuracy"] == pytest.approx(want["accuracy"])
  assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)


def test_progress_between_batches_and_a_stop(fresh):
  setup, state = fresh
  data = setup.data
  evaluator = eval_step.Evaluator(
      setup.model, setup.config, setup.devices, data.test_images,
      data.test_labels, batch_size=48)
  assert evaluator.batches == 5  # 200 images, 4 x 12 per batch.
  seen = []
  evaluator(state, before_batch=lambda *a: seen.append(a))
  assert seen == [(w, i, 5) for w in ("raw", "ema") for i in range(6)]

  class Stop(Exception):
    pass

  def stop_at_two(name, done, total):
    seen.append((name, done))
    if done == 2:
      raise Stop

  seen.clear()
  state_r = parallel.replicate(state, setup.local_devices)
  with pytest.raises(Stop):
    evaluator(state_r, tta="mirror", before_batch=stop_at_two,
              replicated=True)
  assert seen == [("raw", 0), ("raw", 1), ("raw", 2)]


def test_an_unknown_tta_is_refused(fresh):
  setup, _ = fresh
  with pytest.raises(config_lib.ConfigError, match="test-time augmentation"):
    eval_step.Evaluator(setup.model, setup.config, setup.devices,
                        setup.data.test_images, setup.data.test_labels,
                        batch_size=48, tta="sideways")


@pytest.mark.parametrize("devices", [1, 3])
def test_tta_on_the_least_confident_images_only(fresh, devices):
  # The reference: the plain logits of every image, those of the quarter
  # with the smallest largest softmax probability replaced by their TTA
  # logits (hiverge's selective TTA), chosen over the whole split.
  setup, state = fresh
  data, config = setup.data, setup.config
  variables = trainer.variables_of(state, "raw")
  plain = direct_logits(setup.model, variables, config, data.test_images)
  augmented = direct_logits(setup.model, variables, config, data.test_images,
                            "mirror_translate")
  shifted = plain - plain.max(-1, keepdims=True)
  confidence = 1.0 / np.exp(shifted).sum(-1)  # The largest probability.
  order = np.argsort(confidence)
  # A choice float rounding cannot flip: the 50th and 51st differ clearly.
  assert confidence[order[50]] - confidence[order[49]] > 1e-6
  merged = plain.copy()
  merged[order[:50]] = augmented[order[:50]]
  want = direct(None, None, config, None, data.test_labels, logits=merged)
  unaugmented = direct(None, None, config, None, data.test_labels,
                       logits=plain)
  assert abs(want["loss"] - unaugmented["loss"]) > 1e-4  # TTA shows.

  evaluator = eval_step.Evaluator(
      setup.model, config, jax.local_devices()[:devices], data.test_images,
      data.test_labels, batch_size=48, tta="mirror_translate",
      tta_fraction=0.25)
  # 200 images in 5 batches of 48, then the 50 chosen in 2 (of 25: the
  # chosen are split evenly, not padded to 48).
  assert evaluator.batches == 5 and evaluator.pass_batches() == 7
  assert evaluator._subset_batch(50) == 25
  assert evaluator._subset_batch(48) == 48 and evaluator._subset_batch(7) == 7
  seen = []
  got = evaluator(state, ("raw",), before_batch=lambda *a: seen.append(a))
  got = got["raw"]
  total = evaluator.pass_batches()
  assert seen == [("raw", i, total) for i in range(total + 1)]
  assert got["count"] == 200
  np.testing.assert_array_equal(got["confusion"], want["confusion"])
  assert got["accuracy"] == pytest.approx(want["accuracy"])
  assert got["top5_accuracy"] == pytest.approx(want["top5_accuracy"])
  assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
  # Fraction 1 is the TTA of every image, as without a fraction.
  every = evaluator(state, ("raw",), tta_fraction=1.0)["raw"]
  full = direct(setup.model, variables, config, data.test_images,
                data.test_labels, "mirror_translate")
  np.testing.assert_array_equal(every["confusion"], full["confusion"])
  assert every["loss"] == pytest.approx(full["loss"], rel=1e-4)


def test_image_results_are_those_of_the_totals(fresh):
  # The per-image pass (selective TTA's) summed equals the totals pass.
  setup, state = fresh
  data = setup.data
  evaluator = eval_step.Evaluator(
      setup.model, setup.config, setup.devices, data.test_images,
      data.test_labels, batch_size=48)
  variables = parallel.replicate(trainer.variables_of(state, "ema"),
                                 setup.local_devices)
  images = evaluator.image_results(variables, "mirror")
  assert all(v.shape == (200,) for v in images.values())
  assert set(np.unique(images["correct"])) <= {0.0, 1.0}
  assert np.all((images["confidence"] > 0.1 - 1e-6)
                & (images["confidence"] <= 1))
  from_images = eval_step.totals_of_images(images, evaluator.labels, 10)
  totals = evaluator.totals(variables, "mirror")
  np.testing.assert_array_equal(from_images["confusion"], totals["confusion"])
  for k in ("correct", "correct_top5", "count"):
    assert from_images[k] == totals[k], k
  assert from_images["loss_sum"] == pytest.approx(totals["loss_sum"], rel=1e-5)


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, "all"])
def test_a_tta_fraction_outside_0_1_is_refused(fresh, fraction):
  setup, _ = fresh
  with pytest.raises(config_lib.ConfigError, match=r"in \(0, 1\]"):
    eval_step.Evaluator(setup.model, setup.config, setup.devices,
                        setup.data.test_images, setup.data.test_labels,
                        batch_size=48, tta="mirror", tta_fraction=fraction)


def test_tta_fraction_benchmark_gives_the_evaluators_figures(tmp_path, capsys):
  # benchmarks/tta_fraction.py on a trained workdir: its accuracies are
  # those of `jaxcnn.eval --tta ... --tta_fraction ...`.
  from benchmarks import tta_fraction
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(tiny_config(
      "train.num_steps=8", "train.eval_every_epochs=0"), workdir)
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    cli.run_main(lambda: tta_fraction.main(
        ["--workdir", workdir, "--fractions", "1,0.25", "--tta", "mirror",
         "--repeats", "1", "--json"]))
  assert exit_info.value.code == 0
  out = json.loads(capsys.readouterr().out)
  rows = {(r["fraction"], r["weights"]): r for r in out["rows"]}
  assert set(rows) == {(f, w) for f in (1.0, 0.25) for w in ("raw", "ema")}
  for f in (1, 0.25):
    report = run_eval_cli(capsys, "--workdir", workdir, "--tta", "mirror",
                          "--tta_fraction", str(f))
    assert report["tta_fraction"] == f
    for w in ("raw", "ema"):
      assert rows[(f, w)]["accuracy"] == report["results"][w]["accuracy"]
      assert rows[(f, w)]["seconds"] > 0


def test_tta_fraction_benchmark_offers_every_augmenting_mode():
  # The benchmark spells its --tta choices out (its --help imports no jax):
  # every augment.TTA_MODES entry but 'none', which augments nothing.
  from benchmarks import tta_fraction
  for mode in augment.TTA_MODES:
    if mode == "none":
      with pytest.raises(SystemExit):
        tta_fraction.parse_args(["--workdir", "w", "--tta", mode])
    else:
      assert tta_fraction.parse_args(["--workdir", "w", "--tta", mode]).tta \
          == mode


def test_raw_and_ema_ensemble_equals_mean_probabilities(tmp_path, capsys):
  """train.final_tta_ensemble and `eval --weights ensemble`: the log of the
  mean of the raw and EMA softmax probabilities, each under the TTA, with
  the TTA given to the least confident half by the ensemble's own plain
  confidence; the figures training logged are the eval command's."""
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(tiny_config(
      "optim.groups.*.optimizer=adam", "optim.groups.*.lr=0.01",
      "train.num_steps=16", "train.eval_every_epochs=0",
      "train.final_tta=mirror", "train.final_tta_fraction=0.5",
      "train.final_tta_ensemble=true", "train.eval_batch_size=48",
      # An EMA that stays near the initial weights: far from the raw ones,
      # so a mean of logits would not pass for the mean of probabilities.
      "optim.ema_decay=0.9999", "optim.ema_ramp=false",
      "train.num_devices=2"), workdir)
  logged = reporting.read_metrics(workdir, "eval_tta")[-1]
  assert {"seconds_raw", "seconds_ema", "seconds_ensemble"} <= set(logged)
  assert logged["seconds"] == pytest.approx(
      logged["seconds_raw"] + logged["seconds_ema"])
  report = run_eval_cli(capsys, "--workdir", workdir, "--weights", "all",
                        "--tta", "mirror", "--tta_fraction", "0.5",
                        "--num_devices", "2")
  assert report["weights"] == ["raw", "ema", "ensemble"]
  for w in ("raw", "ema", "ensemble"):
    for k in ("accuracy", "loss", "top5_accuracy"):
      assert report["results"][w][k] == logged[f"test_{k}_{w}"], (w, k)

  config, state, _ = restore.load_checkpoint(workdir)
  data = load_from_config(config.data, config.seed)
  from jaxcnn.models import create_model
  model = create_model(config.model)
  images, labels = data.test_images, data.test_labels

  def log_probs(w, tta):
    logits = direct_logits(model, trainer.variables_of(state, w), config,
                           images, tta)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))

  def ensemble(tta):
    return np.log((np.exp(log_probs("raw", tta))
                   + np.exp(log_probs("ema", tta))) / 2)

  plain, mirrored = ensemble("none"), ensemble("mirror")
  # Raw and EMA differ, so the ensemble is neither of them.
  for w in ("raw", "ema"):
    assert np.abs(plain - log_probs(w, "none")).max() > 1e-3
  confidence = np.exp(plain).max(-1)
  order = np.argsort(confidence, kind="stable")
  half = len(labels) // 2
  # A choice float rounding cannot flip (on any CPU).
  assert confidence[order[half]] - confidence[order[half - 1]] > 1e-6
  chosen = order[:half]
  logits = plain.copy()
  logits[chosen] = mirrored[chosen]
  want = direct(model, None, config, images, labels, logits=logits)
  mean_logits = (log_probs("raw", "none") + log_probs("ema", "none")) / 2
  assert abs(direct(model, None, config, images, labels,
                    logits=mean_logits)["loss"] - want["loss"]) > \
      1e-3 * want["loss"]
  got = report["results"]["ensemble"]
  assert got["confusion"] == want["confusion"].tolist()
  assert got["accuracy"] == pytest.approx(want["accuracy"])
  assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
  # The seeds table reads it back.
  from jaxcnn import seeds
  row = seeds.seed_row(workdir, 0)
  assert row["tta_accuracy_ensemble"] == logged["test_accuracy_ensemble"]
  assert row["tta_seconds_ensemble"] == logged["seconds_ensemble"]
