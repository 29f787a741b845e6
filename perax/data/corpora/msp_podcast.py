"""MSP-Podcast: consensus and per-rater labels (Labels/*.csv), transcripts and audio.

Files (under the release directory):
- Labels/labels_consensus.csv, spelled labels_concensus.csv up to v1.9 (either is read; older
  releases name the folder labels/ or label/): FileName, EmoClass (N H S A C U D F O X), EmoAct,
  EmoVal, EmoDom, SpkrID, Gender, Split_Set.
- Labels/labels_detailed.csv, one row per rating, in either historical format (told apart by header):
  v1.6: FileName, Workers, EmoClass_Major, EmoClass_Second, EmoAct, EmoVal, EmoDom;
  v1.11+: FileName, EmoDetail = "WORKER00012; Angry; Frustrated,Annoyed; A:5.0; V:2.0; D:4.0;"
  (the secondary list may be empty; a free-text primary may itself contain ';': the secondary list
  is what follows the last ';' before the attributes).
- Transcripts/<stem>.txt and Audios/<FileName>.

What becomes of it:
- utterances: utt_id is the FileName exactly as both label files write it, '.wav' included (joins
  need no rewriting, and it is the id the challenge baselines use); speaker SpkrID; split Split_Set
  lower-cased with Development -> dev (train, dev, test1, test2, test3); fold null; transcript and
  audio_path where the file exists (else null), duration from the audio header (else NaN). Extra
  columns: ``consensus`` (EmoClass as a canonical label; X, no agreement, is 'invalid'), ``gender``,
  and the consensus attributes ``arousal``, ``valence``, ``dominance``.
- votes: one row per rating; rater the worker id; label from the primary emotion (a letter code or a
  word); text the primary as written; arousal/valence/dominance from the rating; extra column
  ``secondary`` (the secondary list as written, null when empty). The protocol's list is the eight
  emotions, Neutral and "Other (specify)", so a primary that names no canonical label
  ("Other-Concerned", "Dissapointed", "Angry and sad") is an Other vote, label 'other': a real vote
  outside the 8-class set, counted as such. "No agreement" is a consensus code, never a vote.
"""

from __future__ import annotations

import os
import re

from perax.core.errors import InputError, SkipCounter, handle
from perax.core.progress import Progress
from perax.data import labels as labels_lib
from perax.data import tables
from perax.data.corpora import base
from perax.data.corpora.audio_info import audio_duration, existing_audio
from perax.data.corpora.csv_rows import read_csv_rows

NAME = 'msp_podcast'
LABEL_DIRS = ('Labels', 'labels', 'label')
CONSENSUS_FILES = ('labels_consensus.csv', 'labels_concensus.csv')
DETAILED_FILE = 'labels_detailed.csv'
_SPLITS = {'development': 'dev', 'validation': 'dev'}
_ATTRIBUTES = re.compile(r';\s*A\s*:\s*([^;]*?)\s*;\s*V\s*:\s*([^;]*?)\s*;\s*D\s*:\s*([^;]*?)\s*;?\s*$')


def _find_labels(root: str) -> tuple[str, str]:
  """(consensus file, detailed file) of a release, whichever spelling and folder it uses."""
  for folder in LABEL_DIRS:
    for name in CONSENSUS_FILES:
      consensus = os.path.join(root, folder, name)
      if os.path.isfile(consensus):
        return consensus, os.path.join(root, folder, DETAILED_FILE)
  raise InputError(f'no {" or ".join(CONSENSUS_FILES)} in {"/, ".join(LABEL_DIRS)}/', path=root)


def _number(text: str, what: str, path: str, line: int) -> float:
  """A rating as float; an empty field is NaN."""
  if not text.strip():
    return float('nan')
  try:
    return float(text)
  except ValueError as e:
    raise InputError(f'{what} {text!r} is not a number', path=path, line=line) from e


def _primary_label(text: str) -> str:
  """The canonical label of a primary emotion (letter code or word); Other for free text."""
  if text in labels_lib.CODE_TABLES[NAME] and text != 'X':
    return labels_lib.from_code(NAME, text)
  label = labels_lib.parse_label(text)
  return 'other' if label == labels_lib.INVALID else label


def _split_detail(detail: str, path: str, line: int) -> tuple[str, str, str, tuple[str, ...]]:
  """(worker, primary, secondary, (A, V, D) texts) of a v1.11+ EmoDetail field."""
  attributes = _ATTRIBUTES.search(detail)
  worker, _, middle = detail[: attributes.start() if attributes else len(detail)].partition(';')
  if not attributes or not worker.strip():
    raise InputError(
      f'EmoDetail {detail[:80]!r} is not "WORKER; primary; secondary; A:a; V:v; D:d;"', path=path, line=line
    )
  primary, _, secondary = middle.rpartition(';') if ';' in middle else (middle, '', '')
  return worker.strip(), primary.strip(), secondary.strip(), attributes.groups()


