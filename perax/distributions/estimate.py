"""Emotion distributions from votes: counting, combining human and synthetic evidence, ambiguity.

Everything here is numpy over [N, C] arrays (N utterances, C labels of a
:class:`perax.data.labels.LabelSet`, in the set's order) and pyarrow for tables; a million votes are
counted in one vectorised pass.

Conventions:
- counts are weighted vote counts (the votes table's ``weight``), float64 [N, C]; N_h, N_s are
  row sums.
- A row with no evidence has no distribution: :func:`to_distribution` gives NaN there (never
  uniform, which would read as "maximally ambiguous"), and every function passes NaN rows through.
- Normalised entropy H(p) / log C is in [0, 1]; ambiguity levels come from the HUMAN distribution:
  ``low`` if e <= e1, ``medium`` if e1 < e <= e2, ``high`` if e > e2. The edges are observed entropy
  values chosen to make the levels as close to thirds as ties allow (see :func:`tertile_edges`), so
  utterances with equal entropy always share a level.

Combining human counts n_h with synthetic evidence p_s (or counts n_s), :func:`combine_evidence`:
  pooled:    p = (n_h + w n_s) / (N_h + w N_s)
  mixture:   p = lambda p_h + (1 - lambda) p_s
  dirichlet: p = (n_h + kappa p_s) / (N_h + kappa), kappa by empirical Bayes (:func:`fit_kappa`).

distributions.parquet (:func:`build_distributions`) has the columns
  utt_id, n_human, n_synthetic, p_<label>..., entropy, entropy_human, ambiguity, majority
and, with ``keep_components``, ph_<label>... (human) and ps_<label>... (synthetic) after them.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.optimize

from perax.core import atomic
from perax.core.errors import InputError, SkipCounter
from perax.data import labels as labels_lib
from perax.data import tables
from perax.distributions.levels import LEVELS, ambiguity_levels, tertile_edges

COMBINE_MODES = ('none', 'pooled', 'mixture', 'dirichlet')
TIE_POLICIES = ('first', 'random', 'none')

# Ties between top labels: p[c] >= max(p) - TIE_TOLERANCE (counts over a common total tie exactly).
TIE_TOLERANCE = 1e-12
# Synthetic probabilities are floored at this value inside the kappa likelihood only, so that a
# human vote for a label the proxy rules out does not make the likelihood -inf for every kappa.
KAPPA_PS_FLOOR = 1e-6
KAPPA_BOUNDS = (1e-3, 1e4)

SKIP_INVALID = 'invalid label'
SKIP_OUTSIDE = 'label outside the label set'
SKIP_UNKNOWN_UTT = 'utt_id not among the utterances'
SKIP_SYNTHETIC_WITH_SCORES = 'synthetic vote unused: scores are the synthetic evidence'

_EXAMPLES_PER_REASON = 3


def resolve_label_set(label_set: labels_lib.LabelSet | str) -> labels_lib.LabelSet:
  """A LabelSet, given one or a name (or comma-separated labels) for labels.get_label_set."""
  return labels_lib.get_label_set(label_set) if isinstance(label_set, str) else label_set


# ----------------------------------------------------------------------------------------------
# Counting.


def _count_skipped(
  skipped: SkipCounter | None, reason: str, mask: np.ndarray, utt_col: pa.Array, label_col: pa.ChunkedArray
) -> None:
  """Records the votes under ``mask`` as skipped for ``reason`` (a warning when nobody collects)."""
  n = int(mask.sum())
  if not n:
    return
  where = pa.array(np.flatnonzero(mask)[:_EXAMPLES_PER_REASON])
  examples = [
    f'item {utt!r}: {reason} ({label!r})'
    for utt, label in zip(utt_col.take(where).to_pylist(), label_col.take(where).to_pylist())
  ]
  if skipped is None:
    logging.warning('vote_counts: skipped %d votes (%s); first: %s', n, reason, examples[0])
    return
  skipped.counts[reason] += n
  room = max(skipped.max_examples - len(skipped.examples), 0)
  skipped.examples.extend(examples[:room])


def vote_counts(
  votes: pa.Table,
  label_set: labels_lib.LabelSet | str,
  utt_ids: Sequence[str] | np.ndarray | None = None,
  source: str | None = None,
  skipped: SkipCounter | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Weighted vote counts per utterance and label.

  Votes whose label is INVALID (or null) or outside the label set (merges applied), and votes for
  utterances outside ``utt_ids``, are not counted: they are recorded in ``skipped`` by reason (or
  logged as a warning when ``skipped`` is None), never dropped silently.

  Args:
    votes: a table with at least utt_id, label and weight (perax.data.tables.VOTE_SCHEMA).
    label_set: the labels to count, or a name for perax.data.labels.get_label_set.
    utt_ids: the rows of the result, in this order (utterances without votes get zero rows); None
      means the utterances of the counted votes, in order of first appearance.
    source: count only votes of this source ('human' or 'synthetic'); others are filtered out on
      purpose and not reported as skipped. None counts all.
    skipped: collects the skipped votes.

  Returns:
    utt_ids [N] object array of str, counts [N, C] float64 (non-negative; row sums are N_h).

  Raises:
    InputError: a missing column, a null utt_id, or a negative or non-finite weight.
  """
  label_set = resolve_label_set(label_set)
  for name in ('utt_id', 'label', 'weight'):
    if name not in votes.column_names:
      raise InputError(f'votes have no column {name!r}')
  if source is not None:
    votes = votes.filter(pc.equal(votes.column('source'), source))
  utt_col = votes.column('utt_id').combine_chunks()
  if utt_col.null_count:
    raise InputError('votes have a null utt_id')
  weights = votes.column('weight').to_numpy().astype(np.float64)
  bad_weight = ~np.isfinite(weights) | (weights < 0)
  if bad_weight.any():
    i = int(np.flatnonzero(bad_weight)[0])
    raise InputError(f'vote weight {weights[i]} is not a finite non-negative number', item=utt_col[i].as_py())
  encoded = pc.dictionary_encode(utt_col)
  vote_utt = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
  vote_ids = encoded.dictionary.to_numpy(zero_copy_only=False)
  if utt_ids is None:
    row_ids = vote_ids.astype(object)
    row_of_vote = vote_utt
  else:
    row_ids = np.asarray(utt_ids, dtype=object)
    position = pc.index_in(encoded.dictionary, value_set=pa.array(row_ids, type=pa.string()))
    row_of_dict = position.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    row_of_vote = row_of_dict[vote_utt]
  label_col = votes.column('label')
  label_index = label_set.index(label_col).astype(np.int64)
  num_labels = len(label_set)
  if (label_index < 0).any() or (row_of_vote < 0).any():
    invalid = pc.fill_null(pc.equal(label_col, labels_lib.INVALID), True).to_numpy(zero_copy_only=False)
    unknown_utt = row_of_vote < 0
    _count_skipped(skipped, SKIP_UNKNOWN_UTT, unknown_utt, utt_col, label_col)
    _count_skipped(skipped, SKIP_INVALID, ~unknown_utt & invalid, utt_col, label_col)
    _count_skipped(skipped, SKIP_OUTSIDE, ~unknown_utt & ~invalid & (label_index < 0), utt_col, label_col)
  keep = (label_index >= 0) & (row_of_vote >= 0)
  flat = row_of_vote[keep] * num_labels + label_index[keep]
  counts = np.bincount(flat, weights=weights[keep], minlength=len(row_ids) * num_labels)
  return row_ids, counts.astype(np.float64).reshape(len(row_ids), num_labels)


