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
  need no rewriting, and it is the id the challenge baselines use); speaker SpkrID, except that each
  'Unknown' speaker is its own speaker, 'Unknown/<file stem>' (the release does not say who they are,
  so they never join two files, and a speaker-disjointness check never sees them cross splits).
  split is Split_Set lower-cased with Development -> dev: train, dev, test1, test2 and test3 where the
  release has it (perax's train/dev roles; each test set keeps its own name, and a run chooses which
  to evaluate, test1 by default: perax.data.corpora.protocols.default_test_split); the exact
  Split_Set stays in the extra column ``split_set``; a Split_Set other than Train, Development,
  Validation or Test<n> is an error. fold null; transcript and audio_path where the file exists
  (else null), duration from the audio header (else NaN). Extra columns: ``consensus`` (EmoClass as
  a canonical label; X, no agreement, is 'invalid'), ``gender``, and the consensus attributes
  ``arousal``, ``valence``, ``dominance``. An empty EmoClass (labels not released, as for a hidden
  test set) leaves ``consensus`` null; such a file usually has no rating either, and the protocol
  then drops it ('no human vote inside the label set').
- votes: one row per rating; rater the worker id; label from the primary emotion (a letter code or a
  word); text the primary as written; arousal/valence/dominance from the rating; extra column
  ``secondary`` (the secondary list as written, null when empty). The protocol's list is the eight
  emotions, Neutral and "Other (specify)", so a primary that names no canonical label
  ("Other-Concerned", "Dissapointed", "Angry and sad") is an Other vote, label 'other': a real vote
  outside the 8-class set, counted as such. "No agreement" is a consensus code, never a vote.
- encoding: both label files are UTF-8 (a BOM is accepted); a byte that is not is reported at its
  own line and column (lenient: that line is skipped and counted).

Protocols (``protocol=``; applied as perax.data.corpora.protocols describes, every decision counted):
- '8class' (default): classes msp_podcast (neutral, happy, sad, angry, contempt, surprise, disgust,
  fear). Utterances whose EmoClass is X (no agreement) or O (other) are dropped by default, as in the
  challenge's categorical task; ``emo_class_x`` / ``emo_class_o`` = 'keep' keeps them (their targets
  then come from their votes like any other's). Ratings outside the 8 classes (Other, free text)
  are counted per utterance in ``n_outside`` and dropped (``outside_votes='drop'``, default) or kept
  as an explicit class 'other' (label set msp_podcast_other). An utterance with no usable rating
  (none at all, or none inside the classes) is dropped.
