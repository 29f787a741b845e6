"""The DiME-Aug balanced evaluation set: built from one (test) split alone, with a speaker-leak check.

Each class (cell) gets its target count: up to that many of its originals (a random subset where it
has more), then augmented examples whose anchor and partner both come from the same split, so the set
holds no utterance and no speaker of any other split.  Rows are plan rows
(:data:`perax.augment.dime_plan.PLAN_COLUMNS` then ``p_<label>``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from perax.augment.dime_mixing import MixConfig
from perax.augment.dime_plan import _augmented_rows, _groups, _original_row, _plan_table, _wanted_cells
from perax.augment.dime_targets import _pool
from perax.core.errors import InputError
from perax.data.tables import column
from perax.distributions.levels import LevelDefinition


def speaker_leaks(utterances: pa.Table, split: str) -> set[str]:
  """Speakers of ``split`` who also speak in another split (null speakers are ignored)."""
  speakers = column(utterances, 'speaker')
  in_split = column(utterances, 'split') == split
  inside = {s for s in speakers[in_split] if s is not None}
  outside = {s for s in speakers[~in_split] if s is not None}
  return inside & outside


def build_eval_set(
  utterances: pa.Table,
  distributions: pa.Table,
  labels: Sequence[str],
  levels: LevelDefinition,
  split: str = 'test',
  balance: str = 'classes',
  size: int | None = None,
  seed: int = 0,
  config: MixConfig = MixConfig(),  # noqa: B008 (a frozen dataclass: immutable)
  allow_speaker_overlap: bool = False,
) -> pa.Table:
  """A balanced evaluation set from one (test) split alone: originals first, DiME-Aug fills gaps.

  Each class (cell) gets its target count: up to that many of its originals (a random subset where
  it has more), then augmented examples whose anchor and partner both come from the same split, so
  the set holds no utterance and no speaker of any other split.

  Args:
    utterances, distributions, labels, levels, balance, size, seed, config: as for
      :func:`plan_augmentation`.
    split: the evaluation split.
    allow_speaker_overlap: accept a corpus whose evaluation speakers also speak in other splits.

  Returns:
    A plan table (PLAN_COLUMNS then ``p_<label>``): origin 'original' rows, then 'augmented' rows.

  Raises:
    InputError: speakers of ``split`` appear in other splits (unless allowed).
  """
  labels = list(labels)
  leaks = speaker_leaks(utterances, split)
  if leaks and not allow_speaker_overlap:
    raise InputError(
      f'{len(leaks)} speakers of split {split!r} also speak in other splits '
      f'(e.g. {sorted(leaks)[:3]}); an unbiased evaluation set needs a '
      f'speaker-independent split'
    )
  pool = _pool(utterances, distributions, labels, levels, split)
  rng = np.random.default_rng(seed)
  wanted_class, wanted_level, quota = _wanted_cells(pool, len(labels), balance, size, rng)
  group = _groups(pool, balance)
  kept = []
  for g in np.unique(group):
    kept.extend(rng.permutation(np.flatnonzero(group == g))[: quota[g]].tolist())
  originals = [_original_row(pool, labels, i) for i in sorted(kept)]
  augmented = _augmented_rows(pool, labels, wanted_class, wanted_level, config, seed, rng)
  return _plan_table(pool, labels, originals + augmented)
