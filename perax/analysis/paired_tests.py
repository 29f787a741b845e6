"""Paired comparisons of conditions: two-sided Wilcoxon signed-rank tests on per-utterance values.

scipy.stats.wilcoxon, zero differences dropped; p-values are not adjusted for multiple comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import scipy.stats

from perax.analysis.bootstrap import Ingredients

WILCOXON_METRICS = ('js_divergence', 'kl', 'bhattacharyya')
WILCOXON_COLUMNS = (
  'study',
  'k',
  'level',
  'metric',
  'condition',
  'baseline',
  'n',
  'mean_condition',
  'mean_baseline',
  'median_difference',
  'statistic',
  'p_value',
)


def wilcoxon(values: np.ndarray, baseline: np.ndarray) -> dict:
  """Two-sided paired Wilcoxon signed-rank test of [N] values against [N] baseline values.

  Zero differences are dropped (scipy's zero_method='wilcox'); with none left the statistic is 0 and
  p = 1, which is what scipy returns there too.

  Returns:
    n, mean_condition, mean_baseline, median_difference (values - baseline), statistic, p_value.
  """
  values, baseline = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
  difference = values - baseline
  result = dict(
    n=len(values),
    mean_condition=float(values.mean()) if len(values) else math.nan,
    mean_baseline=float(baseline.mean()) if len(values) else math.nan,
    median_difference=float(np.median(difference)) if len(values) else math.nan,
  )
  if not np.any(difference != 0):
    result.update(statistic=0.0 if len(values) else math.nan, p_value=1.0 if len(values) else math.nan)
    return result
  test = scipy.stats.wilcoxon(values, baseline, zero_method='wilcox', alternative='two-sided')
  result.update(statistic=float(test.statistic), p_value=float(test.pvalue))
  return result


def _utterance_means(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """[R, N] values -> [n] mean over each utterance's kept repeats, for utterances with any kept."""
  mask = np.asarray(mask, np.float64)
  members = mask.any(0)
  return (values * mask).sum(0)[members] / mask.sum(0)[members]


def wilcoxon_rows(
  per_condition: Mapping[str, Ingredients],
  baseline: str,
  masks: Mapping[str, np.ndarray],
  study: str,
  k: int | None = None,
) -> list[dict]:
  """Wilcoxon rows of every condition against ``baseline``, per level and metric.

  Args:
    per_condition: condition -> ingredients over the same R repeats x N utterances.
    baseline: the condition the others are compared with.
    masks: level -> [N] or [R, N] bool, the items of the level; an utterance's value is the mean
      over its kept repeats, and utterances without kept items are left out.
    study: 'alignment' or 'sparse_dense'.
    k: the sparse study's k, or None.
  """
  rows = []
  base = per_condition[baseline]
  shape = base.mask.shape
  for condition, parts in per_condition.items():
    if condition == baseline:
      continue
    for level, mask in masks.items():
      mask = np.broadcast_to(np.asarray(mask, bool), shape)
      for metric in WILCOXON_METRICS:
        test = wilcoxon(
          _utterance_means(parts.per_item[metric], mask), _utterance_means(base.per_item[metric], mask)
        )
        rows.append(
          dict(study=study, k=k, level=level, metric=metric, condition=condition, baseline=baseline, **test)
        )
  return rows
