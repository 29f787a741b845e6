"""Sparse versus dense: how well do k human votes, with or without a proxy, recover dense ones?

For every utterance with enough dense votes, k raters are drawn at random (k = 1..5 by default, several
seeded repeats), their votes give the sparse human counts, and the distribution is estimated from them
alone (``human``), from the proxy alone (``proxy``), and from both (``pooled``, ``mixture``,
``dirichlet``, see :mod:`perax.analysis`).  Each estimate is scored against the dense reference.

Choices (documented here and in the report):
- The unit drawn is a rater of the utterance (all of that rater's weighted labels), not a single label
  row, so multi-label raters stay whole.
- Draws are nested: one random key per rater and repeat, the k raters with the smallest keys are kept,
  so the k+1 subsample extends the k subsample and the curves over k are paired.
- The reference is by default the *held-out remainder*: the dense votes of the raters not drawn
  (``reference='remainder'``), an unbiased target that never contains the votes being scored; it needs
  more than max(k) raters per utterance.  ``reference='all'`` scores against all dense votes (biased
  towards the human-only estimate, which shares k of them).  When a separate dense reference table is
  given, the sparse votes are drawn from the human table and the reference is that table, whole.
- Ambiguity levels apply the run's one level definition.  By default a clip's level comes from the
  entropy of the dense reference it is scored against (so with the remainder it excludes the sparse
  draw, and may change with k and the repeat); otherwise the level would be correlated with the sparse
  sample's own noise.  The older convention, the entropy of all the clip's votes (the sparse draw
  included), fixed across k and repeats, is an option (see :mod:`perax.analysis.sparse_dense_study`).
- Only utterances with enough raters for the largest k enter, the same set for every k; how many were
  left out is reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from perax.data import labels as labels_lib
from perax.data import tables

# The dense reference an estimate is scored against: the raters not drawn, or every dense vote.
REMAINDER = 'remainder'
ALL_VOTES = 'all'
REFERENCES = (REMAINDER, ALL_VOTES)


@dataclasses.dataclass(frozen=True)
class RaterVotes:
  """The votes of each (utterance, rater) pair, as drawing units.

  Attributes:
    utt_ids: [N] the utterances, in the caller's order.
    unit_utt: [M] int64, the utterance index of each unit, ascending.
    unit_counts: [M, C] float64, the unit's label weights inside the label set (row sums > 0).
    outside: weight of the votes that fell outside the label set or were invalid (not drawn).
  """

  utt_ids: np.ndarray
  unit_utt: np.ndarray
  unit_counts: np.ndarray
  outside: float

  @property
  def raters_per_utt(self) -> np.ndarray:
    """[N] int64, the number of units (raters) of each utterance."""
    return np.bincount(self.unit_utt, minlength=len(self.utt_ids))

  def counts(self, keep: np.ndarray | None = None) -> np.ndarray:
    """[N, C] summed label weights of the units where ``keep`` [M] bool is set (all by default)."""
    weights = self.unit_counts if keep is None else self.unit_counts * keep[:, None]
    n, c = len(self.utt_ids), self.unit_counts.shape[1]
    flat = np.bincount(
      (self.unit_utt[:, None] * c + np.arange(c)).ravel(), weights=weights.ravel(), minlength=n * c
    )
    return flat.reshape(n, c)


def rater_votes(votes: pa.Table, label_set: labels_lib.LabelSet, utt_ids: Sequence[str]) -> RaterVotes:
  """Groups a votes table into (utterance, rater) units over ``utt_ids``.

  Votes of utterances not in ``utt_ids`` are ignored; votes whose label is outside the label set (or
  invalid) are left out of every unit and their weight is reported in ``outside``.

  Args:
    votes: a table in perax.data.tables.VOTE_SCHEMA.
    label_set: the classes, in column order.
    utt_ids: [N] the utterances to keep, in the order of the result.
  """
  utt_ids = np.asarray(utt_ids, dtype=object)
  position = {u: i for i, u in enumerate(utt_ids)}
  utt = np.array([position.get(u, -1) for u in tables.column(votes, 'utt_id')], dtype=np.int64)
  label = label_set.index(votes.column('label')).astype(np.int64)
  weight = tables.column(votes, 'weight').astype(np.float64)
  ours = utt >= 0
  inside = ours & (label >= 0)
  outside = float(weight[ours & ~inside].sum())
  _, rater = np.unique(tables.column(votes, 'rater')[inside].astype(str), return_inverse=True)
  key = utt[inside] * (rater.max(initial=0) + 1) + rater
  unit_keys, unit = np.unique(key, return_inverse=True)
  c = len(label_set)
  counts = np.bincount(
    unit * c + label[inside], weights=weight[inside], minlength=len(unit_keys) * c
  ).reshape(len(unit_keys), c)
  unit_utt = unit_keys // (rater.max(initial=0) + 1)
  positive = counts.sum(axis=1) > 0
  return RaterVotes(utt_ids, unit_utt[positive], counts[positive], outside)


def nested_ranks(unit_utt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """[M] int64: a uniformly random order of the units within each utterance (0 = drawn first).

  Keeping the units of rank < k draws k raters without replacement; ranks from one call give nested
  subsamples over k.

  Args:
    unit_utt: [M] the utterance index of each unit, ascending.
    rng: the random generator.
  """
  order = np.lexsort((rng.random(len(unit_utt)), unit_utt))
  starts = np.searchsorted(unit_utt, unit_utt)
  ranks = np.empty(len(unit_utt), dtype=np.int64)
  ranks[order] = np.arange(len(unit_utt)) - starts[order]
  return ranks


@dataclasses.dataclass(frozen=True)
class Draw:
  """One repeat of the study at one k.

  Attributes:
    k: human votes (raters) kept per utterance.
    repeat: the repeat's index.
    sparse: [N, C] label weights of the k raters drawn.
    reference: [N, C] label weights of the reference (the remainder, or all dense votes).
  """

  k: int
  repeat: int
  sparse: np.ndarray
  reference: np.ndarray


def draws(
  human: RaterVotes,
  ks: Sequence[int],
  repeats: int,
  seed: int,
  separate: np.ndarray | None = None,
  reference: str = REMAINDER,
):
  """Yields a :class:`Draw` per repeat and k (repeat-major, k ascending), deterministic given the seed.

  Args:
    human: the human votes the k raters are drawn from; every utterance must have enough raters
      (see :func:`eligible`).
    ks: the numbers of raters to keep.
    repeats: independent draws per k.
    seed: the seed; repeat r uses ``np.random.default_rng([seed, r])``.
    separate: [N, C] counts of a separate dense reference (the utterances of ``human``, same order),
      scored whole; or None, in which case the reference comes from ``human`` itself.
    reference: without ``separate``: 'remainder' (the raters not drawn) or 'all' (every rater).
  """
  if reference not in REFERENCES:
    raise ValueError(f'reference must be one of {REFERENCES}, got {reference!r}')
  whole = human.counts() if separate is None else separate
  for repeat in range(repeats):
    ranks = nested_ranks(human.unit_utt, np.random.default_rng([seed, repeat]))
    for k in sorted(ks):
      kept = ranks < k
      target = human.counts(~kept) if separate is None and reference == REMAINDER else whole
      yield Draw(k, repeat, human.counts(kept), target)


def eligible(raters_per_utt: np.ndarray, max_k: int, needs_remainder: bool) -> np.ndarray:
  """[N] bool: utterances with at least ``max_k`` raters (one more when the remainder is scored)."""
  return raters_per_utt >= max_k + int(needs_remainder)
