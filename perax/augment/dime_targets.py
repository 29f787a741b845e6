"""DiME-Aug targets, ambiguity levels and pools: the inputs every DiME-Aug plan is drawn from.

* :func:`target_matrix`: the ``p_<label>`` columns as [N, C] float64 targets, refused where a column
  is missing or a row is not a distribution (negative, not finite, or its sum off 1 by more than a
  tolerance), renormalised otherwise.
* Levels: an utterance's ambiguity level (low | medium | high, by the run's one
  perax.distributions.levels.LevelDefinition) is that of its human entropy (``entropy_human``; its
  target's entropy where the table has no human entropy); :func:`levels_from_split` fits the
  definition as the tertiles of one split's human entropy, :func:`read_levels` reads a stored one.
* A pool (:class:`_Pool`) is the utterances of one split that have a target, as arrays, with their
  dominant emotion and level; anchors and partners of a plan both come from one pool.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from perax import distributions as dist
from perax.augment.audio_mix import utterance_durations
from perax.core import jsonio, log
from perax.core.errors import InputError
from perax.data.tables import column, label_columns
from perax.distributions.levels import LevelDefinition, fit_levels

# How far from 1 a target's sum may be before it is refused (it is renormalised otherwise).
_SUM_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class _Pool:
  """The utterances of one split that have a target, as arrays (N utterances, C labels)."""

  ids: np.ndarray  # [N] object
  p: np.ndarray  # [N, C] float64, rows non-negative and summing to 1
  duration: np.ndarray  # [N] float64 seconds
  transcript: np.ndarray  # [N] object, None where missing
  speaker: np.ndarray  # [N] object
  dominant: np.ndarray  # [N] int64 label index
  level: np.ndarray  # [N] int64 index into LEVELS
  split: str
  levels: LevelDefinition


def target_matrix(distributions: pa.Table, labels: Sequence[str]) -> np.ndarray:
  """[N, C] float64 targets from the ``p_<label>`` columns, checked and renormalised.

  Raises:
    InputError: a column is missing, or a row is negative, not finite or does not sum to 1 (naming
      the utt_id).
  """
  names = label_columns(labels)
  missing = [n for n in names if n not in distributions.column_names]
  if missing:
    raise InputError(f'distributions lack columns {missing}')
  p = np.stack([column(distributions, n).astype(np.float64) for n in names], axis=1)
  total = p.sum(axis=1)
  bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1) | (np.abs(total - 1.0) > _SUM_TOLERANCE)
  if bad.any():
    k = int(np.flatnonzero(bad)[0])
    raise InputError(f'target {p[k].tolist()} is not a distribution', item=column(distributions, 'utt_id')[k])
  return p / total[:, None]


def level_index(p: np.ndarray, levels: LevelDefinition) -> np.ndarray:
  """[N] int64 ambiguity level (index into LEVELS) of distributions p [N, C], by their normalised entropy."""
  return levels.index(dist.normalized_entropy(p))


def human_entropy(distributions: pa.Table, labels: Sequence[str]) -> np.ndarray:
  """[N] normalised entropy that sets each row's level: ``entropy_human``, or the target's entropy
  where that is NaN or the table has no such column."""
  target = dist.normalized_entropy(target_matrix(distributions, labels))
  if 'entropy_human' not in distributions.column_names:
    return target
  human = column(distributions, 'entropy_human').astype(np.float64)
  return np.where(np.isnan(human), target, human)


def levels_from_split(
  utterances: pa.Table, distributions: pa.Table, labels: Sequence[str], split: str = 'train'
) -> LevelDefinition:
  """The run's level definition fitted here: tertiles of one split's human entropy
  (perax.distributions.levels.fit_levels; the targets' entropy where a table has no human entropy)."""
  in_split = set(column(utterances, 'utt_id')[column(utterances, 'split') == split])
  if not in_split:
    raise InputError(f'no utterances in split {split!r} to fit the ambiguity levels on')
  splits = np.asarray([split if u in in_split else None for u in column(distributions, 'utt_id')], object)
  if not (splits == split).any():
    raise InputError(f'no distributions for the utterances of split {split!r}')
  entropy = (
    column(distributions, 'entropy_human').astype(np.float64)
    if 'entropy_human' in distributions.column_names
    else dist.normalized_entropy(target_matrix(distributions, labels))
  )
  return fit_levels(entropy, splits, split=split)


def read_levels(path: str) -> LevelDefinition | None:
  """The level definition a JSON file holds: its ``levels`` record (a distributions.json), or the file
  itself when it is a LevelDefinition record (edges and source); None when it holds neither."""
  record = jsonio.read_json(path)
  if not isinstance(record, dict):
    raise InputError('expected a JSON object with a level definition', path=path)
  try:
    if isinstance(record.get('levels'), dict):
      return LevelDefinition.from_json(record['levels'])
    if 'edges' in record and 'source' in record:
      return LevelDefinition.from_json(record)
  except (KeyError, TypeError, ValueError) as error:
    raise InputError(f'not a level definition: {error}', path=path) from None
  return None


def _pool(
  utterances: pa.Table, distributions: pa.Table, labels: Sequence[str], levels: LevelDefinition, split: str
) -> _Pool:
  """The split's utterances joined with their targets; those without one are left out (logged)."""
  utts = utterances.filter(pa.array(column(utterances, 'split') == split))
  if utts.num_rows == 0:
    raise InputError(f'no utterances in split {split!r}')
  p_all = target_matrix(distributions, labels)
  row_of = {u: k for k, u in enumerate(column(distributions, 'utt_id'))}
  ids = column(utts, 'utt_id')
  has_target = np.asarray([u in row_of for u in ids], bool)
  if not has_target.all():
    log.warning(
      f'{int((~has_target).sum())} of {len(ids)} utterances of split {split!r} have no target '
      'distribution and are left out',
      stage='DiME-Aug',
    )
  utts = utts.filter(pa.array(has_target))
  ids = column(utts, 'utt_id')
  if len(ids) < 2:
    raise InputError(f'split {split!r} has {len(ids)} utterances with targets; DiME-Aug needs 2')
  rows = [row_of[u] for u in ids]
  p = p_all[rows]
  entropy = human_entropy(distributions, labels)[rows]
  return _Pool(
    ids=ids,
    p=p,
    duration=utterance_durations(utts),
    transcript=column(utts, 'transcript'),
    speaker=column(utts, 'speaker'),
    dominant=dist.majority(p),
    level=levels.index(entropy),
    split=split,
    levels=levels,
  )
