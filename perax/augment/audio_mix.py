"""Rendering DiME-Aug examples: loudness-matched concatenation or mixup of two utterances.

A plan row (see :mod:`perax.augment.dime_aug`) names an anchor and a partner utterance, a weight and a gap;
this module turns it into a waveform, a transcript and a target distribution.  Everything here is
numpy and pure: the randomness was drawn when the plan was made, so rendering a row twice gives the
same audio.

Loudness matching scales the partner to the anchor's RMS, so neither half drowns the other; a mix
whose peak would exceed full scale is scaled down as a whole (never clipped).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pyarrow as pa
import soundfile

from perax.core.errors import InputError
from perax.data.audio import SAMPLE_RATE
from perax.data.tables import column

CONCAT = 'concat'
MIXUP = 'mixup'
ORIGINAL = 'original'
AUGMENTED = 'augmented'


def rms(waveform: np.ndarray) -> float:
  """Root mean square of a [T] waveform; 0 for an empty one."""
  return float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64)))) if waveform.size else 0.0


def match_loudness(waveform: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """``waveform`` [T] scaled to the RMS of ``reference``; a silent waveform is returned as is."""
  level = rms(waveform)
  return waveform if level == 0.0 else waveform * np.float32(rms(reference) / level)


def _within_full_scale(waveform: np.ndarray) -> np.ndarray:
  peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
  return waveform / np.float32(peak) if peak > 1.0 else waveform


def concatenate(
  anchor: np.ndarray, partner: np.ndarray, gap_s: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
  """Anchor, ``gap_s`` seconds of silence, then the loudness-matched partner.

  Args:
    anchor: [Ta] float32 waveform.
    partner: [Tp] float32 waveform.
    gap_s: silence between the two, in seconds (>= 0).
    sample_rate: of both waveforms.

  Returns:
    [Ta + round(gap_s * sample_rate) + Tp] float32, peak <= 1 when the inputs' peaks are.
  """
  gap = np.zeros(int(round(gap_s * sample_rate)), np.float32)
  mixed = np.concatenate([anchor, gap, match_loudness(partner, anchor)], dtype=np.float32)
  return _within_full_scale(mixed)


def overlay(anchor: np.ndarray, partner: np.ndarray, weight: float) -> np.ndarray:
  """Mixup: ``weight * anchor + (1 - weight) * partner`` (partner loudness-matched), from t = 0.

  Args:
    anchor: [Ta] float32 waveform.
    partner: [Tp] float32 waveform.
    weight: the anchor's share in [0, 1].

  Returns:
    [max(Ta, Tp)] float32; the shorter input is zero-padded at its end.
  """
  mixed = np.zeros(max(anchor.size, partner.size), np.float32)
  mixed[: anchor.size] += np.float32(weight) * anchor
  mixed[: partner.size] += np.float32(1.0 - weight) * match_loudness(partner, anchor)
  return _within_full_scale(mixed)


def render(
  row: Mapping, load: Callable[[str], np.ndarray], sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, str | None, np.ndarray]:
  """One plan row as audio, transcript and target.

  Args:
    row: a plan row as a dict (``plan.to_pylist()[k]``): ``origin``, ``anchor_id``, ``partner_id``,
      ``weight``, ``variant``, ``gap_s``, ``transcript`` and the ``p_<label>`` target columns in
      label-set order.  An ``origin == 'original'`` row is the anchor itself.
    load: utt_id -> [T] float32 waveform at ``sample_rate`` (mono).
    sample_rate: of the loaded and the returned audio.

  Returns:
    (waveform [T] float32, transcript or None, target [C] float32: non-negative, sums to 1).
  """
  target = np.asarray([row[name] for name in row if name.startswith('p_')], np.float64)
  target = (target / target.sum()).astype(np.float32)
  anchor = load(row['anchor_id'])
  if row['origin'] == ORIGINAL:
    return anchor, row['transcript'], target
  partner = load(row['partner_id'])
  if row['variant'] == CONCAT:
    waveform = concatenate(anchor, partner, row['gap_s'], sample_rate)
  elif row['variant'] == MIXUP:
    waveform = overlay(anchor, partner, row['weight'])
  else:
    raise InputError(f'unknown DiME-Aug variant {row["variant"]!r}', item=row.get('utt_id'))
  return waveform, row['transcript'], target


def utterance_durations(utterances: pa.Table) -> np.ndarray:
  """[N] float64 seconds per utterance: ``duration_s``, else ``end_s - start_s``, else the file's.

  Raises:
    InputError: naming the utterance, where none of these is known (no audio_path, unreadable file).
  """
  duration = column(utterances, 'duration_s').astype(np.float64)
  segment = column(utterances, 'end_s') - column(utterances, 'start_s')
  duration = np.where(np.isnan(duration), segment, duration)
  paths = column(utterances, 'audio_path')
  starts = column(utterances, 'start_s')
  ids = column(utterances, 'utt_id')
  for k in np.flatnonzero(np.isnan(duration)):
    if paths[k] is None:
      raise InputError('duration unknown and no audio_path to measure it', item=ids[k])
    try:
      file_duration = soundfile.info(paths[k]).duration
    except (RuntimeError, OSError) as e:
      raise InputError(f'cannot read audio header: {e}', path=paths[k], item=ids[k]) from e
    duration[k] = file_duration - (0.0 if np.isnan(starts[k]) else starts[k])
  return duration
