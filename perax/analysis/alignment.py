"""The alignment study: each condition's distributions scored against a reference, per ambiguity level.

Without a separate dense reference the reference is the human distribution and the one condition is
``proxy``. With one, the conditions are ``human``, ``proxy`` and the three combinations, and the
combinations are compared with the human-only condition by paired Wilcoxon tests. Levels are the
run's level definition applied to the human entropy; intervals are percentile bootstraps over
utterances, resampled within each level.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from perax import distributions
from perax.analysis.bootstrap import level_bootstrap_weights, level_masks, score_condition
from perax.analysis.conditions import COMBINED, HUMAN, PROXY, Combination
from perax.analysis.evidence import Evidence
from perax.analysis.paired_tests import wilcoxon_rows
from perax.distributions.levels import ALL

ALIGNMENT_METRICS = (
  'js_divergence',
  'kl',
  'bhattacharyya',
  'r2',
  'entropy_pearson',
  'entropy_spearman',
  'accuracy',
)
ROW_COLUMNS = ('condition', 'level', 'metric', 'value', 'ci_low', 'ci_high', 'n')


@dataclasses.dataclass(frozen=True)
class Alignment:
  """The alignment study's results.

  Attributes:
    rows: alignment rows (condition, level, metric, value, ci_low, ci_high, n).
    wilcoxon: Wilcoxon rows against the human-only condition (empty without a reference).
    reference: [N, C] the reference distributions.
    estimates: condition -> [N, C] its distributions.
  """

  rows: list[dict]
  wilcoxon: list[dict]
  reference: np.ndarray
  estimates: Mapping[str, np.ndarray]


def alignment(
  evidence: Evidence,
  levels: np.ndarray,
  combination: Combination,
  resamples: int,
  confidence: float,
  seed: int,
) -> Alignment:
  """Scores the conditions against the reference per level, with bootstrap CIs (module docstring).

  Args:
    evidence: the counted evidence.
    levels: [N] the level of each utterance (low | medium | high).
    combination: how the combined conditions are estimated.
    resamples, confidence, seed: the bootstrap.
  """
  if evidence.n_ref is None:
    reference = distributions.to_distribution(evidence.n_h)
    conditions = (PROXY,)
  else:
    reference = distributions.to_distribution(evidence.n_ref)
    conditions = (HUMAN, PROXY) + COMBINED
  estimates = {c: combination.estimate(c, evidence.n_h, evidence.n_s, evidence.p_s) for c in conditions}
  masks = level_masks(levels)
  weights = level_bootstrap_weights(masks, resamples, seed)
  rows, per_condition = [], {}
  for condition, estimate in estimates.items():
    for level, mask in masks.items():
      scored, parts = score_condition(
        reference[mask][None], estimate[mask][None], weights[level], ALIGNMENT_METRICS, confidence
      )
      rows += [dict(condition=condition, level=level, **row) for row in scored]
      if level == ALL:
        per_condition[condition] = parts
  tests = []
  if HUMAN in per_condition:
    tests = wilcoxon_rows(per_condition, HUMAN, masks, 'alignment')
  return Alignment(rows, tests, reference, estimates)
