"""Speaker-disjoint train/dev/test splits for corpora that ship none (CREMA-D, EmoDB).

The rule: each speaker gets the key SHA-256(f'{seed}:{speaker}'); speakers sorted by key fill train,
then dev, then test, in proportions ``fractions`` (boundaries at round(cumulative share x speakers),
halves rounded up). It depends on the seed and the speaker ids only: the same speakers always land
in the same split, on any machine and numpy version, and no speaker is in two splits.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

from perax.data.tables import STANDARD_SPLITS as SPLITS

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def speaker_splits(
  speakers: Iterable[str], seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, str]:
  """Assigns each distinct speaker to 'train', 'dev' or 'test' (rule in the module docstring).

  Args:
    speakers: speaker ids (repeats allowed).
    seed: changes the assignment; the same seed always gives the same one.
    fractions: shares of speakers in train, dev and test; non-negative, summing to 1.

  Returns:
    speaker -> split name.
  """
  if len(fractions) != len(SPLITS) or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
    raise ValueError(
      f'split fractions must be {len(SPLITS)} non-negative shares summing to 1, got {tuple(fractions)}'
    )
  unique = sorted(set(speakers), key=lambda s: hashlib.sha256(f'{seed}:{s}'.encode()).hexdigest())
  bounds, total = [], 0.0
  for share in fractions:
    total += share
    bounds.append(math.floor(total * len(unique) + 0.5))
  assignment, start = {}, 0
  for split, end in zip(SPLITS, bounds):
    assignment.update({speaker: split for speaker in unique[start:end]})
    start = end
  return assignment
