"""Fuzzing every corpus loader and manifest format (issue 14, item 4).

Two kinds of tests:
- mutation fuzzing: a fixture file of each loader gets one random defect (a truncated line, a field
  added or removed, a Latin-1 byte, a BOM, NaN or blank fields, a duplicated or deleted line, an
  unknown word, random bytes). Loading it, strict or lenient, may only succeed or raise InputError
  (never another exception, never a multi-line message), and lenient reading must skip and count
  where strict reading fails on a line. Defects that must never pass (a repeated row, a byte that is
  not UTF-8, a row with the wrong number of fields) must be refused strictly, at their line.
- model-based fuzzing of the manifest: random rows (blank and duplicate ids, unknown and misspelt
  splits, negative and NaN times, NaN and out-of-range weights, votes for unknown utterances, mixed
  JSONL types) written as CSV, JSONL and Parquet; an independent oracle says which rows are valid,
  and the loader must refuse exactly those (strict: an error; lenient: the rest kept, the refused
  counted).
- damaged binary inputs: truncated or bit-flipped Parquet tables and wav files give an InputError
  naming the file, or a clean read (finite, non-empty audio).

The loaders fuzzed: manifest (CSV, JSONL, Parquet), CREMA-D, EmoDB, IEMOCAP, MSP-Podcast (v1.6 and
v1.11 layouts) and the plain table readers (tables.read_utterances / read_votes, CSV and JSONL).

Every test is derandomized with bounded examples, so CI runs the same cases in a few seconds each.
"""

