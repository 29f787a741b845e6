"""What a corpus loader needs to know about its audio files without decoding them."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import soundfile as sf

from perax.core.errors import InputError


def existing_audio(path: os.PathLike | str) -> str | None:
  """The absolute path if the file exists, else None (the utterance then has no audio)."""
  path = os.path.abspath(os.fspath(path))
  return path if os.path.isfile(path) else None


def audio_duration(path: os.PathLike | str) -> float:
  """Duration in seconds from the file's header (fast: no decoding).

  Raises:
    InputError: the file is missing, not a readable audio file, or has no frames (a 0-frame wav
      would reach the model as an empty clip).
  """
  try:
    info = sf.info(os.fspath(path))
  except (RuntimeError, OSError) as e:
    raise InputError(f'cannot read audio header: {e}', path=path) from e
  if info.frames <= 0 or info.samplerate <= 0:
    raise InputError(f'audio has no samples ({info.frames} frames)', path=path)
  return float(info.frames / info.samplerate)


def long_clips_warning(utterances: pa.Table, limit_s: float | None = None) -> str | None:
  """A one-line warning counting the utterances longer than ``limit_s``, or None when there are none.

  ``limit_s`` defaults to perax.data.features.MAX_SECONDS (30 s: the longest clip the audio encoder
  takes whole; imported here only when needed, as features imports JAX).

  Such clips are not dropped: the clip policy of perax.data.clips (truncate to 30 s, or split into
  30 s windows) handles them later; prepare says how many there are so the choice is made knowingly.
  """
  if limit_s is None:
    from perax.data import features

    limit_s = features.MAX_SECONDS
  duration = utterances.column('duration_s').to_numpy(zero_copy_only=False).astype(np.float64)
  long = np.flatnonzero(np.nan_to_num(duration, nan=0.0) > limit_s)
  if not long.size:
    return None
  ids = utterances.column('utt_id')
  longest = int(long[np.argmax(duration[long])])
  return (
    f'{long.size} of {utterances.num_rows} utterances are longer than {limit_s:g} s '
    f'(longest: {ids[longest].as_py()}, {duration[longest]:.1f} s); the clip policy truncates them '
    f'to {limit_s:g} s or splits them into {limit_s:g} s windows'
  )
