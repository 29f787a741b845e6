"""CREMA-D: crowd vote counts per clip (tabulatedVotes.csv), one rater pool at a time.

tabulatedVotes.csv has one row per clip and stimulus modality; the leading digit of the unnamed row
id is the pool that saw the stimulus: 1 voice only, 2 face only, 3 audio-visual. Columns A D F H N S
count the raters who chose each emotion and must sum to numResponses.

What becomes of it:
- utterances: one per clip of the chosen pool (``modality``); utt_id is the clip name
  (1001_IEO_HAP_HI), speaker the actor (1001), transcript the sentence the code names (IEO ->
  "It's eleven o'clock."), split by actor with :func:`perax.data.corpora.splits.speaker_splits` (seeded,
  70/10/20 by default), fold null. audio_path and duration come from <path>/AudioWAV/<clip>.wav where
  that file exists (the audio is not in the vote release), else null / NaN; an unreadable or 0-frame
  file is an error, or with ``lenient`` counted as skipped and its clip kept without audio. Extra columns:
  ``intended_emotion`` (canonical label of the acted emotion) and ``intensity`` (LO MD HI XX).
- votes: counts become one row per counted vote, in column order A D F H N S; the rater id is
  ``<pool>_<k>`` with k the 0-based position of the vote within its clip. The crowd was anonymous per
  clip, so these ids are positions, not people: voice_3 of two clips need not be the same person.
- reference_votes: another pool (``reference_modality``), in the same form, or None.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from perax.core.errors import InputError, SkipCounter, handle
from perax.data import labels as labels_lib
from perax.data import tables
from perax.data.corpora import base
from perax.data.corpora import splits as splits_lib
from perax.data.corpora.audio_info import audio_duration, existing_audio
from perax.data.corpora.csv_rows import read_csv_rows

NAME = 'crema_d'
VOTES_FILE = 'tabulatedVotes.csv'
AUDIO_DIR = 'AudioWAV'
MODALITIES = {'voice': '1', 'face': '2', 'audiovisual': '3'}
VOTE_CODES = ('A', 'D', 'F', 'H', 'N', 'S')
INTENDED = {'ANG': 'angry', 'DIS': 'disgust', 'FEA': 'fear', 'HAP': 'happy', 'NEU': 'neutral', 'SAD': 'sad'}
SENTENCES = {
  'IEO': "It's eleven o'clock.",
  'TIE': 'That is exactly what happened.',
  'IOM': "I'm on my way to the meeting.",
  'IWW': 'I wonder what this is about.',
  'TAI': 'The airplane is almost full.',
  'MTI': 'Maybe tomorrow it will be cold.',
  'IWL': 'I would like a new alarm clock.',
  'ITH': "I think I have a doctor's appointment.",
  'DFA': "Don't forget a jacket.",
  'ITS': "I think I've seen this before.",
  'TSI': 'The surface is slick.',
  'WSI': "We'll stop in a couple of minutes.",
}
_CLIP = re.compile(r'^(\d{4})_([A-Z]{3})_([A-Z]{3})_(LO|MD|HI|XX)$')


def _pool_digit(row: dict[str, str], path: str, line: int) -> str:
  """The modality digit (1, 2 or 3) leading a tabulatedVotes row id."""
  row_id = row['']
  if not row_id.isdigit() or row_id[0] not in MODALITIES.values():
    raise InputError(
      f'row id {row_id!r} does not start with a modality digit 1, 2 or 3', path=path, line=line
    )
  return row_id[0]


def _clip_counts(row: dict[str, str], path: str, line: int) -> tuple[str, np.ndarray]:
  """(clip name, counts [6] in VOTE_CODES order) of one tabulatedVotes row, checked."""
  clip = row['fileName']
  match = _CLIP.match(clip)
  if not match or match.group(2) not in SENTENCES or match.group(3) not in INTENDED:
    raise InputError(f'clip name {clip!r} is not ACTOR_SENTENCE_EMOTION_LEVEL', path=path, line=line)
  try:
    counts = np.array([int(row[code]) for code in VOTE_CODES], dtype=np.int64)
    responses = int(row['numResponses'])
  except ValueError as e:
    raise InputError(f'vote counts must be integers: {e}', path=path, line=line) from e
  if counts.min() < 0 or counts.sum() != responses:
    raise InputError(
      f'counts {dict(zip(VOTE_CODES, counts.tolist()))} do not sum to numResponses {responses}',
      path=path,
      line=line,
    )
  return clip, counts


def _read_pools(
  path: str, digits: Sequence[str], lenient: bool, skipped: SkipCounter
) -> dict[str, dict[str, np.ndarray]]:
  """For each pool digit in ``digits``: clip name -> counts [6], in file order.

  Rows of every pool are checked (row id, clip name, counts, no clip twice in a pool), loaded or not.
  """
  pools, seen = {digit: {} for digit in digits}, set()
  for line, row in read_csv_rows(
    path, ('', *VOTE_CODES, 'fileName', 'numResponses'), lenient=lenient, skipped=skipped
  ):
    try:
      digit = _pool_digit(row, path, line)
      if (digit, row['fileName']) in seen:
        raise InputError(f'clip {row["fileName"]!r} repeats in pool {digit}', path=path, line=line)
      seen.add((digit, row['fileName']))
      clip, counts = _clip_counts(row, path, line)  # every row is checked, whichever pool is loaded
      if digit not in pools:
        continue
    except InputError as e:
      handle(e, lenient, skipped)
      continue
    pools[digit][clip] = counts
  return pools


def _votes(
  pool: str,
  clip_counts: dict[str, np.ndarray],
  known: set[str],
  lenient: bool,
  skipped: SkipCounter,
  path: str,
) -> pa.Table:
  """One vote row per counted rater, for the clips of ``clip_counts`` that are in ``known``."""
  label_of = {code: labels_lib.from_code(NAME, code) for code in VOTE_CODES}
  columns = {'utt_id': [], 'rater': [], 'label': [], 'text': []}
  for clip, counts in clip_counts.items():
    if clip not in known:
      handle(
        InputError(f'{pool} votes for a clip absent from the utterances', path=path, item=clip),
        lenient,
        skipped,
      )
      continue
    codes = [code for code, count in zip(VOTE_CODES, counts) for _ in range(count)]
    columns['utt_id'].extend([clip] * len(codes))
    columns['rater'].extend(f'{pool}_{k}' for k in range(len(codes)))
    columns['label'].extend(label_of[code] for code in codes)
    columns['text'].extend(codes)
  columns['source'] = [tables.HUMAN] * len(columns['utt_id'])
  columns['weight'] = np.ones(len(columns['utt_id']))
  return tables.votes_table(columns)


def _audio(
  audio_dir: str, clips: list[str], lenient: bool, skipped: SkipCounter
) -> tuple[list[str | None], list[float]]:
  """(audio path or None, duration or NaN) of each clip's AudioWAV file.

  A missing file is normal (the audio is a separate release); an unreadable or empty one raises,
  or with ``lenient`` is counted in ``skipped`` and its clip kept without audio (as MSP-Podcast).
  """
  paths, durations = [], []
  for clip in clips:
    audio_path = existing_audio(os.path.join(audio_dir, f'{clip}.wav'))
    duration = float('nan')
    if audio_path is not None:
      try:
        duration = audio_duration(audio_path)
      except InputError as e:
        handle(e, lenient, skipped)
        audio_path = None
    paths.append(audio_path)
    durations.append(duration)
  return paths, durations


def load(
  path: os.PathLike | str,
  *,
  lenient: bool = False,
  modality: str = 'voice',
  reference_modality: str | None = None,
  seed: int = 0,
  split_fractions: Sequence[float] = splits_lib.DEFAULT_FRACTIONS,
) -> base.Corpus:
  """Loads CREMA-D's votes of one rater pool (format and choices in the module docstring).

  Args:
    path: the release directory holding tabulatedVotes.csv (and AudioWAV/ where available).
    lenient: skip and count malformed rows and unreadable AudioWAV files instead of raising.
    modality: the pool whose votes are the corpus's votes: voice, face or audiovisual.
    reference_modality: another pool loaded as ``reference_votes``, or None.
    seed: seed of the speaker split.
    split_fractions: train/dev/test shares of actors.

  Raises:
    InputError: malformed input (file and line), unknown modality.
  """
  for pool in (modality, reference_modality):
    if pool is not None and pool not in MODALITIES:
      raise InputError(f'unknown CREMA-D modality {pool!r}; expected one of {sorted(MODALITIES)}')
  if reference_modality == modality:
    raise InputError(f'reference_modality repeats modality {modality!r}')
  votes_path = os.path.join(os.fspath(path), VOTES_FILE)
  skipped = SkipCounter()
  wanted = [MODALITIES[pool] for pool in (modality, reference_modality) if pool is not None]
  pools = _read_pools(votes_path, wanted, lenient, skipped)
  clips = list(pools[MODALITIES[modality]])
  if not clips:
    raise InputError(f'no {modality} rows (row ids starting with {MODALITIES[modality]})', path=votes_path)
  parts = [_CLIP.match(clip).groups() for clip in clips]
  actors = [actor for actor, _, _, _ in parts]
  split_of = splits_lib.speaker_splits(actors, seed=seed, fractions=split_fractions)
  audio_dir = os.path.join(os.fspath(path), AUDIO_DIR)
  audio, durations = _audio(audio_dir, clips, lenient, skipped)
  utterances = tables.utterances_table(
    {
      'utt_id': clips,
      'audio_path': audio,
      'duration_s': durations,
      'transcript': [SENTENCES[sentence] for _, sentence, _, _ in parts],
      'speaker': actors,
      'split': [split_of[actor] for actor in actors],
      'corpus': [NAME] * len(clips),
      'intended_emotion': [INTENDED[emotion] for _, _, emotion, _ in parts],
      'intensity': [level for _, _, _, level in parts],
    }
  )
  known = set(clips)
  votes = _votes(modality, pools[MODALITIES[modality]], known, lenient, skipped, votes_path)
  reference = None
  if reference_modality is not None:
    reference = _votes(
      reference_modality, pools[MODALITIES[reference_modality]], known, lenient, skipped, votes_path
    )
  return base.Corpus(NAME, utterances, votes, skipped, reference)
