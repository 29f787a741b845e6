"""A generic corpus from manifests: utterances and votes tables in CSV, JSONL or Parquet.

utterances (``path``): the columns of perax.data.tables.UTTERANCE_SCHEMA; utt_id is required and unique,
the others are optional (missing or empty strings are null, numbers NaN); extra columns are kept (a
JSONL column must keep one type: an int on one line and a string on another is an error naming the
line). split, where given, goes through :func:`perax.data.tables.canonical_split` (Train -> train,
Development -> dev; a typo such as 'tain' is refused with a suggestion). Times: start_s and end_s
are non-negative, end_s > start_s, duration_s > 0. A relative audio_path is taken relative to the
manifest's directory and must exist, have frames, and start_s must lie inside it; a missing
duration_s is end_s - start_s (start_s missing: 0; end_s missing or past the audio's end: the audio's
end), NaN where neither end_s nor audio is given. corpus
defaults to 'manifest'.

votes (``votes``: one or more files): utt_id, rater and label are required; source (human or
synthetic, default human), weight (in (0, 1]; missing means 1; NaN is refused), text (default: the
label as written) and valence / arousal / dominance are optional; extra columns are kept. The label
goes through :func:`perax.data.labels.parse_label` ("Anger" -> angry, unreadable -> invalid), text
keeps the original. Every utt_id must be among the utterances, and a human rater's weights on one
utterance sum to at most 1 (a repeated row is refused).

Text files are UTF-8, with or without a byte-order mark. Errors name the file and the line (CSV,
JSONL) or the row (Parquet, 0-based); with ``lenient`` the row is skipped and counted instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from perax.core.errors import InputError, SkipCounter, handle
from perax.data import jsonl_rows, tables
from perax.data import labels as labels_lib
from perax.data.corpora import base
from perax.data.corpora.audio_info import audio_duration
from perax.data.corpora.csv_rows import read_csv_rows

NAME = 'manifest'
_SHARE_TOLERANCE = 1e-6  # weights of one human rater on one utterance sum to at most 1
_FLOAT_FIELDS = frozenset(('start_s', 'end_s', 'duration_s', 'weight', 'valence', 'arousal', 'dominance'))


def _read_rows(
  path: str, required: Sequence[str], lenient: bool, skipped: SkipCounter
) -> Iterator[tuple[dict, dict]]:
  """Yields (location, row) for each row of a CSV, JSONL or Parquet table.

  ``location`` holds the InputError keywords naming the row: ``line`` (CSV, JSONL) or ``item``
  (Parquet). CSV and Parquet must have the ``required`` columns in their header or schema.
  """
  if not os.path.isfile(path):
    raise InputError('no such file', path=path)
  ext = os.path.splitext(path)[1].lower()
  if ext == '.csv':
    for line, row in read_csv_rows(path, required, lenient=lenient, skipped=skipped, multiline=True):
      yield {'line': line}, row
  elif ext in ('.jsonl', '.json'):
    for line, row in jsonl_rows.iter_jsonl(path, lenient, skipped):
      yield {'line': line}, row
  elif ext in ('.parquet', '.pq'):
    try:
      table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
      raise InputError(f'cannot read Parquet: {e}', path=path) from e
    missing = [name for name in required if name not in table.column_names]
    if missing:
      raise InputError(f'table lacks columns {missing}; has {table.column_names}', path=path)
    for index, row in enumerate(table.to_pylist()):
      yield {'item': f'row {index}'}, row
  else:
    raise InputError(f'unknown table format {ext!r} (expected .csv, .jsonl or .parquet)', path=path)


def _value(row: dict, name: str, path: str, where: dict):
  """A schema field of a row: float (None when missing) or string (None when missing or empty).

  Numbers may be written as numbers or strings ('1.5', 'nan'); strings as strings or integers. A
  bool, list or object in a schema field, or an infinite number, is refused.
  """
  value = row.get(name)
  if value is None or (isinstance(value, str) and not value.strip()):
    return None
  if name in _FLOAT_FIELDS:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
      raise InputError(f'{name} {value!r} is not a number', path=path, **where)
    try:
      number = float(value)
    except ValueError as e:
      raise InputError(f'{name} {value!r} is not a number', path=path, **where) from e
    if math.isinf(number):
      raise InputError(f'{name} is infinite', path=path, **where)
    return number
  if isinstance(value, bool) or not isinstance(value, (int, str)):
    raise InputError(f'{name} {value!r} is not a string', path=path, **where)
  return str(value).strip()


def _nan_if_missing(value: float | None) -> float:
  return float('nan') if value is None else value


def _check_times(utterance: dict, path: str, where: dict) -> None:
  """Refuses negative times, a segment that ends where or before it starts, a duration <= 0."""
  start_s, end_s, duration_s = utterance['start_s'], utterance['end_s'], utterance['duration_s']
  for name, value in (('start_s', start_s), ('end_s', end_s)):
    if value < 0:
      raise InputError(f'{name} {value} is negative', path=path, **where)
  begin = 0.0 if math.isnan(start_s) else start_s  # no start_s: the segment starts with the file
  if end_s <= begin:
    raise InputError(
      f'end_s {end_s} is not after start_s {begin} (a segment of {end_s - begin:g} s)', path=path, **where
    )
  if duration_s <= 0:
    raise InputError(f'duration_s {duration_s} is not positive', path=path, **where)


def _utterance(row: dict, path: str, where: dict) -> dict:
  """One utterance row in the schema, extra columns kept, split, audio and duration checked."""
  utterance = dict(row)
  utterance.update({name: _value(row, name, path, where) for name in tables.UTTERANCE_SCHEMA.names})
  for name in ('start_s', 'end_s', 'duration_s'):
    utterance[name] = _nan_if_missing(utterance[name])
  if utterance['utt_id'] is None:
    raise InputError('no utt_id', path=path, **where)
  if utterance['split'] is not None:
    utterance['split'] = tables.canonical_split(utterance['split'], path=path, **where)
  utterance['corpus'] = utterance['corpus'] or NAME
  _check_times(utterance, path, where)
  start_s = 0.0 if math.isnan(utterance['start_s']) else utterance['start_s']
  end_s = utterance['end_s']  # NaN: the end of the file
  if utterance['audio_path'] is not None:
    audio_path = os.path.join(os.path.dirname(os.path.abspath(path)), utterance['audio_path'])
    if not os.path.isfile(audio_path):
      raise InputError(f'audio file {audio_path} does not exist', path=path, **where)
    utterance['audio_path'] = audio_path
    try:
      file_s = audio_duration(audio_path)
    except InputError as e:
      raise InputError(f'audio file {audio_path}: {e.reason}', path=path, **where) from e
    if start_s >= file_s:
      raise InputError(
        f'start_s {start_s} is past the end of {audio_path} ({file_s:.3f} s)', path=path, **where
      )
    end_s = file_s if math.isnan(end_s) else min(end_s, file_s)  # load_audio clamps an end past the file
  if math.isnan(utterance['duration_s']) and not math.isnan(end_s):
    utterance['duration_s'] = end_s - start_s
  return utterance


def _vote(row: dict, path: str, where: dict) -> dict:
  """One vote row in the schema, label parsed, extra columns kept."""
  vote = dict(row)
  vote.update({name: _value(row, name, path, where) for name in tables.VOTE_SCHEMA.names})
  missing = [name for name in ('utt_id', 'rater', 'label') if vote[name] is None]
  if missing:
    raise InputError(f'vote lacks {", ".join(missing)}', path=path, **where)
  vote['source'] = vote['source'] or tables.HUMAN
  if vote['source'] not in (tables.HUMAN, tables.SYNTHETIC):
    raise InputError(
      f'source {vote["source"]!r} is neither {tables.HUMAN!r} nor {tables.SYNTHETIC!r}', path=path, **where
    )
  if vote['weight'] is None:
    vote['weight'] = 1.0  # no weight: a whole vote
  elif not 0.0 < vote['weight'] <= 1.0:  # NaN fails this too: it says nothing about the vote's share
    raise InputError(f'weight {vote["weight"]} is outside (0, 1]', path=path, **where)
  for name in ('valence', 'arousal', 'dominance'):
    vote[name] = _nan_if_missing(vote[name])
  vote['text'] = vote['text'] if vote['text'] is not None else vote['label']
  vote['label'] = labels_lib.parse_label(vote['label'])
  return vote


def _extra_columns(rows: list[dict], schema) -> list[str]:
  return list(dict.fromkeys(name for row in rows for name in row if name not in schema.names))


def _read_utterances(path: str, lenient: bool, skipped: SkipCounter) -> list[dict]:
  utterances, where_of, seen = [], [], set()
  for where, row in _read_rows(path, ('utt_id',), lenient, skipped):
    try:
      utterance = _utterance(row, path, where)
      if utterance['utt_id'] in seen:
        raise InputError(f'utt_id {utterance["utt_id"]!r} repeats', path=path, **where)
    except InputError as e:
      handle(e, lenient, skipped)
      continue
    seen.add(utterance['utt_id'])
    utterances.append(utterance)
    where_of.append(where)
  extra = _extra_columns(utterances, tables.UTTERANCE_SCHEMA)
  utterances, _ = jsonl_rows.drop_unconvertible(utterances, where_of, extra, path, lenient, skipped)
  return utterances


def _read_votes(path: str, known: set[str], shares: dict, lenient: bool, skipped: SkipCounter) -> list[dict]:
  """The votes of one file; ``shares`` ((utt_id, rater) -> weight so far) spans all votes files."""
  votes, where_of = [], []
  for where, row in _read_rows(path, ('utt_id', 'rater', 'label'), lenient, skipped):
    try:
      vote = _vote(row, path, where)
      if vote['utt_id'] not in known:
        raise InputError(
          f'vote for utt_id {vote["utt_id"]!r}, absent from the utterances', path=path, **where
        )
      key = (vote['utt_id'], vote['rater'])
      if vote['source'] == tables.HUMAN and shares.get(key, 0.0) + vote['weight'] > 1.0 + _SHARE_TOLERANCE:
        raise InputError(
          f'human rater {vote["rater"]!r} votes again for {vote["utt_id"]!r}: weights sum to '
          f'{shares[key] + vote["weight"]:g} > 1 (a repeated row?)',
          path=path,
          **where,
        )
    except InputError as e:
      handle(e, lenient, skipped)
      continue
    if vote['source'] == tables.HUMAN:
      shares[key] = shares.get(key, 0.0) + vote['weight']
    votes.append(vote)
    where_of.append(where)
  extra = _extra_columns(votes, tables.VOTE_SCHEMA)
  votes, _ = jsonl_rows.drop_unconvertible(votes, where_of, extra, path, lenient, skipped)
  return votes


def load(
  path: os.PathLike | str,
  *,
  lenient: bool = False,
  votes: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
) -> base.Corpus:
  """Loads a corpus from an utterances manifest and optional votes tables (see module docstring).

  Args:
    path: the utterances table (.csv, .jsonl or .parquet).
    lenient: skip and count malformed rows and votes for unknown utterances.
    votes: votes table(s): a path, a comma-separated string of paths, or a list; None for a corpus
      without votes (e.g. audio to be annotated by synthetic raters only).

  Raises:
    InputError: malformed input, naming file and line or row.
  """
  path = os.fspath(path)
  if isinstance(votes, (str, os.PathLike)):
    votes = [p for p in os.fspath(votes).split(',') if p]
  skipped = SkipCounter()
  utterances = _read_utterances(path, lenient, skipped)
  if not utterances:
    raise InputError('no utterances', path=path)
  known = {u['utt_id'] for u in utterances}
  shares = {}
  vote_rows = [
    v
    for votes_path in votes or ()
    for v in _read_votes(os.fspath(votes_path), known, shares, lenient, skipped)
  ]
  return base.Corpus(
    NAME,
    tables.utterances_table(utterances),
    tables.votes_table(vote_rows) if vote_rows else tables.empty_votes(),
    skipped,
  )
