"""DiME-Aug pair drawing: how an anchor and a partner are chosen and mixed for one wanted cell.

* A *cell* is (dominant emotion, ambiguity level) of a target (see :mod:`perax.augment.dime_targets`).
* To add an example to cell (c, a): draw an anchor i of dominant emotion c with probability
  proportional to p_i[c], then up to ``max_tries`` partners j from the same split (for level low
  from the anchor's class, for high from the other classes, for medium from all); the first whose
  mixed target lands in (c, a) is taken (bounded rejection sampling).  When none lands,
  ``max_anchors`` anchors are tried, and then the nearest candidate is taken (a different dominant
  emotion counts more than any level difference) and marked ``fallback``.  A partner of the anchor's
  own class always exists as the last resort where the class has two utterances, and keeps the
  dominant emotion (a convex mix of two distributions with the same argmax has that argmax).
* concat: target = w p_i + (1 - w) p_j with w = dur_i / (dur_i + dur_j), audio = anchor, a uniform
  ``gap_s`` silence, loudness-matched partner.  mixup: w ~ Beta(alpha, alpha) is the anchor's share
  of both the overlaid audio and the target.  The mixed example lasts at most ``max_duration_s``.
* Every draw comes from the one ``numpy`` generator the caller passes: same generator state, same pairs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from perax import distributions as dist
from perax.augment.audio_mix import CONCAT, MIXUP
from perax.augment.dime_targets import _Pool, level_index
from perax.core.errors import InputError
from perax.distributions.levels import LEVELS

VARIANTS = (CONCAT, MIXUP)
LOW, MEDIUM, HIGH = range(len(LEVELS))
# A candidate's distance to the wanted cell: a wrong dominant emotion outweighs any level gap.
_WRONG_CLASS_DISTANCE = len(LEVELS)


@dataclasses.dataclass(frozen=True)
class MixConfig:
  """How pairs are drawn and mixed.

  Attributes:
    variant: 'concat' (anchor, gap, partner) or 'mixup' (overlay weighted by w ~ Beta).
    gap_s: (low, high) bounds of the uniform silence between concatenated utterances, seconds.
    mixup_alpha: alpha of the symmetric Beta distribution of the mixup weight.
    max_tries: partner candidates drawn per anchor.
    max_anchors: anchors tried per example before the nearest candidate is taken.
    max_duration_s: the longest example allowed (Whisper's encoder takes 30 s).
  """

  variant: str = CONCAT
  gap_s: tuple[float, float] = (0.05, 0.15)
  mixup_alpha: float = 0.4
  max_tries: int = 64
  max_anchors: int = 16
  max_duration_s: float = 30.0

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f'variant must be one of {VARIANTS}, got {self.variant!r}')
    if not 0.0 <= self.gap_s[0] <= self.gap_s[1]:
      raise ValueError(f'gap_s must be 0 <= low <= high, got {self.gap_s}')
    if self.mixup_alpha <= 0 or self.max_tries < 1 or self.max_anchors < 1:
      raise ValueError('mixup_alpha must be > 0, max_tries and max_anchors >= 1')


@dataclasses.dataclass(frozen=True)
class _Pair:
  anchor: int
  partner: int
  weight: float
  gap_s: float
  duration_s: float
  target: np.ndarray  # [C]
  label: int
  level: int
  fallback: bool


class _Sampler:
  """Draws anchor-partner pairs for wanted cells from one pool."""

  def __init__(self, pool: _Pool, config: MixConfig, rng: np.random.Generator):
    self.pool = pool
    self.config = config
    self.rng = rng
    num_labels = pool.p.shape[1]
    self.by_class = [np.flatnonzero(pool.dominant == c) for c in range(num_labels)]
    self.others = [np.flatnonzero(pool.dominant != c) for c in range(num_labels)]
    self.everyone = np.arange(len(pool.ids))

  def _candidates(self, anchor: int, wanted_class: int, wanted_level: int) -> np.ndarray:
    """[max_tries] partner indices from the proposal pool of the wanted level."""
    if wanted_level == LOW:
      proposal = self.by_class[wanted_class]
    elif wanted_level == HIGH:
      proposal = self.others[wanted_class]
    else:
      proposal = self.everyone
    if proposal.size == 0 or (proposal.size == 1 and proposal[0] == anchor):
      proposal = self.everyone
    partners = proposal[self.rng.integers(0, proposal.size, self.config.max_tries)]
    same_class = self.by_class[wanted_class]
    same_class = same_class[same_class != anchor]
    if same_class.size:  # The last resort keeps the dominant emotion.
      partners = np.append(partners, same_class[self.rng.integers(0, same_class.size)])
    return partners

  def _mix(self, anchor: int, partners: np.ndarray):
    """Weights, gaps and durations [K] of mixing the anchor with each candidate partner."""
    pool, config, k = self.pool, self.config, partners.size
    if config.variant == CONCAT:
      gaps = self.rng.uniform(config.gap_s[0], config.gap_s[1], k)
      weights = pool.duration[anchor] / (pool.duration[anchor] + pool.duration[partners])
      durations = pool.duration[anchor] + gaps + pool.duration[partners]
    else:
      gaps = np.full(k, np.nan)
      weights = self.rng.beta(config.mixup_alpha, config.mixup_alpha, k)
      durations = np.maximum(pool.duration[anchor], pool.duration[partners])
    return weights, gaps, durations

  def draw(self, wanted_class: int, wanted_level: int) -> _Pair:
    """One pair whose mixed target lands in the wanted cell, or the nearest found (fallback)."""
    pool = self.pool
    anchors = self.by_class[wanted_class]
    anchor_prob = pool.p[anchors, wanted_class] / pool.p[anchors, wanted_class].sum()
    best, best_distance = None, np.inf
    for _ in range(self.config.max_anchors):
      anchor = int(anchors[self.rng.choice(anchors.size, p=anchor_prob)])
      partners = self._candidates(anchor, wanted_class, wanted_level)
      weights, gaps, durations = self._mix(anchor, partners)
      targets = weights[:, None] * pool.p[anchor] + (1.0 - weights[:, None]) * pool.p[partners]
      labels = dist.majority(targets)
      levels = level_index(targets, pool.levels)
      distance = (_WRONG_CLASS_DISTANCE * (labels != wanted_class) + np.abs(levels - wanted_level)).astype(
        np.float64
      )
      distance[(partners == anchor) | (durations > self.config.max_duration_s)] = np.inf
      k = int(np.argmin(distance))
      if distance[k] < best_distance:
        best_distance = distance[k]
        best = _Pair(
          anchor,
          int(partners[k]),
          float(weights[k]),
          float(gaps[k]),
          float(durations[k]),
          targets[k],
          int(labels[k]),
          int(levels[k]),
          fallback=bool(distance[k] > 0),
        )
      if best_distance == 0:
        break
    if best is None:
      raise InputError(
        f'no partner within max_duration_s={self.config.max_duration_s} for '
        f'anchors of label index {wanted_class} in split {pool.split!r}'
      )
    return best
