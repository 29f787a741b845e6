"""Ambiguity levels: the one definition of low / medium / high that every stage of a run uses.

A level comes from the normalised entropy H(p) / log C of an utterance's *human* distribution (field
notes, section 2). A run fixes its edges once, in a :class:`LevelDefinition`: either the tertiles of
the human entropies of one split (the training split by default) or fixed edges given by the user.
Distributions, DiME-Aug, training data, evaluation and analysis all apply that same definition, and
the report states it once. ``low`` is e <= e1, ``medium`` e1 < e <= e2, ``high`` e > e2; an
utterance without human votes (NaN entropy) has no level (None).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from perax.core.errors import InputError

LEVELS = ('low', 'medium', 'high')
ALL = 'all'  # the row of a per-level table that pools every utterance
TERTILES, FIXED = 'tertiles', 'fixed'


def tertile_edges(entropy: np.ndarray) -> tuple[float, float]:
  """Edges (e1, e2) splitting entropies into levels as close to thirds as ties allow.

  e1 is the observed entropy whose empirical CDF F(e1) = share of items with entropy <= e1 is
  closest to 1/3; e2 is the observed entropy above e1 whose F is closest to 2/3 (e2 = e1 when no
  value lies above e1). Ties in closeness go to the smaller value. Both edges are observed values,
  and every utterance with entropy e1 is ``low`` (see :func:`ambiguity_levels`), so equal entropies
  always share a level. For continuous entropies the edges are the 1/3 and 2/3 quantiles; with 3-5
  raters entropy takes few values, and this rule keeps ``medium`` non-empty where a plain quantile
  would put both edges on the same value (e.g. shares 25% / 60% / 15% of three values give exactly
  those levels, where quantiles would give 85% / 0% / 15%). NaN entropies are ignored.

  Raises:
    ValueError: no finite entropy.
  """
  entropy = np.asarray(entropy, dtype=np.float64)
  entropy = entropy[np.isfinite(entropy)]
  if not entropy.size:
    raise ValueError('tertile_edges needs at least one finite entropy')
  values, counts = np.unique(entropy, return_counts=True)
  cdf = np.cumsum(counts) / entropy.size
  first = int(np.argmin(np.abs(cdf - 1 / 3)))
  second = first + 1 + int(np.argmin(np.abs(cdf[first + 1 :] - 2 / 3))) if first + 1 < len(values) else first
  return float(values[first]), float(values[second])


def ambiguity_levels(entropy: np.ndarray, edges: tuple[float, float]) -> np.ndarray:
  """Levels [N] (object): 'low' if e <= e1, 'medium' if e1 < e <= e2, else 'high'; None on NaN."""
  e1, e2 = edges
  if e1 > e2:
    raise ValueError(f'level edges must be ordered, got {edges}')
  entropy = np.asarray(entropy, dtype=np.float64)
  with np.errstate(invalid='ignore'):
    index = (entropy > e1).astype(np.int64) + (entropy > e2)
  levels = np.asarray(LEVELS, dtype=object)[index]
  levels[np.isnan(entropy)] = None
  return levels


@dataclasses.dataclass(frozen=True)
class LevelDefinition:
  """How a run turns human entropy into low / medium / high; fixed once per run.

  Attributes:
    edges: (e1, e2), 0 <= e1 <= e2 <= 1.
    source: 'tertiles' (fitted) or 'fixed' (given).
    split: for tertiles, the split whose human entropies set the edges (None: every utterance).
    fitted_on: how many utterances the tertiles were fitted on (0 for fixed edges).
  """

  edges: tuple[float, float]
  source: str = FIXED
  split: str | None = None
  fitted_on: int = 0

  def __post_init__(self):
    e1, e2 = (float(e) for e in self.edges)
    if not 0.0 <= e1 <= e2 <= 1.0:
      raise InputError(f'ambiguity level edges must satisfy 0 <= e1 <= e2 <= 1, got {self.edges}')
    if self.source not in (TERTILES, FIXED):
      raise InputError(f'unknown level source {self.source!r}; known: {TERTILES}, {FIXED}')
    object.__setattr__(self, 'edges', (e1, e2))

  def levels(self, entropy: np.ndarray) -> np.ndarray:
    """[N] object array of 'low' / 'medium' / 'high', None where entropy is NaN."""
    return ambiguity_levels(entropy, self.edges)

  def index(self, entropy: np.ndarray) -> np.ndarray:
    """[N] int64 index into LEVELS, -1 where entropy is NaN."""
    entropy = np.asarray(entropy, dtype=np.float64)
    with np.errstate(invalid='ignore'):
      index = (entropy > self.edges[0]).astype(np.int64) + (entropy > self.edges[1])
    return np.where(np.isnan(entropy), -1, index)

  def describe(self) -> str:
    """One sentence for reports, e.g. 'tertiles of the human entropy of split train (412
    utterances): low <= 0.459 < medium <= 0.811 < high'."""
    e1, e2 = self.edges
    if self.source == FIXED:
      whence = 'fixed edges on the normalised human entropy'
    else:
      where = 'every utterance' if self.split is None else f'split {self.split}'
      whence = f'tertiles of the normalised human entropy of {where} ({self.fitted_on} utterances)'
    return f'{whence}: low <= {e1:.3g} < medium <= {e2:.3g} < high'

  def to_json(self) -> dict[str, Any]:
    return {
      'edges': list(self.edges),
      'source': self.source,
      'split': self.split,
      'fitted_on': self.fitted_on,
    }

  @classmethod
  def from_json(cls, record: Mapping[str, Any]) -> LevelDefinition:
    return cls(
      edges=tuple(record['edges']),
      source=record.get('source', FIXED),
      split=record.get('split'),
      fitted_on=int(record.get('fitted_on', 0)),
    )


def fit_levels(
  entropy_human: np.ndarray,
  splits: np.ndarray | None = None,
  split: str | None = 'train',
  fixed_edges: tuple[float, float] | None = None,
) -> LevelDefinition:
  """The run's level definition: fixed edges when given, else tertiles of one split's human entropy.

  Args:
    entropy_human: [N] normalised entropy of each utterance's human distribution (NaN: no votes).
    splits: [N] split of each utterance, or None (then every utterance is used).
    split: the split whose entropies set the tertiles; None or 'all' uses every utterance.
    fixed_edges: (e1, e2) to use as given.

  Raises:
    InputError: no utterance of ``split`` has human votes (the splits present are named).
  """
  if fixed_edges is not None:
    return LevelDefinition(edges=tuple(fixed_edges), source=FIXED)
  entropy_human = np.asarray(entropy_human, dtype=np.float64)
  finite = np.isfinite(entropy_human)
  if split in (None, ALL) or splits is None:
    chosen, split = finite, None
  else:
    chosen = (np.asarray(splits, dtype=object) == split) & finite
  if not chosen.any():
    known = sorted({str(s) for s in splits}) if splits is not None else []
    where = 'any utterance' if split is None else f'split {split!r}'
    raise InputError(
      f'no utterance of {where} has human votes to set the ambiguity level edges; splits: {known}'
    )
  return LevelDefinition(
    edges=tertile_edges(entropy_human[chosen]), source=TERTILES, split=split, fitted_on=int(chosen.sum())
  )