def to_distribution(counts: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
  """Counts [N, C] -> distributions [N, C] with additive smoothing: (n + s) / (N + C s).

  Rows with no evidence (zero counts and s == 0) are NaN: no votes is not a uniform opinion.
  With s > 0 such rows are uniform, as the formula says.
  """
  if smoothing < 0:
    raise ValueError(f'smoothing must be >= 0, got {smoothing}')
  counts = np.asarray(counts, dtype=np.float64)
  smoothed = counts + smoothing
  total = smoothed.sum(-1, keepdims=True)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(total > 0, smoothed / np.where(total > 0, total, 1.0), np.nan)


# ----------------------------------------------------------------------------------------------
# Summaries of one distribution.


def normalized_entropy(p: np.ndarray) -> np.ndarray:
  """H(p) / log C for distributions [N, C] -> [N] in [0, 1] (0 log 0 = 0; NaN rows give NaN).

  Each row is sorted before summing, so rows that are permutations of each other (the same vote
  pattern on different labels) get bit-identical entropies and therefore the same ambiguity level.
  """
  p = np.sort(np.asarray(p, dtype=np.float64), axis=-1)
  num_labels = p.shape[-1]
  if num_labels < 2:
    return np.where(np.isnan(p).any(-1), np.nan, 0.0)
  with np.errstate(divide='ignore', invalid='ignore'):
    terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
  entropy = terms.sum(-1) / math.log(num_labels)
  entropy = np.clip(entropy, 0.0, 1.0)
  return np.where(np.isnan(p).any(-1), np.nan, entropy)


def top_labels(p: np.ndarray) -> np.ndarray:
  """[N, C] bool: the labels within TIE_TOLERANCE of each row's maximum (all False on NaN rows)."""
  p = np.asarray(p, dtype=np.float64)
  with np.errstate(invalid='ignore'):
    return p >= np.nanmax(np.where(np.isnan(p), -np.inf, p), axis=-1, keepdims=True) - TIE_TOLERANCE


def majority(p: np.ndarray, tie_policy: str = 'first', seed: int = 0) -> np.ndarray:
  """The majority label index of each distribution [N, C] -> [N] int64.

  Tie policies (a tie: several labels within TIE_TOLERANCE of the maximum):
    first:  the tied label that comes first in label-set order;
    random: one of the tied labels uniformly at random, from ``seed`` (deterministic);
    none:   -1 for tied rows.
  NaN rows give -1 under every policy.
  """
  if tie_policy not in TIE_POLICIES:
    raise ValueError(f'tie_policy must be one of {TIE_POLICIES}, got {tie_policy!r}')
  p = np.asarray(p, dtype=np.float64)
  top = top_labels(p)
  num_top = top.sum(-1)
  if tie_policy == 'random':
    keys = np.random.default_rng(seed).random(p.shape)
    result = np.argmax(np.where(top, keys, -1.0), axis=-1)
  else:
    result = np.argmax(top, axis=-1)
  if tie_policy == 'none':
    result = np.where(num_top > 1, -1, result)
  return np.where(num_top == 0, -1, result).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Combining human and synthetic evidence.


def pooled(n_h: np.ndarray, n_s: np.ndarray, weight: float) -> np.ndarray:
  """(n_h + w n_s) / (N_h + w N_s) for counts [N, C]; NaN where there is no evidence at all."""
  if weight < 0:
    raise ValueError(f'synthetic weight must be >= 0, got {weight}')
  return to_distribution(np.asarray(n_h, np.float64) + weight * np.asarray(n_s, np.float64))


def mixture(p_h: np.ndarray, p_s: np.ndarray, lam: float) -> np.ndarray:
  """lambda p_h + (1 - lambda) p_s for distributions [N, C]; a NaN side leaves the other one."""
  if not 0.0 <= lam <= 1.0:
    raise ValueError(f'mixture lambda must be in [0, 1], got {lam}')
  p_h, p_s = np.asarray(p_h, np.float64), np.asarray(p_s, np.float64)
  mixed = lam * p_h + (1.0 - lam) * p_s
  mixed = np.where(np.isnan(p_h), p_s, mixed)
  return np.where(np.isnan(p_s), p_h, mixed)


def dirichlet_posterior(n_h: np.ndarray, p_s: np.ndarray, kappa: float) -> np.ndarray:
  """(n_h + kappa p_s) / (N_h + kappa): the posterior mean under a Dirichlet(kappa p_s) prior.

  Rows with no human votes take p_s; rows without synthetic evidence (NaN p_s) take the human
  distribution n_h / N_h. kappa = inf gives p_s wherever p_s exists.
  """
  if not kappa >= 0:
    raise ValueError(f'kappa must be >= 0, got {kappa}')
  n_h, p_s = np.asarray(n_h, np.float64), np.asarray(p_s, np.float64)
  total_h = n_h.sum(-1, keepdims=True)
  if math.isinf(kappa):
    posterior = p_s
  else:
    with np.errstate(invalid='ignore', divide='ignore'):
      posterior = (n_h + kappa * p_s) / (total_h + kappa)
  posterior = np.where(total_h > 0, posterior, p_s)
  return np.where(np.isnan(p_s), to_distribution(n_h), posterior)


def kappa_log_likelihood(log_kappa: np.ndarray | float, n_h: np.ndarray, p_s: np.ndarray) -> np.ndarray:
  """Leave-one-vote-out log-likelihood of the human votes under the Dirichlet combination.

  Each human vote for label c of utterance i is predicted from the other votes:
  (n_h[i, c] - 1 + kappa p_s[i, c]) / (N_h[i] - 1 + kappa); the result sums the log over all votes
  (counts act as numbers of unit votes; a fractional count c < 1 leaves max(c - 1, 0)). Rows with no
  human votes or NaN p_s do not contribute; p_s is floored at KAPPA_PS_FLOOR and renormalised.

  Args:
    log_kappa: scalar or [K] values of log kappa.
    n_h: human counts [N, C].
    p_s: synthetic distributions [N, C].

  Returns:
    The summed log-likelihood, shape of ``log_kappa``.
  """
  n_h, p_s = np.asarray(n_h, np.float64), np.asarray(p_s, np.float64)
  rows = (n_h.sum(-1) > 0) & ~np.isnan(p_s).any(-1)
  n_h, p_s = n_h[rows], np.maximum(p_s[rows], KAPPA_PS_FLOOR)
  p_s = p_s / p_s.sum(-1, keepdims=True)
  kappa = np.exp(np.asarray(log_kappa, np.float64))[..., None, None]
  held_out = np.maximum(n_h - 1.0, 0.0)
  others = np.maximum(n_h.sum(-1, keepdims=True) - 1.0, 0.0)
  log_p = np.log(held_out + kappa * p_s) - np.log(others + kappa)
  return np.where(n_h > 0, n_h * log_p, 0.0).sum((-2, -1))


def fit_kappa(n_h: np.ndarray, p_s: np.ndarray, bounds: tuple[float, float] = KAPPA_BOUNDS) -> float:
  """kappa maximising :func:`kappa_log_likelihood`, by a bounded 1-D search on log kappa.

  A proxy that predicts the held-out human votes well pushes kappa up (to the upper bound where it
  is as good as the votes themselves), a poor one down; both bounds are legitimate answers.

  Raises:
    ValueError: no utterance has both a human vote and a synthetic distribution.
  """
  n_h, p_s = np.asarray(n_h, np.float64), np.asarray(p_s, np.float64)
  if not ((n_h.sum(-1) > 0) & ~np.isnan(p_s).any(-1)).any():
    raise ValueError('fit_kappa needs utterances with both human votes and synthetic evidence')
  low, high = math.log(bounds[0]), math.log(bounds[1])
  result = scipy.optimize.minimize_scalar(
    lambda log_kappa: -float(kappa_log_likelihood(log_kappa, n_h, p_s)),
    bounds=(low, high),
    method='bounded',
    options={'xatol': 1e-4},
  )
  # The bounded search never evaluates the bounds themselves; a monotone likelihood belongs there.
  candidates = [low, float(result.x), high]
  values = kappa_log_likelihood(np.array(candidates), n_h, p_s)
  return float(math.exp(candidates[int(np.argmax(values))]))


def combine_evidence(
  mode: str,
  n_h: np.ndarray,
  n_s: np.ndarray | None = None,
  p_s: np.ndarray | None = None,
  *,
  synthetic_weight: float = 1.0,
  mixture_lambda: float = 0.5,
  kappa: float | None = None,
  smoothing: float = 0.0,
) -> tuple[np.ndarray, float | None]:
  """Combines human counts with synthetic evidence into distributions [N, C].

  Args:
    mode: 'none' (human only), 'pooled', 'mixture' or 'dirichlet' (formulas: module docstring).
    n_h: human counts [N, C].
    n_s: synthetic counts [N, C]; pooled needs them (derive them from scores with
      :func:`synthetic_evidence`).
    p_s: synthetic distributions [N, C] (NaN rows: none); defaults to n_s normalised.
    synthetic_weight: w, the weight of one synthetic vote (pooled).
    mixture_lambda: lambda, the weight of the human distribution (mixture).
    kappa: the Dirichlet prior strength; None fits it with :func:`fit_kappa`.
    smoothing: additive smoothing of the human counts (and of the pooled counts) before combining.

  Returns:
    p [N, C] (NaN rows where there is no evidence), and kappa (dirichlet) or None.
  """
  if mode not in COMBINE_MODES:
    raise ValueError(f'combine must be one of {COMBINE_MODES}, got {mode!r}')
  n_h = np.asarray(n_h, np.float64)
  if mode == 'none':
    return to_distribution(n_h, smoothing), None
  if p_s is None:
    if n_s is None:
      raise ValueError(f'combine={mode!r} needs synthetic counts or distributions')
    p_s = to_distribution(n_s)
  if mode == 'pooled':
    if n_s is None:
      raise ValueError('combine=pooled needs synthetic counts')
    pooled_counts = n_h + synthetic_weight * np.asarray(n_s, np.float64)
    return to_distribution(pooled_counts, smoothing), None
  if mode == 'mixture':
    return mixture(to_distribution(n_h, smoothing), p_s, mixture_lambda), None
  if kappa is None:
    kappa = fit_kappa(n_h, p_s)
  smoothed = np.where(n_h.sum(-1, keepdims=True) > 0, n_h + smoothing, n_h)
  return dirichlet_posterior(smoothed, p_s, kappa), kappa


# ----------------------------------------------------------------------------------------------
# Synthetic evidence from score tables.


def scores_distribution(
  scores: pa.Table, label_set: labels_lib.LabelSet | str, path: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Averages proxy scores over prompts: p_s per utterance.

  Args:
    scores: a score-mode table with utt_id, prompt_id and p_<label> for exactly the labels of the
      set (any order). Each row is renormalised to sum to 1 before averaging.
    label_set: the labels, or a name for perax.data.labels.get_label_set.
    path: the file the table came from, named in errors.

  Returns:
    utt_ids [N] (first appearance order), p_s [N, C] float64, n_prompts [N] int64 (rows averaged).

  Raises:
    InputError: missing or extra p_<label> columns, or a row with a negative, non-finite or all-zero
      score.
  """
  label_set = resolve_label_set(label_set)
  wanted = tables.label_columns(label_set.labels)
  present = [c for c in scores.column_names if c.startswith('p_')]
  missing, extra = sorted(set(wanted) - set(present)), sorted(set(present) - set(wanted))
  if 'utt_id' not in scores.column_names or missing or extra:
    raise InputError(
      f'scores need utt_id and exactly the columns {wanted}; missing '
      f'{missing + ([] if "utt_id" in scores.column_names else ["utt_id"])}, '
      f'extra {extra}',
      path=path,
    )
  values = np.stack(
    [scores.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in wanted], axis=-1
  )
  totals = values.sum(-1)
  bad = ~np.isfinite(values).all(-1) | (values < 0).any(-1) | ~(totals > 0)
  utt_col = scores.column('utt_id').combine_chunks()
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise InputError(
      f'score row {i} is not a non-negative, non-zero distribution: {values[i].tolist()}',
      path=path,
      item=utt_col[i].as_py(),
    )
  encoded = pc.dictionary_encode(utt_col)
  rows = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
  utt_ids = encoded.dictionary.to_numpy(zero_copy_only=False).astype(object)
  num_labels = len(wanted)
  normalised = values / totals[:, None]
  sums = np.stack(
    [np.bincount(rows, weights=normalised[:, c], minlength=len(utt_ids)) for c in range(num_labels)], axis=-1
  )
  n_prompts = np.bincount(rows, minlength=len(utt_ids))
  return utt_ids, sums / n_prompts[:, None], n_prompts


def align(
  utt_ids: np.ndarray, source_ids: np.ndarray, values: np.ndarray, fill: float = np.nan
) -> np.ndarray:
  """Rows of ``values`` (keyed by ``source_ids``) in ``utt_ids`` order; ``fill`` where absent."""
  position = pc.index_in(
    pa.array(np.asarray(utt_ids, object), type=pa.string()),
    value_set=pa.array(np.asarray(source_ids, object), type=pa.string()),
  )
  index = position.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
  values = np.asarray(values)
  out = np.full((len(index),) + values.shape[1:], fill, dtype=np.result_type(values, type(fill)))
  out[index >= 0] = values[index[index >= 0]]
  return out


# ----------------------------------------------------------------------------------------------
# The distributions table.


def _edges_for(
  entropy_h: np.ndarray,
  utt_ids: np.ndarray,
  utterances: pa.Table | None,
  levels_from_split: str | None,
  fixed_edges: tuple[float, float] | None,
) -> tuple[tuple[float, float], str]:
  """Level edges and a description of where they came from."""
  if fixed_edges is not None:
    return (float(fixed_edges[0]), float(fixed_edges[1])), 'fixed'
  if levels_from_split in (None, 'all') or utterances is None:
    if not np.isfinite(entropy_h).any():
      raise InputError('no utterance has human votes to set the ambiguity level edges')
    return tertile_edges(entropy_h), f'tertiles of all {int(np.isfinite(entropy_h).sum())} items'
  split = align(
    utt_ids, tables.column(utterances, 'utt_id'), tables.column(utterances, 'split').astype(object), fill=None
  )
  chosen = (split == levels_from_split) & np.isfinite(entropy_h)
  if not chosen.any():
    known = sorted({str(s) for s in tables.column(utterances, 'split')})
    raise InputError(
      f'no utterance of split {levels_from_split!r} has human votes to set the level edges; splits: {known}'
    )
  return (
    tertile_edges(entropy_h[chosen]),
    f'tertiles of split {levels_from_split} ({int(chosen.sum())} items)',
  )


def synthetic_evidence(
  utt_ids: np.ndarray,
  label_set: labels_lib.LabelSet | str,
  synthetic_votes: pa.Table | None,
  synthetic_scores: pa.Table | None,
  skipped: SkipCounter,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Synthetic counts n_s, distributions p_s [N, C] and evidence sizes [N] for ``utt_ids``.

  From votes: n_s are the counts and the size is N_s. From scores (averaged over prompts): each
  scored prompt counts as one expected vote, n_s = n_prompts p_s, and the size is n_prompts. Rows
  without synthetic evidence have zero counts, NaN p_s and size 0.
  """
  label_set = resolve_label_set(label_set)
  num_labels = len(label_set)
  if synthetic_votes is not None and synthetic_scores is not None:
    raise InputError('give synthetic votes or synthetic scores, not both')
  if synthetic_scores is not None:
    score_ids, score_p, n_prompts = scores_distribution(synthetic_scores, label_set)
    p_s = align(utt_ids, score_ids, score_p)
    size = align(utt_ids, score_ids, n_prompts.astype(np.float64), fill=0.0)
    return np.nan_to_num(p_s) * size[:, None], p_s, size
  if synthetic_votes is None:
    return (
      np.zeros((len(utt_ids), num_labels)),
      np.full((len(utt_ids), num_labels), np.nan),
      np.zeros(len(utt_ids)),
    )
  _, n_s = vote_counts(synthetic_votes, label_set, utt_ids, source=tables.SYNTHETIC, skipped=skipped)
  return n_s, to_distribution(n_s), n_s.sum(-1)


def build_distributions(
  human_votes: pa.Table,
  synthetic_votes: pa.Table | None = None,
  synthetic_scores: pa.Table | None = None,
  *,
  label_set: labels_lib.LabelSet | str,
  combine: str = 'none',
  synthetic_weight: float = 1.0,
  mixture_lambda: float = 0.5,
  kappa: float | None = None,
  smoothing: float = 0.0,
  utterances: pa.Table | None = None,
  levels_from_split: str | None = 'train',
  fixed_edges: tuple[float, float] | None = None,
  tie_policy: str = 'random',
  seed: int = 0,
  keep_components: bool = False,
) -> tuple[pa.Table, dict]:
  """The distributions table (columns in the module docstring) and a JSON-ready info dict.

  Args:
    human_votes: a votes table; its human rows are the human evidence, and, when
      ``synthetic_votes`` and ``synthetic_scores`` are both None, its synthetic rows are the
      synthetic evidence (so one mixed table can be passed). With ``synthetic_scores`` its
      synthetic rows are unused and counted as skipped.
    synthetic_votes: synthetic votes (its synthetic rows are used).
    synthetic_scores: score-mode proxy output (utt_id, prompt_id, p_<label>), averaged over prompts.
    label_set: the labels, or a name for perax.data.labels.get_label_set.
    combine: 'none' | 'pooled' | 'mixture' | 'dirichlet' (see :func:`combine_evidence`).
    synthetic_weight, mixture_lambda, kappa, smoothing: see :func:`combine_evidence`.
    utterances: optional utterances table: rows follow its order, votes for other utterances are
      skipped (and counted), and its ``split`` column serves ``levels_from_split``.
    levels_from_split: the split whose human-entropy tertiles set the level edges; None or 'all'
      uses every item (as does a missing ``utterances`` table).
    fixed_edges: fixed (e1, e2) thresholds instead of tertiles.
    tie_policy, seed: majority tie policy (see :func:`majority`); ties are counted in the info.
    keep_components: also write ph_<label> (human) and ps_<label> (synthetic) columns.

  Returns:
    (table, info). Rows: utterances with evidence (human votes, or with combining also synthetic
    evidence); the others are counted in info['n_without_evidence']. ``p_<label>`` is the combined
    distribution (human only for 'none'); ``entropy`` is its normalised entropy; ``entropy_human``
    and ``ambiguity`` come from the unsmoothed human distribution (ambiguity null without human
    votes); ``n_synthetic`` is the synthetic evidence size (votes, or scored prompts).
    info holds: label_set, labels, combine, kappa, edges, edges_from, n_items, n_without_evidence,
    level_counts, n_without_human (rows with a null level), majority_counts, majority_ties,
    tie_policy, skipped ({reason: count}), skipped_examples.
  """
  label_set = resolve_label_set(label_set)
  skipped = SkipCounter()
  if utterances is not None:
    row_ids = tables.column(utterances, 'utt_id').astype(object)
  else:
    seen = [human_votes.column('utt_id')]
    if synthetic_votes is not None:
      seen.append(synthetic_votes.column('utt_id'))
    if synthetic_scores is not None and combine != 'none':
      seen.append(synthetic_scores.column('utt_id'))
    row_ids = (
      pc.unique(pa.chunked_array([c.cast(pa.string()) for c in seen]))
      .to_numpy(zero_copy_only=False)
      .astype(object)
    )
  if synthetic_votes is None and synthetic_scores is None:
    synthetic_votes = human_votes
  elif synthetic_votes is None:
    synthetic_rows = pc.equal(human_votes.column('source'), tables.SYNTHETIC).to_numpy(zero_copy_only=False)
    _count_skipped(
      skipped,
      SKIP_SYNTHETIC_WITH_SCORES,
      synthetic_rows,
      human_votes.column('utt_id'),
      human_votes.column('label'),
    )
  _, n_h = vote_counts(human_votes, label_set, row_ids, source=tables.HUMAN, skipped=skipped)
  n_s, p_s, synthetic_size = synthetic_evidence(
    row_ids, label_set, synthetic_votes, synthetic_scores, skipped
  )
  if combine != 'none' and np.isnan(p_s).all():
    raise InputError(
      f'combine={combine!r} needs synthetic evidence, but no utterance has synthetic votes or scores'
    )
  p, kappa = combine_evidence(
    combine,
    n_h,
    n_s,
    p_s,
    synthetic_weight=synthetic_weight,
    mixture_lambda=mixture_lambda,
    kappa=kappa,
    smoothing=smoothing,
  )
  keep = ~np.isnan(p).any(-1)
  p_h = to_distribution(n_h)
  entropy_h = normalized_entropy(p_h)
  edges, edges_from = _edges_for(entropy_h[keep], row_ids[keep], utterances, levels_from_split, fixed_edges)
  p, p_h, p_s, entropy_h = p[keep], p_h[keep], p_s[keep], entropy_h[keep]
  levels = ambiguity_levels(entropy_h, edges)
  top = majority(p, tie_policy=tie_policy, seed=seed)
  majority_names = np.asarray(label_set.labels + (None,), dtype=object)[top]
  columns = {
    'utt_id': pa.array(row_ids[keep], type=pa.string()),
    'n_human': n_h[keep].sum(-1),
    'n_synthetic': synthetic_size[keep],
  }
  columns.update(zip(tables.label_columns(label_set.labels), p.T))
  columns.update(
    {
      'entropy': normalized_entropy(p),
      'entropy_human': entropy_h,
      'ambiguity': pa.array(levels, type=pa.string()),
      'majority': pa.array(majority_names, type=pa.string()),
    }
  )
  if keep_components:
    columns.update(zip((f'ph_{label}' for label in label_set.labels), p_h.T))
    columns.update(zip((f'ps_{label}' for label in label_set.labels), p_s.T))
  table = pa.table(columns)
  info = {
    'label_set': label_set.name,
    'labels': list(label_set.labels),
    'combine': combine,
    'kappa': kappa,
    'edges': list(edges),
    'edges_from': edges_from,
    'n_items': int(keep.sum()),
    'n_without_evidence': int((~keep).sum()),
    'level_counts': {level: int((levels == level).sum()) for level in LEVELS},
    'n_without_human': int(sum(level is None for level in levels)),
    'majority_counts': {label: int((majority_names == label).sum()) for label in label_set.labels},
    'majority_ties': int((top_labels(p).sum(-1) > 1).sum()),
    'tie_policy': tie_policy,
    'skipped': dict(skipped.counts),
    'skipped_examples': list(skipped.examples),
  }
  return table, info


def write_distributions(table: pa.Table, info: Mapping, out_dir: str) -> tuple[str, str]:
  """Writes <out_dir>/distributions.parquet and <out_dir>/distributions.json; returns both paths."""
  parquet_path = tables.write_table(table, os.path.join(out_dir, 'distributions.parquet'))
  json_path = atomic.write_text(
    os.path.join(out_dir, 'distributions.json'), json.dumps(info, indent=2, sort_keys=True)
  )
  return parquet_path, json_path


def format_summary(info: Mapping) -> str:
  """A short plain-text summary of a build: items, level edges and counts, majority, skips."""
  n_items = max(info['n_items'], 1)
  lines = [
    f'{info["n_items"]} utterances with evidence ({info["n_without_evidence"]} without); '
    f'label set {info["label_set"]}; combine={info["combine"]}'
    + ('' if info['kappa'] is None else f', kappa={info["kappa"]:.4g}')
  ]
  e1, e2 = info['edges']
  lines.append(f'ambiguity edges ({info["edges_from"]}): low <= {e1:.4f} < medium <= {e2:.4f} < high')
  lines.append(f'{"level":<12}{"count":>8}{"share":>8}')
  lines.extend(f'{level:<12}{n:>8}{n / n_items:>8.1%}' for level, n in info['level_counts'].items())
  if info['n_without_human']:
    lines.append(f'{"no human":<12}{info["n_without_human"]:>8}{info["n_without_human"] / n_items:>8.1%}')
  lines.append(f'{"majority":<12}{"count":>8}{"share":>8}')
  lines.extend(f'{label:<12}{n:>8}{n / n_items:>8.1%}' for label, n in info['majority_counts'].items())
  lines.append(f'majority ties: {info["majority_ties"]} (broken by policy {info["tie_policy"]!r})')
  skipped = info['skipped']
  if skipped:
    reasons = '; '.join(f'{n} x {reason}' for reason, n in sorted(skipped.items()))
    lines.append(f'skipped votes: {sum(skipped.values())} ({reasons}); first: {info["skipped_examples"][0]}')
  else:
    lines.append('skipped votes: 0')
  return '\n'.join(lines)