import dataclasses
import functools
import json
import math
import pathlib
import re
import shutil
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perax.core.errors import InputError
from perax.data import audio, tables
from perax.data.corpora import audio_info, base, crema_d, emodb, iemocap, manifest, msp_podcast

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
FUZZ = settings(
  max_examples=30,
  deadline=None,
  derandomize=True,
  database=None,
  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TARGETED = settings(FUZZ, max_examples=12)
BOM = b'\xef\xbb\xbf'


def _wav(path, seconds, sr=8000):
  path.parent.mkdir(parents=True, exist_ok=True)
  soundfile.write(path, np.full(int(seconds * sr), 0.01, np.float32), sr, subtype='PCM_16')


@dataclasses.dataclass
class Target:
  """A loader on a fixture: the text files a mutation may hit and how to load it."""

  name: str
  root: pathlib.Path
  files: tuple[str, ...]
  load: Callable[[pathlib.Path, bool], object]
  encoding: str = 'utf-8'
  lenient: bool = True  # the reader has a lenient mode (the plain table readers have none)

  def run(self, lenient: bool):
    return self.load(self.root, lenient and self.lenient)


def _build_targets(base: pathlib.Path) -> dict[str, Target]:
  targets = {}
  root = pathlib.Path(shutil.copytree(FIXTURES / 'manifest', base / 'manifest'))
  _wav(root / 'audio/u1.wav', 0.75)
  _wav(root / 'audio/u2.wav', 3.0)
  targets['manifest_csv'] = Target(
    'manifest_csv',
    root,
    ('utterances.csv', 'votes.csv'),
    lambda r, lenient: manifest.load(r / 'utterances.csv', votes=r / 'votes.csv', lenient=lenient),
  )
  targets['manifest_jsonl'] = Target(
    'manifest_jsonl',
    root,
    ('utterances.jsonl', 'votes.jsonl'),
    lambda r, lenient: manifest.load(r / 'utterances.jsonl', votes=r / 'votes.jsonl', lenient=lenient),
  )
  root = pathlib.Path(shutil.copytree(FIXTURES / 'crema_d', base / 'crema_d'))
  _wav(root / 'AudioWAV' / '1001_IEO_NEU_XX.wav', 0.5)
  targets['crema_d'] = Target(
    'crema_d',
    root,
    ('tabulatedVotes.csv',),
    lambda r, lenient: crema_d.load(r, lenient=lenient, reference_modality='audiovisual'),
  )
  root = pathlib.Path(shutil.copytree(FIXTURES / 'emodb', base / 'emodb'))
  for line in (root / 'perception.csv').read_text().splitlines()[1:]:
    _wav(root / 'wav' / line.split(',')[0], 0.3)
  targets['emodb'] = Target(
    'emodb', root, ('perception.csv',), lambda r, lenient: emodb.load(r, lenient=lenient)
  )
  root = pathlib.Path(shutil.copytree(FIXTURES / 'iemocap', base / 'iemocap'))
  targets['iemocap'] = Target(
    'iemocap',
    root,
    tuple(str(p.relative_to(root)) for p in sorted(root.rglob('*.txt'))),
    lambda r, lenient: iemocap.load(r, lenient=lenient),
    encoding='latin-1',
  )
  for version in ('v1.11', 'v1.6'):
    root = pathlib.Path(shutil.copytree(FIXTURES / f'msp_podcast_{version}', base / f'msp_{version}'))
    targets[f'msp_{version}'] = Target(
      f'msp_{version}',
      root,
      tuple(str(p.relative_to(root)) for p in sorted((root / 'Labels').glob('*.csv'))),
      lambda r, lenient: msp_podcast.load(r, lenient=lenient),
    )
  root = base / 'tables'
  root.mkdir()
  (root / 'utterances.csv').write_text(
    'utt_id,speaker,split,duration_s\nu1,s1,train,1.5\nu2,s2,test,\nu3,s2,dev,2.0\n'
  )
  (root / 'votes.csv').write_text(
    'utt_id,rater,source,label,weight,text\nu1,r1,human,sad,1.0,Sadness\nu1,r2,human,happy,,happy\n'
    'u2,r1,synthetic,angry,0.5,\nu3,r1,human,neutral,1,Neutral\n'
  )
  for name in ('utterances', 'votes'):
    lines = (root / f'{name}.csv').read_text().splitlines()
    header = lines[0].split(',')
    rows = [dict(zip(header, line.split(','))) for line in lines[1:]]
    numeric = {'duration_s', 'weight'}
    (root / f'{name}.jsonl').write_text(
      ''.join(
        json.dumps({k: float(v) if k in numeric else v for k, v in r.items() if v}) + '\n' for r in rows
      )
    )
  for suffix in ('csv', 'jsonl'):
    targets[f'tables_{suffix}'] = Target(
      f'tables_{suffix}',
      root,
      (f'utterances.{suffix}', f'votes.{suffix}'),
      functools.partial(_plain_tables, suffix=suffix),
      lenient=False,
    )
  return targets


def _plain_tables(root: pathlib.Path, lenient: bool, suffix: str) -> base.Corpus:
  """The plain table readers (launchers' --votes and written tables) on the manifest's files."""
  del lenient  # they have no lenient mode
  return base.Corpus(
    'tables',
    tables.read_utterances(root / f'utterances.{suffix}'),
    tables.read_votes(root / f'votes.{suffix}'),
  )


class _Targets(dict):
  """Targets by name, with the rows of each unmutated load in ``baselines`` (short repr for reports)."""

  def __repr__(self):
    return f'<{len(self)} fuzz targets>'


@pytest.fixture(scope='module')
def targets(tmp_path_factory):
  """Each target, whose unmutated files must read cleanly."""
  built = _Targets(_build_targets(tmp_path_factory.mktemp('fuzz')))
  built.baselines = {}
  for name, target in built.items():
    corpus = target.run(False)
    assert corpus.skipped.total == 0
    built.baselines[name] = _rows(corpus)
  return built


# ----------------------------------------------------------------------------------------------
# Mutations.

KINDS = (
  'truncate',
  'drop_separator',
  'add_separator',
  'latin1',
  'bom',
  'nan',
  'blank',
  'duplicate',
  'delete',
  'unknown_word',
  'bytes',
)
_SEPARATORS = re.compile(rb'[,;\t:]')
_NUMBER = re.compile(rb'-?\d+(?:\.\d+)?')
_WORD = re.compile(rb'[A-Za-z]{2,}')
_FIELD = re.compile(rb'[^,;\t]+')


@dataclasses.dataclass(frozen=True)
class Mutation:
  file: int
  kind: str
  line: int
  position: int
  payload: bytes

  def apply(self, data: bytes) -> bytes:
    """``data`` with this one defect."""
    if self.kind == 'bom':
      return BOM + data
    lines = data.splitlines(keepends=True)
    i = self.line % len(lines)
    line = lines[i]
    body = line.rstrip(b'\r\n')
    end = line[len(body) :] or b'\n'
    at = self.position % (len(body) + 1)

    def pick(pattern):
      spans = [m.span() for m in pattern.finditer(body)]
      return spans[self.position % len(spans)] if spans else None

    if self.kind == 'truncate':
      body = body[:at]
    elif self.kind == 'drop_separator' and (span := pick(_SEPARATORS)):
      body = body[: span[0]] + body[span[1] :]
    elif self.kind == 'add_separator':
      body = body[:at] + b',' + body[at:]
    elif self.kind == 'latin1':
      body = body[:at] + b'\xe9' + body[at:]
    elif self.kind == 'nan' and (span := pick(_NUMBER)):
      body = body[: span[0]] + b'nan' + body[span[1] :]
    elif self.kind == 'blank' and (span := pick(_FIELD)):
      body = body[: span[0]] + body[span[1] :]
    elif self.kind == 'unknown_word' and (span := pick(_WORD)):
      body = body[: span[0]] + b'Zorp' + body[span[1] :]
    elif self.kind == 'bytes':
      body = body[:at] + self.payload + body[at:]
    elif self.kind == 'duplicate':
      lines.insert(i + 1, body + end)
    elif self.kind == 'delete':
      del lines[i]
      return b''.join(lines)
    lines[i] = body + end
    return b''.join(lines)


mutations = st.builds(
  Mutation,
  file=st.integers(0, 7),
  kind=st.sampled_from(KINDS),
  line=st.integers(0, 200),
  position=st.integers(0, 400),
  payload=st.binary(min_size=1, max_size=6),
)


class _Mutated:
  """Applies a mutation to one file of a target for the duration of a ``with``."""

  def __init__(self, target: Target, file: str, mutate: Callable[[bytes], bytes]):
    self.path = target.root / file
    self.mutate = mutate

  def __enter__(self):
    self.original = self.path.read_bytes()
    self.path.write_bytes(self.mutate(self.original))
    return self

  def __exit__(self, *exc):
    self.path.write_bytes(self.original)


def _load(target: Target, lenient: bool):
  """(corpus, None) or (None, InputError); any other exception fails the test with its traceback."""
  try:
    return target.run(lenient), None
  except InputError as error:
    assert '\n' not in str(error), f'multi-line error: {error}'
    assert error.path is not None or error.item is not None, f'error names no file or item: {error}'
    return None, error


def _rows(corpus) -> str:
  return repr(
    (
      corpus.utterances.to_pylist(),
      corpus.votes.to_pylist(),
      None if corpus.reference_votes is None else corpus.reference_votes.to_pylist(),
    )
  )


def _row_level(error: InputError) -> bool:
  """An error about one row or block (lenient reading skips those) rather than the whole file."""
  return (error.line is not None and error.line > 1) or (error.item is not None and error.line is None)


def _check_strict_and_lenient(target: Target):
  """The properties every mutated input must keep; returns (strict corpus, strict error)."""
  strict, strict_error = _load(target, lenient=False)
  if not target.lenient:
    return strict, strict_error
  lenient, lenient_error = _load(target, lenient=True)
  if strict_error is None:
    assert lenient_error is None, f'lenient fails where strict reads: {lenient_error}'
    assert lenient.skipped.total == 0 and _rows(lenient) == _rows(strict)
  elif lenient_error is None:
    assert lenient.skipped.total >= 1, f'strict failed ({strict_error}) but lenient skipped nothing'
  elif _row_level(strict_error):
    # Lenient reading may still stop, but only for a reason about the whole input.
    assert not _row_level(lenient_error) or 'no utterances' in str(lenient_error), (
      f'lenient stops at a row: {lenient_error} (strict: {strict_error})'
    )
  return strict, strict_error


@pytest.mark.parametrize(
  'name',
  [
    'manifest_csv',
    'manifest_jsonl',
    'crema_d',
    'emodb',
    'iemocap',
    'msp_v1.11',
    'msp_v1.6',
    'tables_csv',
    'tables_jsonl',
  ],
)
@FUZZ
@given(mutation=mutations)
def test_mutated_files_give_input_errors_or_count_their_skips(targets, name, mutation):
  target = targets[name]
  file = target.files[mutation.file % len(target.files)]
  with _Mutated(target, file, mutation.apply):
    strict, error = _check_strict_and_lenient(target)
    if mutation.kind == 'bom' and target.encoding == 'utf-8':  # a UTF-8 BOM changes nothing, in any format
      assert error is None and _rows(strict) == targets.baselines[name]
    if mutation.kind == 'latin1' and target.encoding == 'utf-8':
      assert error is not None and 'not utf-8' in error.reason, f'a Latin-1 byte passed: {error}'


# ----------------------------------------------------------------------------------------------
# Targeted defects that must be refused at their line (strict) and skipped and counted (lenient).


def _data_lines(target: Target, file: str) -> list[int]:
  """1-based numbers of the non-blank lines after the header."""
  lines = (target.root / file).read_bytes().splitlines()
  return [i + 1 for i, line in enumerate(lines) if i > 0 and line.strip()]


def _unquoted_commas(line: bytes) -> list[int]:
  inside, found = False, []
  for i, byte in enumerate(line):
    if byte == ord('"'):
      inside = not inside
    elif byte == ord(',') and not inside:
      found.append(i)
  return found


def _edit_line(number: int, edit: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
  def apply(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    lines[number - 1] = edit(lines[number - 1])
    return b''.join(lines)

  return apply


def _refused_at(target: Target, line: int, reason: str):
  _strict, error = _load(target, lenient=False)
  assert error is not None, f'accepted silently: {reason}'
  assert error.line == line, f'{reason}: reported at {error.line}, expected {line}: {error}'
  lenient, lenient_error = _load(target, lenient=True)
  assert lenient_error is None and lenient.skipped.total >= 1, f'{reason}: lenient gave {lenient_error}'


CSV_FILES = [
  ('crema_d', 'tabulatedVotes.csv'),
  ('emodb', 'perception.csv'),
  ('manifest_csv', 'utterances.csv'),
  ('msp_v1.11', 'Labels/labels_consensus.csv'),
  ('msp_v1.11', 'Labels/labels_detailed.csv'),
  ('msp_v1.6', 'Labels/labels_concensus.csv'),
]


@pytest.mark.parametrize('name,file', CSV_FILES)
@TARGETED
@given(
  choice=st.integers(0, 1000), column=st.integers(0, 1000), kind=st.sampled_from(['add', 'drop', 'truncate'])
)
def test_wrong_field_counts_are_refused_at_their_line(targets, name, file, choice, column, kind):
  target = targets[name]
  lines = _data_lines(target, file)
  number = lines[choice % len(lines)]

  def edit(line: bytes) -> bytes:
    body, end = line.rstrip(b'\r\n'), line[len(line.rstrip(b'\r\n')) :]
    commas = _unquoted_commas(body)
    at = commas[column % len(commas)]
    if kind == 'add':
      return body[:at] + b',' + body[at:] + end
    if kind == 'drop':
      return body[:at] + body[at + 1 :] + end
    return body[:at] + end  # truncated at a field boundary: the fields after it are gone

  with _Mutated(target, file, _edit_line(number, edit)):
    _refused_at(target, number, f'{kind} a field on line {number} of {file}')


LATIN1_FILES = [*CSV_FILES, ('manifest_jsonl', 'utterances.jsonl')]


@pytest.mark.parametrize('name,file', LATIN1_FILES)
@TARGETED
@given(choice=st.integers(0, 1000), position=st.integers(0, 1000))
def test_non_utf8_bytes_are_refused_at_their_line(targets, name, file, choice, position):
  target = targets[name]
  lines = _data_lines(target, file)
  number = lines[choice % len(lines)]

  def edit(line: bytes) -> bytes:
    at = position % len(line.rstrip(b'\r\n'))
    return line[:at] + b'\xe9' + line[at:]

  with _Mutated(target, file, _edit_line(number, edit)):
    _refused_at(target, number, f'a Latin-1 byte on line {number} of {file}')


@pytest.mark.parametrize(
  'name,file',
  [
    ('crema_d', 'tabulatedVotes.csv'),
    ('emodb', 'perception.csv'),
    ('manifest_csv', 'utterances.csv'),
    ('manifest_jsonl', 'utterances.jsonl'),
    ('msp_v1.11', 'Labels/labels_consensus.csv'),
    ('msp_v1.6', 'Labels/labels_concensus.csv'),
  ],
)
@TARGETED
@given(choice=st.integers(0, 1000))
def test_repeated_rows_are_refused_at_the_repeat(targets, name, file, choice):
  target = targets[name]
  lines = _data_lines(target, file)
  number = lines[choice % len(lines)]

  def repeat(data: bytes) -> bytes:
    rows = data.splitlines(keepends=True)
    row = rows[number - 1] if rows[number - 1].endswith(b'\n') else rows[number - 1] + b'\n'
    return b''.join(rows[:number] + [row] + rows[number:])

  with _Mutated(target, file, repeat):
    _refused_at(target, number + 1, f'line {number} of {file} repeated')


@pytest.mark.parametrize(
  'name,file,pattern,replacement',
  [
    ('emodb', 'perception.csv', rb',(happiness|neutral|anger|sadness|boredom|fear|disgust),', b',zorpness,'),
    ('crema_d', 'tabulatedVotes.csv', rb'_(NEU|ANG|SAD|HAP|DIS|FEA)_', b'_ZRP_'),
    ('msp_v1.11', 'Labels/labels_consensus.csv', rb'\.wav,[A-Z],', b'.wav,Q,'),
    ('manifest_csv', 'utterances.csv', rb',(train|test|dev),', b',tain,'),
    ('msp_v1.11', 'Labels/labels_detailed.csv', rb'^MSP-PODCAST_\d+_\d+\.wav', b'MSP-PODCAST_9999_9999.wav'),
    ('manifest_csv', 'votes.csv', rb'^u\d', b'u9'),
  ],
)
@TARGETED
@given(choice=st.integers(0, 1000))
def test_unknown_labels_splits_and_utterances_are_refused(targets, name, file, pattern, replacement, choice):
  """Unknown emotion codes, a misspelt split, votes for an utterance that is not there."""
  target = targets[name]
  text = (target.root / file).read_bytes().splitlines()
  lines = [n for n in _data_lines(target, file) if re.search(pattern, text[n - 1])]
  number = lines[choice % len(lines)]
  with _Mutated(target, file, _edit_line(number, lambda line: re.sub(pattern, replacement, line, count=1))):
    _refused_at(target, number, f'{replacement!r} on line {number} of {file}')


# ----------------------------------------------------------------------------------------------
# Model-based fuzzing of the manifest, in all three formats.

NAN = float('nan')
UTT_IDS = ('a', 'b', 'c', '', ' ')
SPLITS = (None, '', 'train', 'Train', 'dev', 'Development', 'test', 'test1', 'tain', 'Tarin', 'xyz')
TIMES = (None, 0.0, 1.0, 2.0, -1.0, NAN)
AGES = (None, 3, 'x')
utterance_rows = st.lists(
  st.fixed_dictionaries(
    {
      'utt_id': st.sampled_from(UTT_IDS),
      'split': st.sampled_from(SPLITS),
      'start_s': st.sampled_from(TIMES),
      'end_s': st.sampled_from(TIMES),
      'speaker': st.sampled_from(('s1', None, '')),
      'age': st.sampled_from(AGES),
    }
  ),
  min_size=1,
  max_size=6,
)
vote_rows = st.lists(
  st.fixed_dictionaries(
    {
      'utt_id': st.sampled_from(('a', 'b', 'zz')),
      'rater': st.sampled_from(('r1', 'r2', '')),
      'label': st.sampled_from(('sad', 'Anger', 'zorp', '')),
      'weight': st.sampled_from((None, 1.0, 0.5, 0.0, 1.5, NAN)),
      'source': st.sampled_from((None, 'human', 'synthetic', 'robot')),
    }
  ),
  max_size=8,
)


def _blank(value) -> bool:
  return value is None or (isinstance(value, str) and not value.strip())


def _oracle_utterances(rows: list[dict], typed: bool) -> list[bool]:
  """Which utterance rows the manifest rules accept (independently of the loader's code).

  ``typed``: the format keeps value types (JSONL), so a column mixing int and str refuses its
  first row whose type differs from the accepted rows above it.
  """
  aliases = {'train': 'train', 'dev': 'dev', 'development': 'dev', 'test': 'test', 'test1': 'test1'}
  keep, seen = [], set()
  for row in rows:
    start = 0.0 if row['start_s'] is None or math.isnan(row['start_s']) else row['start_s']
    end = NAN if row['end_s'] is None else row['end_s']
    ok = (
      not _blank(row['utt_id'])
      and row['utt_id'] not in seen
      and (_blank(row['split']) or row['split'].lower() in aliases)
      and not start < 0
      and not end < 0
      and not end <= start
    )
    if ok:
      seen.add(row['utt_id'])
    keep.append(ok)
  if typed:
    kind = None
    for i, row in enumerate(rows):
      if keep[i] and row['age'] is not None:
        kind = kind or type(row['age'])
        keep[i] = type(row['age']) is kind
  return keep


def _oracle_votes(rows: list[dict], known: set[str]) -> list[bool]:
  keep, shares = [], {}
  for row in rows:
    weight = 1.0 if row['weight'] is None else row['weight']
    source = row['source'] or 'human'
    ok = (
      not any(_blank(row[name]) for name in ('utt_id', 'rater', 'label'))
      and source in ('human', 'synthetic')
      and 0.0 < weight <= 1.0
      and row['utt_id'] in known
    )
    key = (row['utt_id'], row['rater'])
    if ok and source == 'human':
      ok = shares.get(key, 0.0) + weight <= 1.0 + 1e-9
      shares[key] = shares.get(key, 0.0) + weight * ok
    keep.append(ok)
  return keep


def _write(path: pathlib.Path, rows: list[dict]) -> pathlib.Path:
  names = list(rows[0]) if rows else ['utt_id', 'rater', 'label']
  if path.suffix == '.csv':

    def cell(value):
      return (
        '' if value is None else ('nan' if isinstance(value, float) and math.isnan(value) else str(value))
      )

    path.write_text('\n'.join([','.join(names)] + [','.join(cell(r[n]) for n in names) for r in rows]) + '\n')
  elif path.suffix == '.jsonl':
    path.write_text(''.join(json.dumps({k: v for k, v in r.items() if v is not None}) + '\n' for r in rows))
  else:
    columns = {}
    for n in names:
      values = [r[n] for r in rows]
      if any(isinstance(v, str) for v in values) or n == 'age':
        values = [None if v is None else str(v) for v in values]
      columns[n] = pa.array(
        values,
        pa.string() if n in ('utt_id', 'split', 'speaker', 'age', 'rater', 'label', 'source') else None,
      )
    pq.write_table(
      pa.table(columns) if rows else pa.table({n: pa.array([], pa.string()) for n in names}), path
    )
  return path


@pytest.mark.parametrize('suffix', ['.csv', '.jsonl', '.parquet'])
@settings(FUZZ, max_examples=50)
@given(utterances=utterance_rows, votes=vote_rows)
def test_manifest_refuses_exactly_the_invalid_rows(tmp_path_factory, suffix, utterances, votes):
  root = tmp_path_factory.mktemp('manifest_model')
  utterance_path = _write(root / f'utterances{suffix}', utterances)
  votes_path = _write(root / f'votes{suffix}', votes)
  keep = _oracle_utterances(utterances, typed=suffix == '.jsonl')
  kept_ids = [r['utt_id'] for r, k in zip(utterances, keep) if k]
  keep_votes = _oracle_votes(votes, set(kept_ids))
  refused = keep.count(False) + keep_votes.count(False)
  try:
    lenient = manifest.load(utterance_path, votes=votes_path if votes else None, lenient=True)
  except InputError as error:
    assert not kept_ids and 'no utterances' in str(error), error
  else:
    assert tables.column(lenient.utterances, 'utt_id').tolist() == kept_ids
    assert lenient.votes.num_rows == keep_votes.count(True)
    assert lenient.skipped.total == refused, lenient.skipped.summary()
    splits = set(tables.column(lenient.utterances, 'split').tolist()) - {None}
    assert splits <= set(tables.KNOWN_SPLITS)
  if refused or not kept_ids:
    with pytest.raises(InputError):
      manifest.load(utterance_path, votes=votes_path if votes else None)
  else:
    strict = manifest.load(utterance_path, votes=votes_path if votes else None)
    assert _rows(strict) == _rows(lenient)


@FUZZ
@given(
  cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4)
)
def test_damaged_parquet_gives_input_errors(tmp_path_factory, cut, flips):
  """A truncated or bit-damaged Parquet manifest or table: an InputError naming it, or a clean read."""
  root = tmp_path_factory.mktemp('parquet')
  path = root / 'utterances.parquet'
  pq.write_table(pa.table({'utt_id': ['a', 'b'], 'split': ['train', 'test'], 'start_s': [0.0, None]}), path)
  data = bytearray(path.read_bytes())
  for at, value in flips:
    data[at % len(data)] = value
  path.write_bytes(bytes(data[: len(data) - cut % (len(data) // 2)] if cut % 2 else data))
  for read in (manifest.load, tables.read_utterances):
    try:
      read(path)
    except InputError as error:
      assert error.path == str(path) and '\n' not in str(error)


@FUZZ
@given(
  cut=st.integers(0, 10**6),
  flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
  header_only=st.booleans(),
)
def test_damaged_wavs_give_input_errors_or_finite_audio(tmp_path_factory, cut, flips, header_only):
  """A truncated or damaged float wav: InputError naming it, or finite, non-empty samples."""
  path = tmp_path_factory.mktemp('wav') / 'clip.wav'
  soundfile.write(path, np.sin(np.arange(4000) * 0.1).astype(np.float32) * 0.3, 8000, subtype='FLOAT')
  data = bytearray(path.read_bytes())
  for at, value in flips:
    data[at % (64 if header_only else len(data))] = value
  path.write_bytes(bytes(data[: len(data) - cut % len(data)] if cut % 3 == 0 else data))
  for read in (
    audio.load_audio,
    lambda p: audio.load_audio(p, start_s=0.1, end_s=0.3),
    audio_info.audio_duration,
  ):
    try:
      out = read(path)
    except InputError as error:
      assert error.path == str(path) and '\n' not in str(error)
    else:
      values = np.asarray(out)
      assert values.size > 0 and np.all(np.isfinite(values))
      assert values.ndim or values > 0  # a duration is positive