- 'none': everything as read (no protocol columns): for inspection, never for training.
"""

from __future__ import annotations

import codecs
import csv
import os
import re
from collections.abc import Iterator

from perax.core.errors import InputError, SkipCounter, handle
from perax.core.progress import Progress
from perax.data import labels as labels_lib
from perax.data import tables
from perax.data.corpora import base, protocols
from perax.data.corpora.audio_info import audio_duration, existing_audio

NAME = 'msp_podcast'
LABEL_DIRS = ('Labels', 'labels', 'label')
CONSENSUS_FILES = ('labels_consensus.csv', 'labels_concensus.csv')
DETAILED_FILE = 'labels_detailed.csv'
_SPLITS = {'development': 'dev', 'validation': 'dev'}
_SPLIT_SET = re.compile(r'^(train|development|validation|test\d*)$', re.IGNORECASE)
UNKNOWN_SPEAKER = 'Unknown'
PROTOCOLS = ('8class', 'none')
CONSENSUS_POLICIES = ('drop', 'keep')
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


def _decoded_lines(path: str, lenient: bool, skipped: SkipCounter) -> list[tuple[int, str]]:
  """(line number, text with its newline) of each line of a UTF-8 file (a BOM is dropped).

  A line that is not UTF-8 raises an InputError naming its own line and column (lenient: it is
  skipped and counted), so an undecodable byte is never blamed on an earlier line.
  """
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise InputError(f'cannot read: {e}', path=path) from e
  data = data.removeprefix(codecs.BOM_UTF8)
  try:  # the usual case, at the speed of one decode
    texts = data.decode('utf-8').split('\n')
    if texts and not texts[-1]:
      texts.pop()
    return [(number, f'{text}\n') for number, text in enumerate(texts, 1)]
  except UnicodeDecodeError:
    pass
  raw_lines = data.split(b'\n')
  if raw_lines and not raw_lines[-1]:
    raw_lines.pop()
  lines = []
  for number, raw in enumerate(raw_lines, 1):
    try:
      lines.append((number, raw.decode('utf-8') + '\n'))
    except UnicodeDecodeError as e:
      error = InputError(
        f'not UTF-8 text: byte 0x{raw[e.start]:02x} at column {e.start + 1}', path=path, line=number
      )
      handle(error, lenient, skipped)
  return lines


def _csv_rows(
  path: str, required: tuple[str, ...], lenient: bool, skipped: SkipCounter
) -> Iterator[tuple[int, dict[str, str]]]:
  """Yields (line where the row starts, row) of a label CSV; checks header and field counts.

  Raises:
    InputError: missing file, bad bytes (their own line), missing header or columns, malformed CSV,
      (strict) a row with the wrong number of fields.
  """
  if not os.path.isfile(path):
    raise InputError('no such file', path=path)
  lines = _decoded_lines(path, lenient, skipped)
  numbers = [number for number, _ in lines]
  reader = csv.reader(text for _, text in lines)
  try:
    header = [name.strip() for name in next(reader)]
  except StopIteration:
    raise InputError('empty file, expected a CSV header', path=path, line=1) from None
  missing = [name for name in required if name not in header]
  if missing:
    raise InputError(f'CSV header lacks columns {missing}; has {header}', path=path, line=numbers[0])
  while True:
    start = reader.line_num
    line = numbers[start] if start < len(numbers) else numbers[-1] + 1
    try:
      fields = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      raise InputError(f'malformed CSV: {e}', path=path, line=line) from e
    if not fields or (len(fields) == 1 and not fields[0].strip()):
      continue
    if len(fields) != len(header):
      handle(
        InputError(f'expected {len(header)} fields, found {len(fields)}', path=path, line=line),
        lenient,
        skipped,
      )
      continue
    yield line, {name: value.strip() for name, value in zip(header, fields)}


def _speaker(spkr_id: str, file_name: str) -> str | None:
  """SpkrID, except that each 'Unknown' speaker is its own speaker: 'Unknown/<file stem>'."""
  if spkr_id.lower() == UNKNOWN_SPEAKER.lower():
    return f'{UNKNOWN_SPEAKER}/{os.path.splitext(file_name)[0]}'
  return spkr_id or None


def _read_consensus(path: str, lenient: bool, skipped: SkipCounter) -> list[dict]:
  utterances, seen = [], set()
  for line, row in _csv_rows(path, ('FileName', 'EmoClass', 'SpkrID', 'Split_Set'), lenient, skipped):
    try:
      if not row['FileName'] or not row['Split_Set']:
        raise InputError('empty FileName or Split_Set', path=path, line=line)
      if not _SPLIT_SET.match(row['Split_Set']):
        raise InputError(
          f'unknown Split_Set {row["Split_Set"]!r}; expected Train, Development or Test<n>',
          path=path,
          line=line,
        )
      if row['FileName'] in seen:
        raise InputError(f'FileName {row["FileName"]!r} repeats', path=path, line=line)
      try:
        consensus = labels_lib.from_code(NAME, row['EmoClass']) if row['EmoClass'] else None
      except InputError as e:
        raise InputError(e.reason, path=path, line=line) from e
      utterance = {
        'utt_id': row['FileName'],
        'speaker': _speaker(row['SpkrID'], row['FileName']),
        'split': _SPLITS.get(row['Split_Set'].lower(), row['Split_Set'].lower()),
        'split_set': row['Split_Set'],
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
  if not os.path.isfile(path):
    raise InputError('no such file', path=path)
  with open(path, 'rb') as f:
    header = f.readline().decode('utf-8', errors='replace')
  if 'EmoDetail' in header:
    required = ('FileName', 'EmoDetail')
  elif 'EmoClass_Major' in header:
    required = ('FileName', 'Workers', 'EmoClass_Major', 'EmoClass_Second', 'EmoAct', 'EmoVal', 'EmoDom')
  else:
    raise InputError(
      'header has neither EmoDetail (v1.11+) nor EmoClass_Major (v1.6) columns', path=path, line=1
    )
  for line, row in _csv_rows(path, required, lenient, skipped):
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


def _consensus_reasons(utterances: list[dict], emo_class_x: str, emo_class_o: str) -> list[str | None]:
  """Step 1 of the protocol: the EmoClass X and O utterances the options leave out."""
  drop = {
    labels_lib.INVALID: 'EmoClass X (no agreement)' if emo_class_x == 'drop' else None,
    'other': 'EmoClass O (other)' if emo_class_o == 'drop' else None,
  }
  return [drop.get(u['consensus']) for u in utterances]


def load(
  path: os.PathLike | str,
  *,
  lenient: bool = False,
  protocol: str = '8class',
  emo_class_x: str = 'drop',
  emo_class_o: str = 'drop',
  outside_votes: str = 'drop',
  label_set: str | None = None,
) -> base.Corpus:
  """Loads MSP-Podcast (formats, protocol and choices in the module docstring).

  Args:
    path: the release directory (Labels/, Transcripts/, Audios/).
    lenient: skip and count malformed rows and ratings of unknown files; an unreadable transcript
      or audio file is counted and left out of its utterance.
    protocol: '8class' (default) or 'none' (everything as read, no protocol columns).
    emo_class_x: 'drop' (default) or 'keep' the utterances whose consensus is X (no agreement).
    emo_class_o: 'drop' (default) or 'keep' the utterances whose consensus is O (other).
    outside_votes: 'drop' (default) or 'other': what becomes of ratings outside the 8 classes.
    label_set: the label set the run uses, checked against the protocol's (msp_podcast, or
      msp_podcast_other with outside_votes='other'); None accepts it.

  Raises:
    InputError: malformed input (file and line), missing label files, unknown options, or a label
      set that disagrees with the protocol.
  """
  if protocol not in PROTOCOLS:
    raise InputError(f'unknown MSP-Podcast protocol {protocol!r}; known: {", ".join(PROTOCOLS)}')
  for name, value in (('emo_class_x', emo_class_x), ('emo_class_o', emo_class_o)):
    if value not in CONSENSUS_POLICIES:
      raise InputError(f'{name} must be one of {CONSENSUS_POLICIES}, got {value!r}')
  classes = labels_lib.get_label_set(NAME)
  if protocol != 'none':
    expected = protocols.with_other(classes) if outside_votes == 'other' else classes
    hint = 'use --outside_votes=other for msp_podcast_other, or --msp_protocol=none to inspect'
    protocols.check_label_set(label_set, expected, protocol, NAME, hint)
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
  utterance_table, vote_table = tables.utterances_table(utterances), tables.votes_table(votes)
  options = {'protocol': protocol, 'emo_class_x': emo_class_x, 'emo_class_o': emo_class_o}
  options['outside_votes'] = outside_votes
  if protocol == 'none':
    report = protocols.unapplied(NAME, utterance_table, vote_table, options)
  else:
    utterance_table, vote_table, report = protocols.apply(
      NAME,
      protocol,
      utterance_table,
      vote_table,
      label_set=classes,
      outside_votes=outside_votes,
      drop_reasons=_consensus_reasons(utterances, emo_class_x, emo_class_o),
      options=options,
    )
  return base.Corpus(NAME, utterance_table, vote_table, skipped, protocol=report)
