"""Counting votes into distributions, and the summaries of one distribution (entropy, majority).

Everything here is numpy over [N, C] arrays (N utterances, C labels of a
:class:`perax.data.labels.LabelSet`, in the set's order); votes are pyarrow tables, and a million
votes are counted in one vectorised pass.

Conventions:
- counts are weighted vote counts (the votes table's ``weight``), float64 [N, C]; N_h, N_s are
  row sums.
- A row with no evidence has no distribution: :func:`to_distribution` gives NaN there (never
  uniform, which would read as "maximally ambiguous"), and every function passes NaN rows through.
- Normalised entropy H(p) / log C is in [0, 1]; ambiguity levels built on it live in
  :mod:`perax.distributions.levels`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from perax.core import log
from perax.core.errors import InputError, SkipCounter
from perax.data import labels as labels_lib

TIE_POLICIES = ('first', 'random', 'none')

# Ties between top labels: p[c] >= max(p) - TIE_TOLERANCE (counts over a common total tie exactly).
TIE_TOLERANCE = 1e-12

SKIP_INVALID = 'invalid label'
SKIP_OUTSIDE = 'label outside the label set'
SKIP_UNKNOWN_UTT = 'utt_id not among the utterances'

_EXAMPLES_PER_REASON = 3


def resolve_label_set(label_set: labels_lib.LabelSet | str) -> labels_lib.LabelSet:
  """A LabelSet, given one or a name (or comma-separated labels) for labels.get_label_set."""
  return labels_lib.get_label_set(label_set) if isinstance(label_set, str) else label_set


def count_skipped(
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
    log.warning(f'vote_counts: skipped {n} votes ({reason}); first: {examples[0]}')
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
    count_skipped(skipped, SKIP_UNKNOWN_UTT, unknown_utt, utt_col, label_col)
    count_skipped(skipped, SKIP_INVALID, ~unknown_utt & invalid, utt_col, label_col)
    count_skipped(skipped, SKIP_OUTSIDE, ~unknown_utt & ~invalid & (label_index < 0), utt_col, label_col)
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
