"""The clip policy: which audio perax can rate, and what happens to clips over 30 s.

Qwen2-Audio hears at most 30 s (perax.data.features.MAX_SECONDS). For every loaded 16 kHz waveform:

- audio perax cannot rate raises :class:`perax.core.errors.InputError` with one of the
  :data:`SKIP_REASONS` (the caller skips and counts it, or stops in strict mode): NaN or Inf samples,
  empty audio (0 samples, e.g. a 0-frame wav), or a clip too short for one audio token (under three
  10 ms feature frames), whose audio the model would never see;
- a clip of at most 30 s is used whole (``clip_policy = 'whole'``);
- a longer clip follows the chosen policy (:data:`POLICIES`):
  - ``'truncate'`` (the default): its first 30 s are used (``clip_policy = 'truncated'``);
  - ``'split'``: it is cut into ``n = ceil(duration / 30 s)`` consecutive windows of equal length
    (within one sample; every window is over 15 s and at most 30 s), each window is rated like a clip,
    and the windows are aggregated (``clip_policy = 'split'``): votes are pooled (all windows' votes
    are the clip's votes) and label distributions are averaged with the windows' durations as weights
    (:func:`aggregate_scores`).

The caller counts the clips that were truncated or split, warns, and marks them in a column.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from perax.core.errors import InputError
from perax.data import audio, features

POLICIES = ('truncate', 'split')
WHOLE, TRUNCATED, SPLIT = 'whole', 'truncated', 'split'  # values of the ``clip_policy`` column
NON_FINITE = 'NaN or Inf samples'
EMPTY = 'empty audio (0 samples)'
TOO_SHORT = 'too short for one audio token'
SKIP_REASONS = (NON_FINITE, EMPTY, TOO_SHORT)
# Fewest valid feature frames that give an audio token: ((L - 1) // 2 + 1 - 2) // 2 + 1 >= 1.
MIN_FRAMES = 3


@dataclasses.dataclass(frozen=True)
class Clip:
  """A waveform as the model will hear it.

  Attributes:
    windows: one or more float32 16 kHz waveforms, each at most 30 s, in time order.
    policy: :data:`WHOLE`, :data:`TRUNCATED` or :data:`SPLIT`.
    seconds: the loaded waveform's duration before truncation or splitting.
  """

  windows: tuple[np.ndarray, ...]
  policy: str
  seconds: float

  @property
  def weights(self) -> np.ndarray:
    """``[W]`` float64 duration weights of the windows (sum 1)."""
    lengths = np.asarray([len(w) for w in self.windows], np.float64)
    return lengths / lengths.sum()


def check_audio(waveform: np.ndarray, *, path: str | None = None, item: str | None = None) -> None:
  """Raises InputError for audio perax cannot rate; :func:`skip_reason` names it (:data:`SKIP_REASONS`).

  Empty and non-finite audio are perax.data.audio.check_finite's rule (the one home); this adds the
  shortest clip the encoder turns into an audio token.
  """
  try:
    audio.check_finite(waveform, path=path)
  except InputError as error:
    raise InputError(error.reason, path=path, item=item) from None
  if int(features.valid_frames(len(waveform))) < MIN_FRAMES:
    raise InputError(
      f'{TOO_SHORT} ({len(waveform)} samples, {MIN_FRAMES} feature frames needed)', path=path, item=item
    )


def skip_reason(error: InputError) -> str:
  """The :data:`SKIP_REASONS` entry an audio error carries, else 'unreadable audio'."""
  if error.reason.startswith(audio.NO_SAMPLES):
    return EMPTY
  if audio.NON_FINITE_PATTERN.match(error.reason):
    return NON_FINITE
  return next((reason for reason in SKIP_REASONS if error.reason.startswith(reason)), 'unreadable audio')


def prepare(
  waveform: np.ndarray, policy: str = 'truncate', *, path: str | None = None, item: str | None = None
) -> Clip:
  """Checks a 16 kHz waveform and applies the long-clip policy (module docstring).

  Raises:
    InputError: the audio cannot be rated (:func:`check_audio`).
    ValueError: an unknown policy.
  """
  if policy not in POLICIES:
    raise ValueError(f'clip policy must be one of {POLICIES}, got {policy!r}')
  check_audio(waveform, path=path, item=item)
  seconds = len(waveform) / features.SAMPLE_RATE
  if len(waveform) <= features.MAX_SAMPLES:
    return Clip((waveform,), WHOLE, seconds)
  if policy == 'truncate':
    return Clip((waveform[: features.MAX_SAMPLES],), TRUNCATED, seconds)
  count = -(-len(waveform) // features.MAX_SAMPLES)
  return Clip(tuple(np.array_split(waveform, count)), SPLIT, seconds)


def aggregate_scores(probs: np.ndarray, mass: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
  """A clip's label distribution from its windows': the duration-weighted mean.

  Args:
    probs: ``[W, C]`` each window's distribution over the label set.
    mass: ``[W]`` each window's probability of answering with any label.
    weights: ``[W]`` duration weights summing to 1 (:attr:`Clip.weights`).

  Returns:
    (``[C]`` float64 distribution, summing to 1; the weighted mean label mass).
  """
  weights = np.asarray(weights, np.float64)
  return weights @ np.asarray(probs, np.float64), float(weights @ np.asarray(mass, np.float64))
