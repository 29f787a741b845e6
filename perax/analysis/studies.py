"""Statistical validation of proxy annotations against human distributions, with bootstrap CIs.

Two studies, both per ambiguity level (low | medium | high) and over all utterances ('all'):

1. Alignment.  Distribution estimates ("conditions") are scored against a reference with the metrics
   of :mod:`perax.distributions.metrics`.  Without a separate dense reference the reference is the human
   distribution and the one condition is ``proxy`` (the proxy's distribution alone).  With a dense
   reference (``--reference``) the conditions are ``human`` (the human votes alone), ``proxy``, and
   human + proxy combined by :func:`perax.distributions.combine_evidence`: ``pooled``, ``mixture`` and
   ``dirichlet``.  Levels come from the normalised entropy of the human distribution, with tertile
   edges from the utterances of one split (``levels_from``) or from all of them.
2. Sparse versus dense (:mod:`perax.analysis.sparse_dense`): k human votes drawn from dense ones, every
   condition scored against the dense reference, per level of the dense distribution.

Confidence intervals are percentile bootstraps over utterances: B resamples of N indices drawn at once
([B, N], seeded), turned into per-resample item weights, so every metric of every condition is a matrix
product over per-item ingredients (repeats of the sparse study resample with their utterance).  Point
estimates are :func:`perax.distributions.metrics.distribution_metrics` of all items.  Conditions are compared with
paired Wilcoxon signed-rank tests (scipy.stats.wilcoxon, two-sided, zero differences dropped) on
per-utterance values; p-values are not adjusted for multiple comparisons.

The proxy is a votes table (its synthetic rows, or all rows when it has none, e.g. another human
rater pool such as CREMA-D's face-only raters) or a score-mode table (utt_id, prompt_id, p_<label>;
each scored prompt counts as one expected vote when pooling).  The Dirichlet strength kappa is fitted
once by empirical Bayes on the human votes of the ``levels_from`` utterances (or given), and used
everywhere, at every k.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.stats

from perax import distributions
from perax.analysis import plots, sparse_dense
from perax.analysis import report as report_lib
from perax.core.errors import InputError, SkipCounter
from perax.core.progress import Progress
from perax.data import labels as labels_lib
from perax.data import tables
from perax.distributions import metrics

ALL = 'all'
LEVELS = distributions.LEVELS
HUMAN = 'human'
PROXY = 'proxy'
COMBINED = ('pooled', 'mixture', 'dirichlet')
CONDITION_NOTES = {
  HUMAN: 'the human votes alone',
  PROXY: 'the proxy alone',
  'pooled': 'human + proxy votes pooled, each proxy vote weighted by w',
  'mixture': 'lambda * human + (1 - lambda) * proxy distribution',
  'dirichlet': 'posterior mean under a Dirichlet(kappa * proxy) prior',
}

# Metrics that average a per-utterance value (perax.distributions.metrics' per-item functions).
PER_ITEM = {
  'js_divergence': metrics.js_divergence,
  'js_distance': metrics.js_distance,
  'kl': metrics.kl,
  'bhattacharyya': metrics.bhattacharyya,
  'total_variation': metrics.total_variation,
}
ALIGNMENT_METRICS = (
  'js_divergence',
  'kl',
  'bhattacharyya',
  'r2',
  'entropy_pearson',
  'entropy_spearman',
  'accuracy',
)
SPARSE_METRICS = ('js_divergence', 'kl', 'bhattacharyya', 'total_variation', 'r2')
WILCOXON_METRICS = ('js_divergence', 'kl', 'bhattacharyya')
ROW_COLUMNS = ('condition', 'level', 'metric', 'value', 'ci_low', 'ci_high', 'n')
SPARSE_COLUMNS = ('k',) + ROW_COLUMNS
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
BOOTSTRAP_CHUNK = 256


# ----------------------------------------------------------------------------------------------
# Bootstrap over utterances.


def bootstrap_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
  """[B, n] float64: how often each item occurs in each bootstrap resample (rows sum to n).

  The resample indices are drawn at once as an [B, n] integer array and counted per row.
  """
  indices = rng.integers(0, n, size=(resamples, n))
  offsets = (np.arange(resamples) * n)[:, None]
  return (
    np.bincount((indices + offsets).ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)
  )


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
  """The percentile bootstrap interval of [B] samples (NaN samples ignored; NaN if all are)."""
  finite = samples[np.isfinite(samples)]
  if not finite.size:
    return float('nan'), float('nan')
  tail = 100 * (1 - confidence) / 2
  low, high = np.percentile(finite, [tail, 100 - tail])
  return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class Ingredients:
  """Per-item quantities from which every metric of a condition is a weighted sum.

  Items are R repeats x N utterances; a bootstrap weight per utterance applies to all its repeats.

  Attributes:
    per_item: metric name -> [R, N] values of the per-item metrics.
    sse: [R, N] sum_c (ref - pred)^2.
    sst: [R, N] sum_c (ref - 1/C)^2 (R^2 is against the grand mean of ref, which is 1/C).
    entropy_ref, entropy_pred: [R, N] normalised entropies.
    hit: [R, N] 1 where the pred majority (first on ties) is the ref majority, else 0.
    valid: [R, N] 1 where the ref majority is untied (perax.distributions.metrics' ref_ties='exclude'), else 0.
  """

  per_item: Mapping[str, np.ndarray]
  sse: np.ndarray
  sst: np.ndarray
  entropy_ref: np.ndarray
  entropy_pred: np.ndarray
  hit: np.ndarray
  valid: np.ndarray


def ingredients(ref: np.ndarray, pred: np.ndarray, names: Sequence[str]) -> Ingredients:
  """The :class:`Ingredients` of ``pred`` against ``ref``, both [R, N, C] distributions.

  Rows are renormalised first, as perax.distributions.metrics does, so that entropies (and their ties) are
  bit-identical to those of :func:`perax.distributions.metrics.distribution_metrics`.
  """
  ref = ref / ref.sum(-1, keepdims=True)
  pred = pred / pred.sum(-1, keepdims=True)
  repeats, n, num_labels = ref.shape
  flat_ref, flat_pred = ref.reshape(-1, num_labels), pred.reshape(-1, num_labels)
  shape = (repeats, n)
  true = metrics.reference_labels(flat_ref, 'exclude')
  return Ingredients(
    per_item={name: PER_ITEM[name](flat_ref, flat_pred).reshape(shape) for name in names if name in PER_ITEM},
    sse=((ref - pred) ** 2).sum(-1),
    sst=((ref - 1.0 / num_labels) ** 2).sum(-1),
    entropy_ref=distributions.normalized_entropy(flat_ref).reshape(shape),
    entropy_pred=distributions.normalized_entropy(flat_pred).reshape(shape),
    hit=(true == distributions.majority(flat_pred, 'first')).astype(np.float64).reshape(shape),
    valid=(true >= 0).astype(np.float64).reshape(shape),
  )


def _weighted_pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """Pearson correlation per weight row: x, y [M] or [S, M], weights [S, M] -> [S] (NaN if constant)."""
  total = weights.sum(-1)
  mean_x = (weights * x).sum(-1) / total
  mean_y = (weights * y).sum(-1) / total
  dx = x - mean_x[:, None]
  dy = y - mean_y[:, None]
  covariance = (weights * dx * dy).sum(-1)
  norm = np.sqrt((weights * dx * dx).sum(-1) * (weights * dy * dy).sum(-1))
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(norm > 1e-12 * np.maximum(total, 1) ** 2, np.clip(covariance / norm, -1, 1), np.nan)


def _weighted_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """Average ranks of [M] values in the multiset where item m occurs weights[s, m] times: [S, M].

  Equal values share the mean of the positions they occupy, as scipy.stats.rankdata('average').
  """
  order = np.argsort(values, kind='stable')
  sorted_values = values[order]
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  group_of_sorted = np.cumsum(np.r_[True, sorted_values[1:] != sorted_values[:-1]]) - 1
  group = np.empty_like(group_of_sorted)
  group[order] = group_of_sorted
  group_weight = np.add.reduceat(weights[:, order], starts, axis=1)
  before = np.cumsum(group_weight, axis=1) - group_weight
  return (before + (group_weight + 1) / 2)[:, group]


def weighted_metrics(parts: Ingredients, weights: np.ndarray, names: Sequence[str]) -> dict:
  """Every metric in ``names`` for each row of utterance weights [S, N] -> {name: [S]}.

  With weights of ones this is the metric over all items (equal to perax.distributions.metrics); with bootstrap
  weights it is the metric of each resample.  The sums behind the per-item means, R^2 and accuracy
  come from one product of the weights with a [N, K] matrix of per-utterance sums (the weights are
  read once: that product is memory-bound).
  """
  unknown = set(names) - set(PER_ITEM) - {'r2', 'accuracy', 'entropy_pearson', 'entropy_spearman'}
  if unknown:
    raise ValueError(f'unknown metrics {sorted(unknown)}')
  repeats = parts.sse.shape[0]
  linear = {'count': np.ones_like(parts.sse)}
  linear.update({name: parts.per_item[name] for name in names if name in PER_ITEM})
  if 'r2' in names:
    linear.update(sse=parts.sse, sst=parts.sst)
  if 'accuracy' in names:
    linear.update(hit=parts.hit, valid=parts.valid)
  products = weights @ np.stack([v.sum(0) for v in linear.values()], axis=1)
  sums = dict(zip(linear, products.T))
  total = sums['count']
  result = {}
  with np.errstate(invalid='ignore', divide='ignore'):
    for name in names:
      if name in PER_ITEM:
        result[name] = sums[name] / total
      elif name == 'r2':
        result[name] = np.where(sums['sst'] > 0, 1 - sums['sse'] / sums['sst'], np.nan)
      elif name == 'accuracy':
        result[name] = np.where(sums['valid'] > 0, sums['hit'] / sums['valid'], np.nan)
      else:
        tiled = np.tile(weights, (1, repeats))
        x, y = parts.entropy_ref.ravel(), parts.entropy_pred.ravel()
        if name == 'entropy_spearman':
          x, y = _weighted_ranks(x, tiled), _weighted_ranks(y, tiled)
        result[name] = _weighted_pearson(x, y, tiled)
  return result


def bootstrap_metrics(parts: Ingredients, weights: np.ndarray, names: Sequence[str]) -> dict:
  """:func:`weighted_metrics` over [B, N] bootstrap weights, in chunks of rows to bound memory."""
  chunks = [
    weighted_metrics(parts, weights[start : start + BOOTSTRAP_CHUNK], names)
    for start in range(0, len(weights), BOOTSTRAP_CHUNK)
  ]
  return {name: np.concatenate([c[name] for c in chunks]) for name in names}


def point_metrics(ref: np.ndarray, pred: np.ndarray) -> dict:
  """perax.distributions.metrics.distribution_metrics over all items of [R, N, C] arrays (repeats stacked)."""
  num_labels = ref.shape[-1]
  return metrics.distribution_metrics(ref.reshape(-1, num_labels), pred.reshape(-1, num_labels))


def score_condition(
  ref: np.ndarray, pred: np.ndarray, weights: np.ndarray, names: Sequence[str], confidence: float
) -> tuple[list[dict], Ingredients | None]:
  """Rows (metric, value, ci_low, ci_high, n) of ``pred`` against ``ref`` ([R, N, C] each).

  Args:
    ref, pred: reference and estimate, R repeats of N utterances.
    weights: [B, N] bootstrap weights over the N utterances.
    names: the metrics.
    confidence: the interval's coverage, e.g. 0.95.

  Returns:
    one row per metric, and the per-item ingredients (for paired tests; None without items).
  """
  n = ref.shape[1]
  if not n:
    return [dict(metric=m, value=math.nan, ci_low=math.nan, ci_high=math.nan, n=0) for m in names], None
  parts = ingredients(ref, pred, names)
  point = point_metrics(ref, pred)
  samples = bootstrap_metrics(parts, weights, names)
  rows = []
  for name in names:
    low, high = percentile_interval(samples[name], confidence)
    rows.append(dict(metric=name, value=float(point[name]), ci_low=low, ci_high=high, n=n))
  return rows, parts


# ----------------------------------------------------------------------------------------------
# Paired tests.


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


def wilcoxon_rows(
  per_condition: Mapping[str, Ingredients],
  baseline: str,
  levels: np.ndarray,
  study: str,
  k: int | None = None,
) -> list[dict]:
  """Wilcoxon rows of every condition against ``baseline``, per level and metric.

  Args:
    per_condition: condition -> ingredients over the same N utterances (R repeats are averaged per
      utterance before testing).
    baseline: the condition the others are compared with.
    levels: [N] the level of each utterance.
    study: 'alignment' or 'sparse_dense'.
    k: the sparse study's k, or None.
  """
  rows = []
  base = per_condition[baseline]
  for condition, parts in per_condition.items():
    if condition == baseline:
      continue
    for level in LEVELS + (ALL,):
      chosen = np.ones(len(levels), bool) if level == ALL else levels == level
      for metric in WILCOXON_METRICS:
        test = wilcoxon(parts.per_item[metric].mean(0)[chosen], base.per_item[metric].mean(0)[chosen])
        rows.append(
          dict(study=study, k=k, level=level, metric=metric, condition=condition, baseline=baseline, **test)
        )
  return rows


# ----------------------------------------------------------------------------------------------
# Inputs: human, proxy and reference evidence on common utterances.


@dataclasses.dataclass(frozen=True)
class Evidence:
  """Human, proxy and (optional) dense reference evidence on the same N utterances.

  Attributes:
    utt_ids: [N] utterances with human votes, proxy evidence and, if there is one, reference votes.
    n_h: [N, C] human counts.
    n_s: [N, C] proxy counts (votes, or n_prompts * p_s for scores).
    p_s: [N, C] proxy distributions.
    n_ref: [N, C] reference counts, or None when the human votes are the reference.
    split: [N] split of each utterance, or None without an utterances table.
    dropped: utterances left out, by reason.
    skipped: votes not counted (invalid, outside the label set), by reason.
  """

  utt_ids: np.ndarray
  n_h: np.ndarray
  n_s: np.ndarray
  p_s: np.ndarray
  n_ref: np.ndarray | None
  split: np.ndarray | None
  dropped: Mapping[str, int]
  skipped: SkipCounter


def is_votes_table(table: pa.Table) -> bool:
  """Whether a proxy table holds votes (utt_id, rater, label) rather than scores (p_<label>)."""
  return {'utt_id', 'rater', 'label'} <= set(table.column_names)


def proxy_votes(table: pa.Table) -> pa.Table:
  """The proxy's votes: the synthetic rows, or every row of a table without synthetic rows."""
  synthetic = tables.column(table, 'source') == tables.SYNTHETIC
  return table.filter(pa.array(synthetic)) if synthetic.any() else table


def gather_evidence(
  human: pa.Table,
  proxy: pa.Table,
  label_set: labels_lib.LabelSet,
  reference: pa.Table | None = None,
  utterances: pa.Table | None = None,
  proxy_path: str | None = None,
) -> Evidence:
  """Counts the human, proxy and reference evidence and keeps the utterances that have all of it.

  Args:
    human: votes; their human rows are counted.
    proxy: a votes table (see :func:`proxy_votes`) or a score table (utt_id, prompt_id, p_<label>).
    label_set: the classes.
    reference: dense reference votes (all rows counted), or None.
    utterances: restricts the analysis to its utterances and gives their splits, or None.
    proxy_path: the proxy table's file, named in errors.
  """
  skipped = SkipCounter()
  if utterances is not None:
    candidates = tables.column(utterances, 'utt_id').astype(object)
  else:
    candidates = np.unique(tables.column(human, 'utt_id').astype(str)).astype(object)
  utt_ids, n_h = distributions.vote_counts(human, label_set, candidates, source=tables.HUMAN, skipped=skipped)
  if is_votes_table(proxy):
    _, n_s = distributions.vote_counts(proxy_votes(proxy), label_set, utt_ids, skipped=skipped)
    p_s = distributions.to_distribution(n_s)
  else:
    try:
      n_s, p_s, _ = distributions.synthetic_evidence(utt_ids, label_set, None, proxy, skipped)
    except InputError as e:
      raise InputError(e.reason, path=e.path or proxy_path, item=e.item) from e
  has = {'without human votes': n_h.sum(-1) > 0, 'without proxy evidence': ~np.isnan(p_s).any(-1)}
  n_ref = None
  if reference is not None:
    _, n_ref = distributions.vote_counts(reference, label_set, utt_ids, skipped=skipped)
    has['without reference votes'] = n_ref.sum(-1) > 0
  keep = np.logical_and.reduce(list(has.values()))
  dropped, seen = {}, np.ones(len(utt_ids), bool)
  for reason, present in has.items():
    dropped[reason] = int((seen & ~present).sum())
    seen &= present
  if not keep.any():
    raise InputError(
      f'no utterance has human votes, proxy evidence'
      f'{" and reference votes" if reference is not None else ""} '
      f'in label set {label_set.name}; left out: {dropped}'
    )
  split = None
  if utterances is not None:
    split = distributions.align(
      utt_ids[keep],
      tables.column(utterances, 'utt_id'),
      tables.column(utterances, 'split').astype(object),
      fill=None,
    )
  return Evidence(
    utt_ids[keep],
    n_h[keep],
    n_s[keep],
    p_s[keep],
    None if n_ref is None else n_ref[keep],
    split,
    dropped,
    skipped,
  )


def level_edges(
  entropy: np.ndarray, split: np.ndarray | None, levels_from: str | None
) -> tuple[tuple[float, float], str]:
  """Tertile edges of ``entropy`` over the utterances of split ``levels_from`` (or all), and whence.

  Args:
    entropy: [N] normalised entropies.
    split: [N] splits, or None (then every utterance is used).
    levels_from: a split name, or None / 'all' for every utterance.
  """
  if levels_from in (None, ALL) or split is None:
    return distributions.tertile_edges(entropy), f'tertiles of all {len(entropy)} utterances'
  chosen = split == levels_from
  if not chosen.any():
    raise InputError(
      f'no analysed utterance is in split {levels_from!r} (levels_from); splits: '
      f'{sorted({str(s) for s in split})}'
    )
  return (
    distributions.tertile_edges(entropy[chosen]),
    f'tertiles of split {levels_from} ({int(chosen.sum())} utterances)',
  )


@dataclasses.dataclass(frozen=True)
class Combination:
  """How human and proxy evidence are combined (see perax.distributions.combine_evidence)."""

  synthetic_weight: float = 1.0
  mixture_lambda: float = 0.5
  kappa: float | None = None

  def estimate(self, condition: str, n_h: np.ndarray, n_s: np.ndarray, p_s: np.ndarray) -> np.ndarray:
    """[N, C] the distribution of ``condition`` from human counts and proxy evidence."""
    if condition == HUMAN:
      return distributions.to_distribution(n_h)
    if condition == PROXY:
      return p_s
    p, _ = distributions.combine_evidence(
      condition,
      n_h,
      n_s,
      p_s,
      synthetic_weight=self.synthetic_weight,
      mixture_lambda=self.mixture_lambda,
      kappa=self.kappa,
    )
    return p


def fitted_combination(
  evidence: Evidence,
  levels_from: str | None,
  synthetic_weight: float,
  mixture_lambda: float,
  kappa: float | None,
) -> Combination:
  """The combination with kappa fitted on the human votes of the ``levels_from`` split if not given."""
  if kappa is None:
    chosen = np.ones(len(evidence.utt_ids), bool)
    if levels_from not in (None, ALL) and evidence.split is not None:
      chosen = evidence.split == levels_from
    kappa = distributions.fit_kappa(evidence.n_h[chosen], evidence.p_s[chosen])
  return Combination(synthetic_weight, mixture_lambda, kappa)


# ----------------------------------------------------------------------------------------------
# The two studies.


def _level_masks(levels: np.ndarray) -> dict[str, np.ndarray]:
  masks = {level: levels == level for level in LEVELS}
  masks[ALL] = np.ones(len(levels), bool)
  return masks


def _level_weights(levels: np.ndarray, resamples: int, seed: int) -> dict[str, np.ndarray]:
  """Bootstrap weights [B, n_level] per level (resampling within the level), seeded per level."""
  return {
    level: bootstrap_weights(int(mask.sum()), resamples, np.random.default_rng([seed, i]))
    for i, (level, mask) in enumerate(_level_masks(levels).items())
  }


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
  """Scores the conditions against the reference per level, with bootstrap CIs (module docstring)."""
  if evidence.n_ref is None:
    reference = distributions.to_distribution(evidence.n_h)
    conditions = (PROXY,)
  else:
    reference = distributions.to_distribution(evidence.n_ref)
    conditions = (HUMAN, PROXY) + COMBINED
  estimates = {c: combination.estimate(c, evidence.n_h, evidence.n_s, evidence.p_s) for c in conditions}
  weights = _level_weights(levels, resamples, seed)
  rows, per_condition = [], {}
  for condition, estimate in estimates.items():
    for level, mask in _level_masks(levels).items():
      scored, parts = score_condition(
        reference[mask][None], estimate[mask][None], weights[level], ALIGNMENT_METRICS, confidence
      )
      rows += [dict(condition=condition, level=level, **row) for row in scored]
      if level == ALL:
        per_condition[condition] = parts
  tests = []
  if HUMAN in per_condition:
    tests = wilcoxon_rows(per_condition, HUMAN, levels, 'alignment')
  return Alignment(rows, tests, reference, estimates)


@dataclasses.dataclass(frozen=True)
class SparseDense:
  """The sparse-vs-dense study's results.

  Attributes:
    rows: rows (k, condition, level, metric, value, ci_low, ci_high, n).
    wilcoxon: Wilcoxon rows of every condition against ``human`` at each k.
    ks: the k actually studied.
    n_items: utterances in the study; n_left_out: utterances with too few raters.
    reference: 'remainder', 'all' or 'separate'.
    levels: [n_items] the dense levels; edges and edges_from: their edges and whence.
    notes: what was adjusted (ks dropped), for the report.
  """

  rows: list[dict]
  wilcoxon: list[dict]
  ks: tuple[int, ...]
  n_items: int
  n_left_out: int
  reference: str
  levels: np.ndarray
  edges: tuple[float, float]
  edges_from: str
  notes: tuple[str, ...]


def sparse_vs_dense(
  evidence: Evidence,
  human: pa.Table,
  label_set: labels_lib.LabelSet,
  combination: Combination,
  ks: Sequence[int],
  repeats: int,
  resamples: int,
  confidence: float,
  seed: int,
  levels_from: str | None,
  dense_reference: str = sparse_dense.REMAINDER,
) -> SparseDense | None:
  """Draws k human raters per utterance and scores every condition against the dense reference.

  The human raters are drawn from ``human`` (its human rows); the reference is the separate dense
  reference of ``evidence`` if there is one, else the human votes (``dense_reference``: the held-out
  remainder or all of them). ks larger than the median number of raters allows are dropped (noted).

  Returns:
    the study, or None when no k is feasible.
  """
  human_rows = human.filter(pa.array(tables.column(human, 'source') == tables.HUMAN))
  units = sparse_dense.rater_votes(human_rows, label_set, evidence.utt_ids)
  raters = units.raters_per_utt
  separate = evidence.n_ref is not None
  needs_remainder = not separate and dense_reference == sparse_dense.REMAINDER
  typical = int(np.median(raters))
  feasible = tuple(sorted(k for k in set(ks) if 1 <= k <= typical - int(needs_remainder)))
  notes = []
  if len(feasible) < len(set(ks)):
    notes.append(
      f'k in {sorted(set(ks) - set(feasible))} dropped: the median utterance has '
      f'{typical} human raters' + (' and one must remain as reference' if needs_remainder else '')
    )
  if not feasible:
    return None
  chosen = sparse_dense.eligible(raters, max(feasible), needs_remainder)
  index = np.flatnonzero(chosen)
  units = sparse_dense.rater_votes(human_rows, label_set, evidence.utt_ids[index])
  dense_counts = evidence.n_ref[index] if separate else units.counts()
  dense_entropy = distributions.normalized_entropy(distributions.to_distribution(dense_counts))
  split = None if evidence.split is None else evidence.split[index]
  edges, edges_from = level_edges(dense_entropy, split, levels_from)
  levels = distributions.ambiguity_levels(dense_entropy, edges)
  n_s, p_s = evidence.n_s[index], evidence.p_s[index]
  conditions = (HUMAN, PROXY) + COMBINED
  sparse = {k: [] for k in feasible}
  target = {k: [] for k in feasible}
  for draw in sparse_dense.draws(
    units, feasible, repeats, seed, separate=dense_counts if separate else None, reference=dense_reference
  ):
    sparse[draw.k].append(draw.sparse)
    target[draw.k].append(distributions.to_distribution(draw.reference))
  weights = _level_weights(levels, resamples, seed)
  rows, tests = [], []
  progress = Progress(total=len(feasible) * len(conditions), unit='conditions', what='sparse-vs-dense')
  for k in feasible:
    reference = np.stack(target[k])
    estimates = {
      c: np.stack([combination.estimate(c, n_h, n_s, p_s) for n_h in sparse[k]]) for c in conditions
    }
    per_condition = {}
    for condition, estimate in estimates.items():
      for level, mask in _level_masks(levels).items():
        scored, parts = score_condition(
          reference[:, mask], estimate[:, mask], weights[level], SPARSE_METRICS, confidence
        )
        rows += [dict(k=k, condition=condition, level=level, **row) for row in scored]
        if level == ALL:
          per_condition[condition] = parts
      progress.update(1)
    tests += wilcoxon_rows(per_condition, HUMAN, levels, 'sparse_dense', k)
  progress.close()
  reference_name = 'separate' if separate else dense_reference
  return SparseDense(
    rows,
    tests,
    feasible,
    len(index),
    int((~chosen).sum()),
    reference_name,
    levels,
    edges,
    edges_from,
    tuple(notes),
  )


# ----------------------------------------------------------------------------------------------
# Outputs.


def _json_value(value):
  if isinstance(value, (float, np.floating)):
    return None if math.isnan(value) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


def write_rows(
  rows: Sequence[Mapping], columns: Sequence[str], out_dir: str, name: str, caption: str
) -> dict[str, str]:
  """Writes rows as <name>.csv, <name>.md and <name>.json in ``columns`` order; returns the paths.

  Missing values (None, NaN) are empty CSV cells, empty Markdown cells and JSON nulls.
  """
  ordered = [{c: _json_value(row.get(c)) for c in columns} for row in rows]
  paths = {ext: os.path.join(out_dir, f'{name}.{ext}') for ext in ('csv', 'md', 'json')}
  with open(paths['csv'], 'w', encoding='utf-8', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows({c: '' if v is None else v for c, v in row.items()} for row in ordered)
  with open(paths['md'], 'w', encoding='utf-8') as f:
    f.write(report_lib.markdown_table(report_lib.Table(caption, ordered)) + '\n')
  with open(paths['json'], 'w', encoding='utf-8') as f:
    json.dump(ordered, f, indent=1)
  return paths


def pivot(
  rows: Sequence[Mapping], index: Sequence[str], column: str, metric: str | None = None
) -> list[dict]:
  """A wide table for reading, with cells 'value [ci_low, ci_high]'.

  One row per distinct ``index`` key, one column per value of ``column``; rows of other metrics than
  ``metric`` (when given) are left out.
  """
  wide: dict = {}
  for row in rows:
    if metric is not None and row['metric'] != metric:
      continue
    key = tuple(row[i] for i in index)
    cell = (
      f'{report_lib.format_value(row["value"])} '
      f'[{report_lib.format_value(row["ci_low"])}, {report_lib.format_value(row["ci_high"])}]'
    )
    wide.setdefault(key, dict(zip(index, key)))[str(row[column])] = cell
  return list(wide.values())


def _examples(
  utt_ids: np.ndarray, levels: np.ndarray, reference: np.ndarray, estimate: np.ndarray, per_level: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
  """Per level, the utterances at evenly spaced quantiles of JS divergence (typical to worst)."""
  js = metrics.js_divergence(reference, estimate)
  chosen = []
  for level in LEVELS:
    members = np.flatnonzero(levels == level)
    if not members.size:
      continue
    ranked = members[np.argsort(js[members], kind='stable')]
    picks = np.unique(np.linspace(0, len(ranked) - 1, per_level + 2)[1:-1].round().astype(int))
    chosen += [(f'{utt_ids[i]} ({level}, JS {js[i]:.3f})', reference[i], estimate[i]) for i in ranked[picks]]
  return chosen


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything the analysis needs besides the tables (launch/analyze.py's flags).

  Attributes:
    label_set: the label set's name (or comma-separated labels).
    levels_from: split whose tertiles set the level edges ('all' or None: every utterance).
    sparse_k: the k of the sparse-vs-dense study (empty: no study).
    repeats: draws per k.
    bootstrap: bootstrap resamples.
    confidence: CI coverage.
    seed: seeds bootstrap and draws.
    synthetic_weight, mixture_lambda, kappa: the combination (kappa None: fitted).
    dense_reference: 'remainder' or 'all' when the human votes are the dense reference.
    examples_per_level: panels per level in the example plot.
  """

  label_set: str
  levels_from: str | None = 'train'
  sparse_k: tuple[int, ...] = (1, 2, 3, 4, 5)
  repeats: int = 5
  bootstrap: int = 1000
  confidence: float = 0.95
  seed: int = 0
  synthetic_weight: float = 1.0
  mixture_lambda: float = 0.5
  kappa: float | None = None
  dense_reference: str = sparse_dense.REMAINDER
  examples_per_level: int = 2


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The tables to analyse and a description of where they came from (shown in the report).

  Attributes:
    human: human votes.
    proxy: proxy votes or scores.
    reference: dense reference votes, or None.
    utterances: utterances with splits, or None.
    sources: name -> where each table came from (paths, corpus and rater pool).
    proxy_path: the proxy table's file, named in errors about it.
  """

  human: pa.Table
  proxy: pa.Table
  reference: pa.Table | None = None
  utterances: pa.Table | None = None
  sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
  proxy_path: str | None = None


def subsample(inputs: Inputs, max_items: int, seed: int) -> Inputs:
  """Inputs restricted to ``max_items`` utterances drawn at random (seeded) from the human votes."""
  ids = np.unique(tables.column(inputs.human, 'utt_id').astype(str))
  if len(ids) <= max_items:
    return inputs
  kept = pa.array(np.sort(np.random.default_rng(seed).choice(ids, max_items, replace=False)))

  def restrict(table):
    if table is None:
      return None
    return table.filter(pc.is_in(table.column('utt_id'), value_set=kept))

  return dataclasses.replace(
    inputs,
    human=restrict(inputs.human),
    proxy=restrict(inputs.proxy),
    reference=restrict(inputs.reference),
    utterances=restrict(inputs.utterances),
    sources={**inputs.sources, 'subsample': f'{max_items} utterances (seed {seed})'},
  )


def crema_d_inputs(path: str, human_pool: str = 'voice', proxy_pool: str = 'face') -> Inputs:
  """CREMA-D with one rater pool as the humans and another as the proxy (perax.data.corpora)."""
  from perax.data.corpora import load_corpus  # pylint: disable=g-import-not-at-top

  corpus = load_corpus('crema_d', path, modality=human_pool, reference_modality=proxy_pool)
  return Inputs(
    human=corpus.votes,
    proxy=corpus.reference_votes,
    utterances=corpus.utterances,
    sources={
      'corpus': f'CREMA-D at {path}',
      'human': f'{human_pool} rater pool',
      'proxy': f'{proxy_pool} rater pool',
    },
  )


@dataclasses.dataclass(frozen=True)
class Outputs:
  """Paths written by :func:`analyze`."""

  tables: Mapping[str, Mapping[str, str]]
  plots: Mapping[str, str]
  summary: str
  report: report_lib.ReportPaths


def analyze(inputs: Inputs, settings: Settings, out_dir: str, command: str = '') -> Outputs:
  """Runs both studies and writes tables (CSV, Markdown, JSON), plots (PNG) and the report.

  Args:
    inputs: the tables.
    settings: the analysis settings.
    out_dir: where everything goes (created).
    command: the command line, shown in the report.
  """
  started = time.time()
  os.makedirs(out_dir, exist_ok=True)
  label_set = labels_lib.get_label_set(settings.label_set)
  evidence = gather_evidence(
    inputs.human, inputs.proxy, label_set, inputs.reference, inputs.utterances, inputs.proxy_path
  )
  p_h = distributions.to_distribution(evidence.n_h)
  entropy = distributions.normalized_entropy(p_h)
  edges, edges_from = level_edges(entropy, evidence.split, settings.levels_from)
  levels = distributions.ambiguity_levels(entropy, edges)
  combination = fitted_combination(
    evidence, settings.levels_from, settings.synthetic_weight, settings.mixture_lambda, settings.kappa
  )
  print(
    f'analysing {len(evidence.utt_ids)} utterances; level edges {edges} ({edges_from}); '
    f'kappa {combination.kappa:.4g}',
    flush=True,
  )
  aligned = alignment(evidence, levels, combination, settings.bootstrap, settings.confidence, settings.seed)
  study = None
  if settings.sparse_k:
    study = sparse_vs_dense(
      evidence,
      inputs.human,
      label_set,
      combination,
      settings.sparse_k,
      settings.repeats,
      settings.bootstrap,
      settings.confidence,
      settings.seed,
      settings.levels_from,
      settings.dense_reference,
    )

  written = {
    'alignment': write_rows(
      aligned.rows, ROW_COLUMNS, out_dir, 'alignment', 'Alignment of each condition with the reference'
    ),
    'sparse_dense': write_rows(
      study.rows if study else [],
      SPARSE_COLUMNS,
      out_dir,
      'sparse_dense',
      'Sparse human votes against the dense reference',
    ),
    'wilcoxon': write_rows(
      aligned.wilcoxon + (study.wilcoxon if study else []),
      WILCOXON_COLUMNS,
      out_dir,
      'wilcoxon',
      'Paired Wilcoxon signed-rank tests against the human-only condition',
    ),
  }
  level_rows = [
    dict(level=level, n=int((levels == level).sum()), entropy_from=low, entropy_to=high)
    for level, low, high in zip(LEVELS, (0.0,) + edges, edges + (1.0,))
  ]
  written['levels'] = write_rows(
    level_rows,
    ('level', 'n', 'entropy_from', 'entropy_to'),
    out_dir,
    'levels',
    f'Ambiguity levels ({edges_from})',
  )

  reference_name = HUMAN if evidence.n_ref is None else 'reference'
  figures = {
    'ambiguity_histogram': plots.ambiguity_histogram(
      entropy, levels, edges, os.path.join(out_dir, 'ambiguity_histogram.png')
    ),
    'alignment_by_level': plots.metric_bars(
      aligned.rows, ALIGNMENT_METRICS, os.path.join(out_dir, 'alignment_by_level.png')
    ),
    'examples': plots.example_distributions(
      label_set.labels,
      _examples(
        evidence.utt_ids, levels, aligned.reference, aligned.estimates[PROXY], settings.examples_per_level
      ),
      (reference_name, PROXY),
      os.path.join(out_dir, 'examples.png'),
    ),
  }
  true = metrics.reference_labels(aligned.reference, 'first')
  predicted = distributions.majority(aligned.estimates[PROXY], 'first')
  num_labels = len(label_set)
  confusion = np.bincount(true * num_labels + predicted, minlength=num_labels**2).reshape(
    num_labels, num_labels
  )
  figures['majority_confusion'] = plots.confusion_matrix(
    confusion, label_set.labels, (reference_name, PROXY), os.path.join(out_dir, 'majority_confusion.png')
  )
  if study:
    for metric in ('js_divergence', 'kl'):
      figures[f'sparse_dense_{metric}'] = plots.sparse_dense_curves(
        study.rows, metric, os.path.join(out_dir, f'sparse_dense_{metric}.png')
      )

  summary = {
    'n_utterances': len(evidence.utt_ids),
    'left_out': dict(evidence.dropped),
    'votes_skipped': dict(evidence.skipped.counts),
    'label_set': label_set.name,
    'labels': list(label_set.labels),
    'edges': list(edges),
    'edges_from': edges_from,
    'level_counts': {level: int((levels == level).sum()) for level in LEVELS},
    'reference': evidence.n_ref is not None,
    'kappa': combination.kappa,
    'kappa_fitted': settings.kappa is None,
    'settings': dataclasses.asdict(settings),
    'sources': dict(inputs.sources),
    'sparse_dense': None
    if study is None
    else {
      'ks': list(study.ks),
      'n_utterances': study.n_items,
      'left_out': study.n_left_out,
      'reference': study.reference,
      'edges': list(study.edges),
      'edges_from': study.edges_from,
      'notes': list(study.notes),
    },
    'seconds': time.time() - started,
  }
  summary_path = os.path.join(out_dir, 'summary.json')
  with open(summary_path, 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2, default=_json_value)
  sections = report_sections(summary, aligned, study, figures, written, command, out_dir)
  paths = report_lib.write_report(out_dir, 'Proxy annotations against human distributions', sections)
  print(f'wrote {paths.html} and {paths.markdown} in {time.time() - started:.1f} s', flush=True)
  return Outputs(written, figures, summary_path, paths)


def report_sections(
  summary: Mapping,
  aligned: Alignment,
  study: SparseDense | None,
  figures: Mapping[str, str],
  written: Mapping[str, Mapping[str, str]],
  command: str,
  out_dir: str,
) -> list[report_lib.Section]:
  """The analysis report's sections: what ran, levels, alignment, tests, sparse-vs-dense, files."""
  settings = summary['settings']
  facts = {
    'command': command or '(library call)',
    **summary['sources'],
    'utterances analysed': summary['n_utterances'],
    'utterances left out': ', '.join(f'{n} {why}' for why, n in summary['left_out'].items()),
    'votes not counted': ', '.join(f'{n} x {why}' for why, n in summary['votes_skipped'].items()) or 'none',
    'label set': f'{summary["label_set"]} ({", ".join(summary["labels"])})',
    'kappa': (
      f'{summary["kappa"]:.4g} ('
      + ('fitted by empirical Bayes' if summary['kappa_fitted'] else 'given')
      + ')'
    ),
    'synthetic weight w': settings['synthetic_weight'],
    'mixture lambda': settings['mixture_lambda'],
    'bootstrap': f'{settings["bootstrap"]} resamples over utterances, '
    f'{settings["confidence"]:.0%} percentile intervals, seed {settings["seed"]}',
  }
  conditions = sorted({row['condition'] for row in aligned.rows})
  sections = [
    report_lib.Section(
      'What ran',
      paragraphs=(
        'Alignment reference: '
        + ('the separate dense reference votes.' if summary['reference'] else 'the human distribution.'),
        'Conditions: ' + '; '.join(f'{c}: {CONDITION_NOTES[c]}' for c in conditions) + '.',
      ),
      facts=facts,
    ),
    report_lib.Section(
      'Ambiguity levels',
      paragraphs=(
        f'Levels by the normalised entropy of the human distribution, {summary["edges_from"]}: '
        'low if e <= e1, medium if e1 < e <= e2, high otherwise.',
      ),
      tables=(report_lib.Table('Levels', _read_json(written['levels']['json'])),),
      figures=(
        report_lib.Figure('Normalised entropy of the human distributions', figures['ambiguity_histogram']),
      ),
    ),
    report_lib.Section(
      'Alignment',
      paragraphs=(
        'Each cell: the metric over all utterances of the level, and its bootstrap interval. '
        'JS divergence (base 2), KL(reference || estimate) and total variation: lower is better; '
        'Bhattacharyya, R^2, entropy correlations and majority accuracy: higher is better.',
      ),
      tables=tuple(
        report_lib.Table(
          f'{metric} by condition and level', pivot(aligned.rows, ('condition',), 'level', metric)
        )
        for metric in ALIGNMENT_METRICS
      ),
      figures=(
        report_lib.Figure('Metrics by level with confidence intervals', figures['alignment_by_level']),
        report_lib.Figure('Example distributions, reference against proxy', figures['examples']),
        report_lib.Figure('Majority label of the reference against the proxy', figures['majority_confusion']),
      ),
    ),
  ]
  tests = _read_json(written['wilcoxon']['json'])
  if tests:
    shown = [row for row in tests if row['metric'] == 'js_divergence' and row['level'] == ALL]
    sections.append(
      report_lib.Section(
        'Paired tests',
        paragraphs=(
          'Two-sided Wilcoxon signed-rank tests on per-utterance JS divergence against the human-only '
          'condition, over all levels (per level and for KL and BC in wilcoxon.csv); p-values are '
          'not adjusted for multiple comparisons.',
        ),
        tables=(report_lib.Table('Wilcoxon tests, JS divergence, all levels', shown),),
      )
    )
  if study is not None:
    reference_text = {
      sparse_dense.REMAINDER: 'the held-out remainder (the dense votes of the raters not drawn; '
      'it shrinks as k grows, so compare conditions at the same k)',
      sparse_dense.ALL: 'all dense votes (including the k drawn)',
      'separate': 'the separate dense reference votes',
    }[study.reference]
    sections.append(
      report_lib.Section(
        'Sparse versus dense',
        paragraphs=(
          f'k human raters drawn per utterance (nested draws, {settings["repeats"]} repeats), each '
          f'estimate scored against {reference_text}; levels from the dense distribution, '
          f'{study.edges_from}. {study.n_items} utterances with enough raters, {study.n_left_out} '
          'left out.',
          *study.notes,
        ),
        tables=tuple(
          report_lib.Table(
            f'{metric} against the dense reference by k',
            pivot(study.rows, ('condition', 'level'), 'k', metric),
          )
          for metric in ('js_divergence', 'kl')
        ),
        figures=tuple(
          report_lib.Figure(f'{metric} against the dense reference', figures[f'sparse_dense_{metric}'])
          for metric in ('js_divergence', 'kl')
        ),
      )
    )
  files = [
    dict(
      table=name,
      csv=os.path.relpath(paths['csv'], out_dir),
      markdown=os.path.relpath(paths['md'], out_dir),
      json=os.path.relpath(paths['json'], out_dir),
    )
    for name, paths in written.items()
  ]
  sections.append(report_lib.Section('Files', tables=(report_lib.Table('Tables written', files),)))
  return sections


def _read_json(path: str) -> list[dict]:
  with open(path, encoding='utf-8') as f:
    return json.load(f)
