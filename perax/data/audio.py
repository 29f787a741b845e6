"""Reading and writing audio: mono float32 waveforms at a target sample rate.

:func:`load_audio` reads only the frames it needs (a segment of a long recording reads just that
segment), averages channels to mono and resamples with soxr's high-quality filter. It is the one
place audio enters perax, so every clip reaches the feature extractor at 16 kHz whatever its file's
rate, and it refuses (InputError naming the file) audio perax cannot score: no samples, or NaN or
infinite samples (:func:`check_finite`). :func:`write_wav` writes a waveform atomically.

:data:`SAMPLE_RATE` is the one home of perax's sample rate; every other module imports it.
"""

from __future__ import annotations

import os
import pathlib
import re
import tempfile

import numpy as np
import soundfile
import soxr

from perax.core.errors import InputError

SAMPLE_RATE = 16000
RESAMPLE_QUALITY = 'HQ'


def load_audio(
  path: os.PathLike | str,
  sr: int = SAMPLE_RATE,
  start_s: float | None = None,
  end_s: float | None = None,
) -> np.ndarray:
  """Reads a mono waveform at ``sr``, optionally only the segment [start_s, end_s).

  Args:
    path: any file libsndfile reads (wav, flac, ogg, ...).
    sr: target sample rate in Hz.
    start_s: segment start in seconds (default: the beginning).
    end_s: segment end in seconds (default: the end); an end past the file's end is clamped to it,
      as segment times in corpus annotations often overshoot by a few milliseconds.

  Returns:
    float32 [T] in [-1, 1] (the file's sample values), channels averaged, resampled to ``sr``.

  Raises:
    InputError: naming ``path``, when the file is missing or unreadable, has no frames, holds NaN
      or infinite samples (:func:`check_finite`), or the segment is empty or starts outside the file.
  """
  try:
    with soundfile.SoundFile(str(path)) as audio_file:
      file_rate, total = audio_file.samplerate, audio_file.frames
      if total == 0:
        raise InputError('audio has no samples (0 frames)', path=path)
      start = 0 if start_s is None else int(round(start_s * file_rate))
      stop = total if end_s is None else min(int(round(end_s * file_rate)), total)
      if start < 0 or start >= total or stop <= start:
        raise InputError(
          f'segment [{start_s}, {end_s}) s is empty or outside the file ({total / file_rate:.3f} s)',
          path=path,
        )
      audio_file.seek(start)
      frames = audio_file.read(stop - start, dtype='float32', always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
    raise InputError(f'cannot read audio: {error}', path=path) from error
  check_finite(frames, path)
  mono = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)
  if file_rate == sr:
    return np.ascontiguousarray(mono)
  return soxr.resample(mono, file_rate, sr, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)


NO_SAMPLES = 'audio has no samples'
NON_FINITE_PATTERN = re.compile(r'audio has \d+ NaN and \d+ infinite samples')


def check_finite(wave: np.ndarray, path: os.PathLike | str | None = None) -> np.ndarray:
  """Returns ``wave`` unchanged if it holds samples and all are finite; else raises naming ``path``.

  The one test of "audio perax can score": :func:`load_audio` applies it to every file it reads, and
  code holding a waveform from elsewhere (a mix, a window of a long clip) can call it too.

  Args:
    wave: samples of any shape ([T] or [T, channels]).
    path: the file (or item) the samples came from, named in the error.

  Raises:
    InputError: ``wave`` is empty ('audio has no samples'), or holds NaN or +-Inf samples (the
      message counts each and gives the index of the first frame holding one).
  """
  wave = np.asarray(wave)
  if wave.size == 0:
    raise InputError(NO_SAMPLES, path=path)
  finite = np.isfinite(wave)
  if not finite.all():
    nan, inf = int(np.isnan(wave).sum()), int(np.isinf(wave).sum())
    first = int(np.flatnonzero(~finite.reshape(wave.shape[0], -1).all(axis=1))[0]) if wave.ndim else 0
    raise InputError(f'audio has {nan} NaN and {inf} infinite samples (first at frame {first})', path=path)
  return wave


def write_wav(
  path: os.PathLike | str, audio: np.ndarray, sr: int = SAMPLE_RATE, subtype: str = 'PCM_16'
) -> None:
  """Writes a mono waveform as a wav file, atomically (a temporary file renamed into place).

  Args:
    path: destination; its directory is created if needed.
    audio: float [T] in [-1, 1]; PCM subtypes clip values outside.
    sr: sample rate in Hz.
    subtype: libsndfile subtype, e.g. 'PCM_16' or 'FLOAT'.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.wav')
  os.close(descriptor)
  try:
    soundfile.write(temporary, np.asarray(audio, dtype=np.float32), sr, subtype=subtype, format='WAV')
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.unlink(temporary)
