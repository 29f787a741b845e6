"""EmoDB (Berlin Database of Emotional Speech): wav/*.wav and the perception test, perception.csv.

File names are speaker (2 digits) + text code (a01..b10) + emotion letter (W L E A F T N) + version
letter, e.g. 03a01Fa.wav. perception.csv has one row per file: file, speaker, text_code, emotion (the
intended emotion in English), recognition_pct (share of the listeners who recognised it) and
naturalness_pct.

What becomes of it:
- utterances: utt_id is the file stem (03a01Fa), speaker the 2-digit code, transcript the German
  sentence of the text code, duration from the wav header, split by speaker with
  :func:`perax.data.corpora.splits.speaker_splits` (seeded, 70/10/20 by default: 7/1/2 of the 10 actors),
  fold null. Extra column ``intended_emotion``.
- votes: the perception test had 20 listeners (21 for a few files: their percentages, such as
  95.24 = 20/21, fit no count out of 20; the listener count is the smallest from 20 up that makes
  the percentage a whole count). ``recognition_pct`` gives how many chose the intended emotion: they
  become that many votes for it, raters ``listener_<k>`` (positions, not people). What the other
  listeners chose is not published, so by default they cast no vote rather than invented ones;
  ``unrecognised_label='other'`` (or any canonical label) counts them as votes for that label, text
  null. Either way every utterance's human distribution is the one its published numbers support.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from perax.core.errors import InputError, SkipCounter, handle
from perax.data import labels as labels_lib
from perax.data import tables
from perax.data.corpora import base
from perax.data.corpora import splits as splits_lib
from perax.data.corpora.audio_info import audio_duration
from perax.data.corpora.csv_rows import read_csv_rows

NAME = 'emodb'
WAV_DIR = 'wav'
PERCEPTION_FILE = 'perception.csv'
MIN_LISTENERS = 20
MAX_LISTENERS = 30
SENTENCES = {
  'a01': 'Der Lappen liegt auf dem Eisschrank.',
  'a02': 'Das will sie am Mittwoch abgeben.',
  'a04': 'Heute abend könnte ich es ihm sagen.',
  'a05': 'Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.',
  'a07': 'In sieben Stunden wird es soweit sein.',
  'b01': 'Was sind denn das für Tüten, die da unter dem Tisch stehen?',
  'b02': 'Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.',
  'b03': 'An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.',
  'b09': 'Ich will das eben wegbringen und dann mit Karl was trinken gehen.',
  'b10': 'Die wird auf dem Platz sein, wo wir sie immer hinlegen.',
}
_FILE = re.compile(r'^(\d{2})([ab]\d{2})([WLEAFTN])([a-z])\.wav$')
_COUNT_TOLERANCE = 0.002  # a two-decimal percentage of <= 30 listeners is off by < 0.0015


def recognised_count(percent: float) -> tuple[int, int]:
  """(listeners who recognised the emotion, listeners) behind a published recognition percentage.

  The listener count is the smallest in [MIN_LISTENERS, MAX_LISTENERS] for which ``percent`` of it
  is a whole number (within rounding of a two-decimal percentage).

  Raises:
    InputError: no listener count in range fits ``percent``.
  """
  if not 0.0 <= percent <= 100.0:
    raise InputError(f'recognition_pct {percent} is not a percentage')
  for listeners in range(MIN_LISTENERS, MAX_LISTENERS + 1):
    count = percent * listeners / 100.0
    if abs(count - round(count)) < _COUNT_TOLERANCE:
      return round(count), listeners
  raise InputError(
    f'recognition_pct {percent} is no whole count of {MIN_LISTENERS}..{MAX_LISTENERS} listeners'
  )


def _check_row(row: dict[str, str], path: str, line: int) -> tuple[str, str, str, int, int]:
  """(stem, speaker, intended label, recognised, listeners) of one perception.csv row, checked."""
  match = _FILE.match(row['file'])
  if not match:
    raise InputError(
      f'file name {row["file"]!r} is not speaker+text+emotion+version.wav', path=path, line=line
    )
  speaker, text_code, letter, _ = match.groups()
  if text_code not in SENTENCES:
    raise InputError(f'unknown text code {text_code!r}; known: {sorted(SENTENCES)}', path=path, line=line)
  if row['speaker'] != speaker or row['text_code'] != text_code:
    raise InputError(
      f'speaker {row["speaker"]!r} / text_code {row["text_code"]!r} disagree with file name {row["file"]!r}',
      path=path,
      line=line,
    )
  intended = labels_lib.from_code(NAME, letter)
  if labels_lib.parse_label(row['emotion']) != intended:
    raise InputError(
      f'emotion {row["emotion"]!r} disagrees with the file name letter {letter!r} ({intended})',
      path=path,
      line=line,
    )
  try:
    recognised, listeners = recognised_count(float(row['recognition_pct']))
  except ValueError as e:
    raise InputError(f'recognition_pct {row["recognition_pct"]!r}: {e}', path=path, line=line) from e
  return row['file'][: -len('.wav')], speaker, intended, recognised, listeners


def load(
  path: os.PathLike | str,
  *,
  lenient: bool = False,
  seed: int = 0,
  split_fractions: Sequence[float] = splits_lib.DEFAULT_FRACTIONS,
  unrecognised_label: str | None = None,
) -> base.Corpus:
  """Loads EmoDB (format and choices in the module docstring).

  Args:
    path: the directory holding wav/ and perception.csv.
    lenient: skip and count malformed rows, unreadable wavs and files missing on either side.
    seed: seed of the speaker split.
    split_fractions: train/dev/test shares of speakers.
    unrecognised_label: canonical label voted by the listeners who did not recognise the intended
      emotion, or None to leave them out.

  Raises:
    InputError: malformed input (file and line), a wav without a perception row or the reverse.
  """
  if unrecognised_label is not None and unrecognised_label not in labels_lib.CANONICAL:
    raise InputError(f'unrecognised_label {unrecognised_label!r} is not a canonical label')
  root = os.path.abspath(os.fspath(path))
  wav_dir = os.path.join(root, WAV_DIR)
  perception = os.path.join(root, PERCEPTION_FILE)
  if not os.path.isdir(wav_dir):
    raise InputError('no wav/ directory', path=wav_dir)
  wavs = {name for name in os.listdir(wav_dir) if name.endswith('.wav') and not name.startswith('.')}
  skipped = SkipCounter()
  utterances, votes, listed = [], [], set()
  for line, row in read_csv_rows(
    perception,
    ('file', 'speaker', 'text_code', 'emotion', 'recognition_pct'),
    lenient=lenient,
    skipped=skipped,
  ):
    repeated = row['file'] in listed
    listed.add(row['file'])
    try:
      if repeated:
        raise InputError(f'file {row["file"]!r} repeats', path=perception, line=line)
      stem, speaker, intended, recognised, listeners = _check_row(row, perception, line)
      if row['file'] not in wavs:
        raise InputError(f'no wav for {row["file"]!r} in {wav_dir}', path=perception, line=line)
      audio_path = os.path.join(wav_dir, row['file'])
      duration = audio_duration(audio_path)
    except InputError as e:
      handle(e, lenient, skipped)
      continue
    utterances.append(
      {
        'utt_id': stem,
        'audio_path': audio_path,
        'duration_s': duration,
        'transcript': SENTENCES[stem[2:5]],
        'speaker': speaker,
        'corpus': NAME,
        'intended_emotion': intended,
      }
    )
    votes.extend(
      {
        'utt_id': stem,
        'rater': f'listener_{k}',
        'source': tables.HUMAN,
        'label': intended,
        'text': row['emotion'],
      }
      for k in range(recognised)
    )
    if unrecognised_label is not None:
      votes.extend(
        {
          'utt_id': stem,
          'rater': f'listener_{k}',
          'source': tables.HUMAN,
          'label': unrecognised_label,
          'text': None,
        }
        for k in range(recognised, listeners)
      )
  for name in sorted(wavs - listed):
    handle(InputError('wav has no row in perception.csv', path=os.path.join(wav_dir, name)), lenient, skipped)
  if not utterances:
    raise InputError('no utterances', path=perception)
  split_of = splits_lib.speaker_splits(
    [u['speaker'] for u in utterances], seed=seed, fractions=split_fractions
  )
  for utterance in utterances:
    utterance['split'] = split_of[utterance['speaker']]
  return base.Corpus(NAME, tables.utterances_table(utterances), tables.votes_table(votes), skipped)