def _rating(row: dict[str, str], path: str, line: int) -> dict:
  """One vote row from a labels_detailed row of either format."""
  if 'EmoDetail' in row:
    worker, primary, secondary, (arousal, valence, dominance) = _split_detail(row['EmoDetail'], path, line)
  else:
    worker, primary, secondary = row['Workers'], row['EmoClass_Major'], row['EmoClass_Second']
    arousal, valence, dominance = row['EmoAct'], row['EmoVal'], row['EmoDom']
  if not worker or not primary:
    raise InputError('rating lacks a worker or a primary emotion', path=path, line=line)
  if primary.upper() == 'X':
    raise InputError('"X" (no agreement) is a consensus code, not a rating', path=path, line=line)
  return {
    'utt_id': row['FileName'],
    'rater': worker,
    'source': tables.HUMAN,
    'label': _primary_label(primary),
    'text': primary,
    'arousal': _number(arousal, 'A', path, line),
    'valence': _number(valence, 'V', path, line),
    'dominance': _number(dominance, 'D', path, line),
    'secondary': secondary or None,
  }


def _read_consensus(path: str, lenient: bool, skipped: SkipCounter) -> list[dict]:
  utterances, seen = [], set()
  for line, row in read_csv_rows(
    path, ('FileName', 'EmoClass', 'SpkrID', 'Split_Set'), lenient=lenient, skipped=skipped
  ):
    try:
      if not row['FileName'] or not row['Split_Set']:
        raise InputError('empty FileName or Split_Set', path=path, line=line)
      if row['FileName'] in seen:
        raise InputError(f'FileName {row["FileName"]!r} repeats', path=path, line=line)
      try:
        consensus = labels_lib.from_code(NAME, row['EmoClass'])
      except InputError as e:
        raise InputError(e.reason, path=path, line=line) from e
      utterance = {
        'utt_id': row['FileName'],
        'speaker': row['SpkrID'] or None,
        'split': _SPLITS.get(row['Split_Set'].lower(), row['Split_Set'].lower()),
        'corpus': NAME,
        'consensus': consensus,
        'gender': row.get('Gender') or None,
        **{
          name: _number(row.get(column, ''), column, path, line)
          for name, column in (('arousal', 'EmoAct'), ('valence', 'EmoVal'), ('dominance', 'EmoDom'))
        },
      }
    except InputError as e:
      handle(e, lenient, skipped)
      continue
    seen.add(row['FileName'])
    utterances.append(utterance)
  return utterances


def _read_detailed(path: str, known: set[str], lenient: bool, skipped: SkipCounter) -> list[dict]:
  votes, required = [], None
  with open(path, encoding='utf-8-sig') as f:
    header = f.readline()
  if 'EmoDetail' in header:
    required = ('FileName', 'EmoDetail')
  elif 'EmoClass_Major' in header:
    required = ('FileName', 'Workers', 'EmoClass_Major', 'EmoClass_Second', 'EmoAct', 'EmoVal', 'EmoDom')
  else:
    raise InputError(
      'header has neither EmoDetail (v1.11+) nor EmoClass_Major (v1.6) columns', path=path, line=1
    )
  for line, row in read_csv_rows(path, required, lenient=lenient, skipped=skipped):
    try:
      vote = _rating(row, path, line)
      if vote['utt_id'] not in known:
        raise InputError(
          f'rating for {vote["utt_id"]!r}, absent from the consensus file', path=path, line=line
        )
    except InputError as e:
      handle(e, lenient, skipped)
      continue
    votes.append(vote)
  return votes


def _read_transcript(path: str) -> str | None:
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      return f.read().strip()
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f'cannot read transcript: {e}', path=path) from e


def load(path: os.PathLike | str, *, lenient: bool = False) -> base.Corpus:
  """Loads MSP-Podcast (formats and choices in the module docstring).

  Args:
    path: the release directory (Labels/, Transcripts/, Audios/).
    lenient: skip and count malformed rows and ratings of unknown files; an unreadable transcript
      or audio file is counted and left out of its utterance.

  Raises:
    InputError: malformed input (file and line), missing label files.
  """
  root = os.path.abspath(os.fspath(path))
  consensus_path, detailed_path = _find_labels(root)
  if not os.path.isfile(detailed_path):
    raise InputError('no such file', path=detailed_path)
  skipped = SkipCounter()
  utterances = _read_consensus(consensus_path, lenient, skipped)
  if not utterances:
    raise InputError('no utterances', path=consensus_path)
  votes = _read_detailed(detailed_path, {u['utt_id'] for u in utterances}, lenient, skipped)
  progress = Progress(total=len(utterances), unit='utt', what='msp_podcast transcripts and audio')
  for utterance in utterances:
    stem = os.path.splitext(utterance['utt_id'])[0]
    try:
      utterance['transcript'] = _read_transcript(os.path.join(root, 'Transcripts', f'{stem}.txt'))
    except InputError as e:
      handle(e, lenient, skipped)
    audio_path = existing_audio(os.path.join(root, 'Audios', utterance['utt_id']))
    if audio_path is not None:
      try:
        utterance['duration_s'] = audio_duration(audio_path)
        utterance['audio_path'] = audio_path
      except InputError as e:
        handle(e, lenient, skipped)
    progress.update()
  progress.close()
  return base.Corpus(NAME, tables.utterances_table(utterances), tables.votes_table(votes), skipped)
