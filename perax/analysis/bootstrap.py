"""Percentile bootstrap over utterances, with every metric a weighted sum of per-item ingredients.

B resamples of N utterance indices are drawn at once ([B, N], seeded) and turned into per-resample
utterance weights, so every metric of a condition is a matrix product of the weights with per-item
ingredients. Items are R repeats x N utterances (the repeats of the sparse-vs-dense study resample
with their utterance); an optional item mask [R, N] keeps only some (repeat, utterance) items, e.g.
those of one ambiguity level when the level depends on the draw. Point estimates are
:func:`perax.distributions.metrics.distribution_metrics` of the kept items.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from perax import distributions
from perax.distributions import metrics
from perax.distributions.levels import ALL, LEVELS

# Metrics that average a per-utterance value (perax.distributions.metrics' per-item functions).
PER_ITEM = {
  'js_divergence': metrics.js_divergence,
  'js_distance': metrics.js_distance,
  'kl': metrics.kl,
  'bhattacharyya': metrics.bhattacharyya,
  'total_variation': metrics.total_variation,
}
BOOTSTRAP_CHUNK = 256


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


def level_masks(levels: np.ndarray) -> dict[str, np.ndarray]:
  """{level: bool mask of ``levels == level``} for LEVELS, and ALL: every item; same shape as levels."""
  levels = np.asarray(levels, dtype=object)
  masks = {level: levels == level for level in LEVELS}
  masks[ALL] = np.ones(levels.shape, bool)
  return masks


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
    valid: [R, N] 1 where the ref majority is untied (metrics ref_ties="exclude"), else 0.
    mask: [R, N] 1 for the items scored, 0 for items left out (all 1 by default).
  """

  per_item: Mapping[str, np.ndarray]
  sse: np.ndarray
  sst: np.ndarray
  entropy_ref: np.ndarray
  entropy_pred: np.ndarray
  hit: np.ndarray
  valid: np.ndarray
  mask: np.ndarray


def ingredients(
  ref: np.ndarray, pred: np.ndarray, names: Sequence[str], mask: np.ndarray | None = None
) -> Ingredients:
  """The :class:`Ingredients` of ``pred`` against ``ref``, both [R, N, C] distributions.

  Rows are renormalised first, as perax.distributions.metrics does, so that entropies (and their
  ties) are bit-identical to those of :func:`perax.distributions.metrics.distribution_metrics`.
  ``mask`` [R, N] bool keeps some items only (None: all).
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
    mask=np.ones(shape) if mask is None else np.asarray(mask, np.float64).reshape(shape),
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

  With weights of ones this is the metric over all kept items (equal to perax.distributions.metrics);
  with bootstrap weights it is the metric of each resample. The sums behind the per-item means, R^2
  and accuracy come from one product of the weights with a [N, K] matrix of per-utterance sums of
  the kept items (the weights are read once: that product is memory-bound).
  """
  unknown = set(names) - set(PER_ITEM) - {'r2', 'accuracy', 'entropy_pearson', 'entropy_spearman'}
  if unknown:
    raise ValueError(f'unknown metrics {sorted(unknown)}')
  repeats = parts.sse.shape[0]
  mask = parts.mask
  linear = {'count': mask}
  linear.update({name: parts.per_item[name] * mask for name in names if name in PER_ITEM})
  if 'r2' in names:
    linear.update(sse=parts.sse * mask, sst=parts.sst * mask)
  if 'accuracy' in names:
    linear.update(hit=parts.hit * mask, valid=parts.valid * mask)
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
        tiled = np.tile(weights, (1, repeats)) * mask.ravel()[None]
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


def point_metrics(ref: np.ndarray, pred: np.ndarray, mask: np.ndarray | None = None) -> dict:
  """distribution_metrics over the kept items of [R, N, C] arrays (repeats stacked; mask [R, N])."""
  num_labels = ref.shape[-1]
  if mask is not None:
    mask = np.asarray(mask, bool)
    return metrics.distribution_metrics(ref[mask], pred[mask])
  return metrics.distribution_metrics(ref.reshape(-1, num_labels), pred.reshape(-1, num_labels))


def score_condition(
  ref: np.ndarray,
  pred: np.ndarray,
  weights: np.ndarray,
  names: Sequence[str],
  confidence: float,
  mask: np.ndarray | None = None,
) -> tuple[list[dict], Ingredients | None]:
  """Rows (metric, value, ci_low, ci_high, n, draws) of ``pred`` against ``ref`` ([R, N, C] each).

  Args:
    ref, pred: reference and estimate, R repeats of N utterances.
    weights: [B, N] bootstrap weights over the N utterances.
    names: the metrics.
    confidence: the interval's coverage, e.g. 0.95.
    mask: [R, N] bool, the (repeat, utterance) items scored; None scores all. Every utterance
      should have at least one kept item.

  Returns:
    one row per metric (n: utterances, draws: items scored), and the per-item ingredients (for
    paired tests; None without items).
  """
  n = ref.shape[1]
  draws = int(ref.shape[0] * n if mask is None else np.asarray(mask, bool).sum())
  if not n:
    empty = dict(value=math.nan, ci_low=math.nan, ci_high=math.nan, n=0, draws=0)
    return [dict(metric=m, **empty) for m in names], None
  parts = ingredients(ref, pred, names, mask)
  point = point_metrics(ref, pred, mask)
  samples = bootstrap_metrics(parts, weights, names)
  rows = []
  for name in names:
    low, high = percentile_interval(samples[name], confidence)
    rows.append(dict(metric=name, value=float(point[name]), ci_low=low, ci_high=high, n=n, draws=draws))
  return rows, parts


def level_bootstrap_weights(
  masks: Mapping[str, np.ndarray], resamples: int, seed: int
) -> dict[str, np.ndarray]:
  """Bootstrap weights [B, n_level] per level, resampling the level's utterances, seeded per level.

  Args:
    masks: level -> [N] or [R, N] bool membership; an utterance belongs to a level when any of its
      items does.
  """
  weights = {}
  for i, (level, mask) in enumerate(masks.items()):
    members = np.asarray(mask, bool).reshape(-1, np.shape(mask)[-1]).any(0)
    weights[level] = bootstrap_weights(int(members.sum()), resamples, np.random.default_rng([seed, i]))
  return weights
