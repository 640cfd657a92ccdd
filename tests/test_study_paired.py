"""The ablation report's seed-by-seed table ('paired' extra) against numpy
and scipy, and the check of a study's extras."""
import numpy as np
import pytest
from scipy import stats as scipy_stats

from jaxcnn import studies, study_report
from jaxcnn.config import ConfigError
from jaxcnn.study_metrics import paired_differences, t_quantile


def _entry(name, values, seconds=None):
  """A member as study_metrics.collect gives it: {seed: accuracy}."""
  seconds = seconds or {}
  return {"name": name, "overrides": [], "seeds": [
      {"seed": seed, "test_accuracy_raw": v, "train_seconds": seconds.get(seed),
       "failed": None} for seed, v in values.items()]}


BASE = _entry("recipe", {0: 0.760, 1: 0.772, 2: 0.755, 3: 0.768},
              seconds={0: 60.0, 1: 62.0, 2: 61.0, 3: 59.0})


def test_paired_differences_are_per_seed_means_and_standard_errors():
  # The member has no seed 3 and a seed 5 the base lacks: only 0-2 pair up.
  member = _entry("no_x", {0: 0.750, 1: 0.769, 2: 0.741, 5: 0.9},
                  seconds={0: 90.0, 1: 93.0, 2: 91.5})
  out = paired_differences([BASE, member], "test_accuracy_raw")
  diffs = np.array([0.750 - 0.760, 0.769 - 0.772, 0.741 - 0.755])
  mean, se, n = out["no_x"]
  assert n == 3
  assert mean == pytest.approx(diffs.mean())
  assert se == pytest.approx(diffs.std(ddof=1) / np.sqrt(3))
  # Unpaired, the seed-to-seed spread of the base would swamp it.
  assert se < np.std([0.760, 0.772, 0.755], ddof=1)
  ratios = np.array([90 / 60, 93 / 62, 91.5 / 61])
  mean, se, n = paired_differences([BASE, member], "train_seconds",
                                   ratio=True)["no_x"]
  assert (mean, n) == (pytest.approx(ratios.mean()), 3)
  assert se == pytest.approx(ratios.std(ddof=1) / np.sqrt(3))


def test_one_seed_has_no_error_and_no_common_seed_no_mean():
  one = paired_differences([BASE, _entry("a", {1: 0.780})],
                           "test_accuracy_raw")["a"]
  assert one == (pytest.approx(0.008), None, 1)
  assert paired_differences([BASE, _entry("b", {7: 0.5})],
                            "test_accuracy_raw")["b"] == (None, None, 0)


@pytest.mark.parametrize("n", [2, 3, 4, 9])
def test_t_quantile_is_students(n):
  assert t_quantile(n) == pytest.approx(scipy_stats.t.ppf(0.975, n - 1))
  with pytest.raises(ValueError):
    t_quantile(1)


def test_a_cell_is_starred_only_when_its_interval_leaves_out_zero():
  # mean 0.01 (1 point), SE 0.002, n 3: t = 4.30, 0.0086 < 0.01: starred.
  assert study_report._paired_cell((0.01, 0.002, 3)) == "+1.00 ± 0.20 *"
  # SE 0.003: 4.30 x 0.003 = 0.0129 > 0.01: noise.
  assert study_report._paired_cell((0.01, 0.003, 3)) == "+1.00 ± 0.30"
  assert study_report._paired_cell((-0.004, None, 1)) == "-0.40"
  assert study_report._paired_cell((None, None, 0)) == "-"
  assert study_report._paired_cell((1.5, 0.01, 3), ratio=True) == (
      "1.50x ± 0.01 *")
  assert study_report._paired_cell((1.01, 0.01, 3), ratio=True) == (
      "1.01x ± 0.01")


def test_paired_table_has_a_row_per_member_but_the_first():
  member = _entry("no_x", {0: 0.750, 1: 0.769, 2: 0.741},
                  seconds={0: 90.0, 1: 93.0, 2: 91.5})
  table = study_report._paired_table([BASE, member])
  lines = table.splitlines()
  assert "recipe" not in table
  assert lines[0].split("|")[1].strip() == "member"
  cells = [c.strip() for c in lines[-1].strip("|").split("|")]
  diffs = 100 * np.array([0.750 - 0.760, 0.769 - 0.772, 0.741 - 0.755])
  assert cells[:3] == [
      "no_x", "3", f"{diffs.mean():+.2f} ± {diffs.std(ddof=1) / 3 ** 0.5:.2f}"]
  assert cells[-1].startswith("1.50x")


def test_a_study_refuses_unknown_extras():
  make = lambda extras: studies.Study("s", "q", "p", "test", lambda _: [],
                                      extras=extras)
  with pytest.raises(ConfigError, match="'emaa'.*known: .*paired"):
    make(("ema", "emaa"))
  with pytest.raises(ConfigError, match="tuple of names"):
    make("ema")
  assert make(("paired", "ema")).extras == ("paired", "ema")
