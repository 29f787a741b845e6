"""Metrics of predicted emotion distributions against reference distributions (numpy).

All functions take ``ref`` and ``pred`` of shape [N, C]: rows are distributions over the C labels of
one label set (non-negative, finite, summing to 1 within ROW_SUM_TOLERANCE; rows are renormalised).
Per-item metrics return [N]; :func:`distribution_metrics` averages them over items.

Definitions (logs are natural unless stated):
  KL(ref || pred)   sum_c r_c log(r_c / q_c) with q = (pred + eps) / (1 + C eps), eps = KL_EPSILON;
                    0 log 0 = 0. The smoothing keeps KL finite where pred rules out a label.
  JS divergence     (KL(r || m) + KL(q || m)) / 2 with m = (r + q) / 2, in base 2, so in [0, 1].
  JS distance       sqrt(JS divergence), a metric, in [0, 1].
  Bhattacharyya     BC = sum_c sqrt(r_c q_c), in [0, 1], 1 iff r == q.
  total variation   TV = sum_c |r_c - q_c| / 2, in [0, 1].
  cosine            r . q / (|r| |q|), in [0, 1] for distributions.
  R^2               1 - sum (r - q)^2 / sum (r - mean(r))^2 over all items x classes, mean(r) the
                    mean of all N C entries (= 1 / C): predicting the uniform distribution scores 0.
  entropy r / rho   Pearson / Spearman (average ranks for ties) correlation of the normalised
                    entropies H / log C of ref and pred rows; NaN where either side is constant.
Classification, against the reference majority label (argmax of ref):
  ties: a reference row whose top labels tie (within perax.distributions.counting.TIE_TOLERANCE) is excluded
  from the classification metrics under ref_ties='exclude' (the default; counted as n_ties), or
  resolved to the first tied label under 'first'. The prediction is argmax pred (first on ties).
  accuracy              share of items whose predicted label is the reference label.
  unweighted accuracy   UA, the macro recall: mean over labels occurring in the reference of
                        recall = TP / (TP + FN).
  macro-F1              mean F1 = 2 TP / (2 TP + FP + FN) over labels occurring in the reference
                        or the prediction (as sklearn's f1_score(average='macro'),
                        zero_division=0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.stats

from perax.distributions import counting
from perax.distributions.levels import ALL, LEVELS

KL_EPSILON = 1e-6
ROW_SUM_TOLERANCE = 1e-4
REF_TIE_POLICIES = ('exclude', 'first')


def _check_pair(ref: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Validates two [N, C] distribution arrays and returns them renormalised, float64."""
  ref, pred = np.asarray(ref, np.float64), np.asarray(pred, np.float64)
  if ref.ndim != 2 or ref.shape != pred.shape:
    raise ValueError(f'ref and pred must both be [N, C], got {ref.shape} and {pred.shape}')
  for name, p in (('ref', ref), ('pred', pred)):
    if not np.isfinite(p).all() or (p < 0).any():
      raise ValueError(f'{name} has negative or non-finite entries (drop rows without evidence)')
    sums = p.sum(-1)
    if p.shape[0] and np.abs(sums - 1.0).max() > ROW_SUM_TOLERANCE:
      row = int(np.argmax(np.abs(sums - 1.0)))
      raise ValueError(f'{name} row {row} sums to {sums[row]}, not 1')
  return ref / ref.sum(-1, keepdims=True), pred / pred.sum(-1, keepdims=True)


def _xlogy_ratio(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """x log(x / y) elementwise with 0 log 0 = 0 (y > 0 wherever x > 0)."""
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0) / np.where(x > 0, y, 1.0)), 0.0)


def kl(ref: np.ndarray, pred: np.ndarray, eps: float = KL_EPSILON) -> np.ndarray:
  """KL(ref || pred) per item [N], nats, pred smoothed as (pred + eps) / (1 + C eps)."""
  ref, pred = _check_pair(ref, pred)
  smoothed = (pred + eps) / (1.0 + pred.shape[-1] * eps)
  return _xlogy_ratio(ref, smoothed).sum(-1)


