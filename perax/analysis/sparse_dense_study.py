"""The sparse-versus-dense study: k human raters drawn per utterance, every condition scored against
the dense reference, per ambiguity level (the draws themselves: :mod:`perax.analysis.sparse_dense`).

Levels apply the run's one :class:`perax.distributions.LevelDefinition` (never edges of their own).
Which entropy it is applied to is the ``level_by`` convention:
- 'reference' (default): the entropy of the dense reference each estimate is scored against. With
  the held-out remainder that reference excludes the sparse draw, so a clip's level may change with
  k and the repeat; the bootstrap still resamples utterances, each with its items of that level.
- 'all_votes' (the older convention): the entropy of all of the clip's dense votes, the sparse draw
  included, fixed across k and repeats. The level is then correlated with the sparse sample's own
  noise, which inflates the sparse error of the high level.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from perax import distributions
from perax.analysis import sparse_dense
from perax.analysis.alignment import ROW_COLUMNS
from perax.analysis.bootstrap import level_bootstrap_weights, score_condition
from perax.analysis.conditions import COMBINED, HUMAN, PROXY, Combination
from perax.analysis.evidence import Evidence
from perax.analysis.paired_tests import wilcoxon_rows
from perax.core.progress import Progress
from perax.data import labels as labels_lib
from perax.data import tables
from perax.distributions.levels import ALL, LEVELS, LevelDefinition

SPARSE_METRICS = ('js_divergence', 'kl', 'bhattacharyya', 'total_variation', 'r2')
# n: utterances of the level; draws: (repeat, utterance) items of the level scored at that k.
SPARSE_COLUMNS = ('k',) + ROW_COLUMNS + ('draws',)

LEVEL_BY_REFERENCE = 'reference'
LEVEL_BY_ALL_VOTES = 'all_votes'
LEVEL_BY = (LEVEL_BY_REFERENCE, LEVEL_BY_ALL_VOTES)
SEPARATE = 'separate'

# The dense reference of each study, in words (for captions: a corpus without a separate dense
# reference is never said to be scored "against the dense reference").
REFERENCE_WORDS = {
  sparse_dense.REMAINDER: 'the remaining human votes (the raters not drawn)',
  sparse_dense.ALL_VOTES: 'all human votes (the k drawn included)',
  SEPARATE: 'the separate dense human reference',
}


def describe_level_by(level_by: str, reference: str) -> str:
  """The level convention of a study in words, labelled as the default or the older convention."""
  if level_by == LEVEL_BY_ALL_VOTES:
    return (
      "levels from the entropy of all of the clip's votes, the sparse draw included "
      '(older convention, not the default)'
    )
  excludes = {
    sparse_dense.REMAINDER: ', which excludes the sparse draw',
    sparse_dense.ALL_VOTES: ', which here includes the sparse draw',
    SEPARATE: ', which excludes the sparse draw',
  }[reference]
  return f'levels from the entropy of the reference each estimate is scored against{excludes} (default)'


@dataclasses.dataclass(frozen=True)
class SparseDense:
  """The sparse-vs-dense study's results.

  Attributes:
    rows: rows (k, condition, level, metric, value, ci_low, ci_high, n, draws).
    wilcoxon: Wilcoxon rows of every condition against ``human`` at each k.
    ks: the k actually studied.
    n_items: utterances in the study; n_left_out: utterances with too few raters.
    reference: 'remainder', 'all' or 'separate'.
    level_by: 'reference' or 'all_votes' (module docstring).
    levels: k -> [R, n_items] index into LEVELS of each (repeat, utterance) item.
    notes: what was adjusted (ks dropped), for the report.
  """

  rows: list[dict]
  wilcoxon: list[dict]
  ks: tuple[int, ...]
  n_items: int
  n_left_out: int
  reference: str
  level_by: str
  levels: Mapping[int, np.ndarray]
  notes: tuple[str, ...]

  @property
  def reference_words(self) -> str:
    return REFERENCE_WORDS[self.reference]

  @property
  def level_words(self) -> str:
    return describe_level_by(self.level_by, self.reference)


def _masks(index: np.ndarray) -> dict[str, np.ndarray]:
  """[R, N] level indices -> {level: [R, N] bool} for LEVELS, and ALL: every item."""
  masks = {level: index == i for i, level in enumerate(LEVELS)}
  masks[ALL] = np.ones(index.shape, bool)
  return masks


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
  level_definition: LevelDefinition,
  dense_reference: str = sparse_dense.REMAINDER,
  level_by: str = LEVEL_BY_REFERENCE,
) -> SparseDense | None:
  """Draws k human raters per utterance and scores every condition against the dense reference.

  The human raters are drawn from ``human`` (its human rows); the reference is the separate dense
  reference of ``evidence`` if there is one, else the human votes (``dense_reference``: the held-out
  remainder or all of them). ks larger than the median number of raters allows are dropped (noted).
  Levels: ``level_definition`` applied as ``level_by`` says (module docstring).

  Returns:
    the study, or None when no k is feasible.
  """
  if level_by not in LEVEL_BY:
    raise ValueError(f'level_by must be one of {LEVEL_BY}, got {level_by!r}')
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
  all_votes_level = level_definition.index(
    distributions.normalized_entropy(distributions.to_distribution(dense_counts))
  )
  n_s, p_s = evidence.n_s[index], evidence.p_s[index]
  conditions = (HUMAN, PROXY) + COMBINED
  sparse = {k: [] for k in feasible}
  target = {k: [] for k in feasible}
  for draw in sparse_dense.draws(
    units, feasible, repeats, seed, separate=dense_counts if separate else None, reference=dense_reference
  ):
    sparse[draw.k].append(draw.sparse)
    target[draw.k].append(distributions.to_distribution(draw.reference))
  rows, tests, levels = [], [], {}
  progress = Progress(total=len(feasible) * len(conditions), unit='conditions', what='sparse-vs-dense')
  for k in feasible:
    reference = np.stack(target[k])
    if level_by == LEVEL_BY_REFERENCE:
      num_labels = reference.shape[-1]
      entropy = distributions.normalized_entropy(reference.reshape(-1, num_labels))
      levels[k] = level_definition.index(entropy).reshape(reference.shape[:2])
    else:
      levels[k] = np.broadcast_to(all_votes_level, reference.shape[:2])
    masks = _masks(levels[k])
    weights = level_bootstrap_weights(masks, resamples, seed)
    estimates = {
      c: np.stack([combination.estimate(c, n_h, n_s, p_s) for n_h in sparse[k]]) for c in conditions
    }
    per_condition = {}
    for condition, estimate in estimates.items():
      for level, mask in masks.items():
        members = mask.any(0)
        scored, parts = score_condition(
          reference[:, members],
          estimate[:, members],
          weights[level],
          SPARSE_METRICS,
          confidence,
          mask[:, members],
        )
        rows += [dict(k=k, condition=condition, level=level, **row) for row in scored]
        if level == ALL:
          per_condition[condition] = parts
      progress.update(1)
    tests += wilcoxon_rows(per_condition, HUMAN, masks, 'sparse_dense', k)
  progress.close()
  return SparseDense(
    rows,
    tests,
    feasible,
    len(index),
    int((~chosen).sum()),
    SEPARATE if separate else dense_reference,
    level_by,
    levels,
    tuple(notes),
  )
