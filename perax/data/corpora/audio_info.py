"""What a corpus loader needs to know about its audio files without decoding them."""

from __future__ import annotations

import os

import soundfile as sf

from perax.core.errors import InputError


def existing_audio(path: os.PathLike | str) -> str | None:
  """The absolute path if the file exists, else None (the utterance then has no audio)."""
  path = os.path.abspath(os.fspath(path))
  return path if os.path.isfile(path) else None


def audio_duration(path: os.PathLike | str) -> float:
  """Duration in seconds from the file's header (fast: no decoding).

  Raises:
    InputError: the file is missing or not a readable audio file.
  """
  try:
    return float(sf.info(os.fspath(path)).duration)
  except RuntimeError as e:
    raise InputError(f'cannot read audio header: {e}', path=path) from e