def js_divergence(ref: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """Jensen-Shannon divergence per item [N], base 2, in [0, 1]."""
  ref, pred = _check_pair(ref, pred)
  middle = (ref + pred) / 2.0
  divergence = (_xlogy_ratio(ref, middle).sum(-1) + _xlogy_ratio(pred, middle).sum(-1)) / 2.0
  return np.clip(divergence / np.log(2.0), 0.0, 1.0)


def js_distance(ref: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """Jensen-Shannon distance per item [N]: sqrt of the base-2 divergence, in [0, 1]."""
  return np.sqrt(js_divergence(ref, pred))


def bhattacharyya(ref: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """Bhattacharyya coefficient per item [N], in [0, 1]."""
  ref, pred = _check_pair(ref, pred)
  return np.clip(np.sqrt(ref * pred).sum(-1), 0.0, 1.0)


def total_variation(ref: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """Total variation distance per item [N], in [0, 1]."""
  ref, pred = _check_pair(ref, pred)
  return np.abs(ref - pred).sum(-1) / 2.0


def cosine(ref: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """Cosine similarity per item [N], in [0, 1] for distributions."""
  ref, pred = _check_pair(ref, pred)
  norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(pred, axis=-1)
  return (ref * pred).sum(-1) / norms


def r2(ref: np.ndarray, pred: np.ndarray) -> float:
  """R^2 over all items x classes against the grand mean of ref (NaN if ref is constant)."""
  ref, pred = _check_pair(ref, pred)
  total = ((ref - ref.mean()) ** 2).sum()
  return float(1.0 - ((ref - pred) ** 2).sum() / total) if total > 0 else float('nan')


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation of two [N] arrays; NaN where either is constant or N < 2."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return float('nan')  # constant (tested exactly: x - mean(x) of equal values may not be 0)
  dx, dy = x - x.mean(), y - y.mean()
  norm = np.sqrt((dx * dx).sum() * (dy * dy).sum())
  return float(np.clip((dx * dy).sum() / norm, -1.0, 1.0)) if norm > 0 else float('nan')


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman rank correlation of two [N] arrays: Pearson of average ranks (ties share a rank)."""
  return pearson(scipy.stats.rankdata(x), scipy.stats.rankdata(y))


def reference_labels(ref: np.ndarray, ref_ties: str = 'exclude') -> np.ndarray:
  """Majority label index [N] of each reference row; -1 on ties under ref_ties='exclude'."""
  if ref_ties not in REF_TIE_POLICIES:
    raise ValueError(f'ref_ties must be one of {REF_TIE_POLICIES}, got {ref_ties!r}')
  return counting.majority(ref, tie_policy='none' if ref_ties == 'exclude' else 'first')


def classification_metrics(true: np.ndarray, predicted: np.ndarray, num_labels: int) -> dict[str, float]:
  """Accuracy, unweighted accuracy (macro recall) and macro-F1 of label indices [N] (module doc).

  Items with true == -1 are left out. All three are NaN when no item is left.
  """
  true, predicted = np.asarray(true, np.int64), np.asarray(predicted, np.int64)
  kept = true >= 0
  true, predicted = true[kept], predicted[kept]
  if not true.size:
    return {'accuracy': float('nan'), 'unweighted_accuracy': float('nan'), 'macro_f1': float('nan')}
  confusion = np.bincount(true * num_labels + predicted, minlength=num_labels * num_labels).reshape(
    num_labels, num_labels
  )
  hits = np.diag(confusion).astype(np.float64)
  support, predicted_count = confusion.sum(1), confusion.sum(0)
  in_ref = support > 0
  in_either = in_ref | (predicted_count > 0)
  f1 = 2 * hits / np.maximum(support + predicted_count, 1)
  return {
    'accuracy': float(hits.sum() / true.size),
    'unweighted_accuracy': float((hits[in_ref] / support[in_ref]).mean()),
    'macro_f1': float(f1[in_either].mean()),
  }


def distribution_metrics(
  ref: np.ndarray, pred: np.ndarray, eps: float = KL_EPSILON, ref_ties: str = 'exclude'
) -> dict[str, float]:
  """All metrics of the module docstring for one set of items, per-item ones averaged.

  Returns:
    dict with n, kl, js_divergence, js_distance, bhattacharyya, total_variation, cosine, r2,
    entropy_pearson, entropy_spearman, accuracy, unweighted_accuracy, macro_f1, n_ties
    (reference rows with tied top labels). Metrics of zero items are NaN.
  """
  ref, pred = _check_pair(ref, pred)
  n, num_labels = ref.shape
  true = reference_labels(ref, ref_ties)
  result = {'n': n}
  if not n:
    for name in (
      'kl',
      'js_divergence',
      'js_distance',
      'bhattacharyya',
      'total_variation',
      'cosine',
      'r2',
      'entropy_pearson',
      'entropy_spearman',
    ):
      result[name] = float('nan')
  else:
    result.update(
      {
        'kl': float(kl(ref, pred, eps).mean()),
        'js_divergence': float(js_divergence(ref, pred).mean()),
        'js_distance': float(js_distance(ref, pred).mean()),
        'bhattacharyya': float(bhattacharyya(ref, pred).mean()),
        'total_variation': float(total_variation(ref, pred).mean()),
        'cosine': float(cosine(ref, pred).mean()),
        'r2': r2(ref, pred),
      }
    )
    entropy_ref = counting.normalized_entropy(ref)
    entropy_pred = counting.normalized_entropy(pred)
    result['entropy_pearson'] = pearson(entropy_ref, entropy_pred)
    result['entropy_spearman'] = spearman(entropy_ref, entropy_pred)
  result.update(classification_metrics(true, counting.majority(pred, 'first'), num_labels))
  result['n_ties'] = int((counting.top_labels(ref).sum(-1) > 1).sum())
  return result


def metrics_by_level(
  ref: np.ndarray,
  pred: np.ndarray,
  levels: Sequence[str] | np.ndarray,
  eps: float = KL_EPSILON,
  ref_ties: str = 'exclude',
) -> dict[str, Mapping[str, float]]:
  """:func:`distribution_metrics` per ambiguity level and over all items.

  Args:
    ref, pred: [N, C] distributions.
    levels: [N] level of each item (low | medium | high; None for items without a level, which
      count only in 'all').

  Returns:
    {'low': {...}, 'medium': {...}, 'high': {...}, 'all': {...}}; an empty level has n = 0 and NaNs.
  """
  ref, pred = _check_pair(ref, pred)
  levels = np.asarray(levels, dtype=object)
  if levels.shape != (ref.shape[0],):
    raise ValueError(f'levels must be [N] = [{ref.shape[0]}], got {levels.shape}')
  result = {
    level: distribution_metrics(ref[levels == level], pred[levels == level], eps, ref_ties)
    for level in LEVELS
  }
  result[ALL] = distribution_metrics(ref, pred, eps, ref_ties)
  return result
