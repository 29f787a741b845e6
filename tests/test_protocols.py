"""Corpus protocols on IEMOCAP and MSP-Podcast releases in their real layouts (tests/real_corpora.py).

Every count and target is checked against a tiny reader in this file that parses the written files
itself (regexes and csv), not against the builders' plans or the loaders' code.
"""

import collections
import csv
import json
import math
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from real_corpora import (
  CONCENSUS,
  CONSENSUS,
  NO_IN_SET_TURN,
  UNRATED_FILE,
  real_audio_available,
  write_iemocap,
  write_msp_podcast,
)

from perax import distributions as dist
from perax.augment import dime_aug
from perax.core.errors import InputError
from perax.data import corpora, tables
from perax.data.corpora import iemocap, msp_podcast

REPO = pathlib.Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------
# An independent IEMOCAP reader.

_WORD = {
  'neutral': 'neu',
  'neutral state': 'neu',
  'happiness': 'hap',
  'excited': 'exc',
  'sadness': 'sad',
  'anger': 'ang',
  'frustration': 'fru',
  'surprise': 'sur',
  'fear': 'fea',
  'disgust': 'dis',
}
_FOUR = {'neu': 'neutral', 'hap': 'happy', 'exc': 'happy', 'sad': 'sad', 'ang': 'angry'}
_FULL = {
  'neu': 'neutral',
  'hap': 'happy',
  'exc': 'excited',
  'sad': 'sad',
  'ang': 'angry',
  'fru': 'frustrated',
  'sur': 'surprise',
  'fea': 'fear',
  'dis': 'disgust',
  'oth': 'other',
}


def _iemocap_truth(root, self_evaluations=False):
  """turn -> (session, consensus code, [(code, weight)] of its C- lines)."""
  turns = {}
  for path in sorted(root.glob('Session*/dialog/EmoEvaluation/*.txt')):
    current = None
    for line in path.read_text(encoding='latin-1').splitlines():
      header = re.match(r'\[[\d.]+ - [\d.]+\]\t(\S+)\t(\w+)\t', line)
      if header:
        current = header.group(1)
        turns[current] = (int(path.parts[-4][-1]), header.group(2), [])
        continue
      vote = re.match(r'C-([A-Z])\d*:\t([^\t]*)\t', line)
      if vote and (vote.group(1) == 'E' or self_evaluations):
        words = [w.strip() for w in vote.group(2).split(';') if w.strip()]
        codes = ['oth' if w.lower().startswith('other') else _WORD[w.lower()] for w in words]
        turns[current][2].extend((code, 1 / len(codes)) for code in codes)
  return turns


def _expected(turns, classes, keep_consensus, outside='drop'):
  """utt_id -> (distribution over ``classes`` (a code -> label dict's labels), n_outside)."""
  labels = list(dict.fromkeys(classes.values())) + (['other'] if outside == 'other' else [])
  expected = {}
  for turn, (_, code, votes) in turns.items():
    if not keep_consensus(code):
      continue
    counts = collections.Counter()
    outside_weight = 0.0
    for vote, weight in votes:
      if vote in classes:
        counts[classes[vote]] += weight
      else:
        outside_weight += weight
        if outside == 'other':
          counts['other'] += weight
    total = sum(counts.values())
    if total > 0:
      expected[turn] = (np.array([counts[c] / total for c in labels]), outside_weight)
  return expected


def _distributions(corpus, label_set):
  ids, counts = dist.vote_counts(corpus.votes, label_set, tables.column(corpus.utterances, 'utt_id'))
  return dict(zip(ids, counts / counts.sum(axis=1, keepdims=True)))


def _check(corpus, expected, label_set):
  ids = tables.column(corpus.utterances, 'utt_id').tolist()
  assert sorted(ids) == sorted(expected)
  got = _distributions(corpus, label_set)
  n_outside = dict(zip(ids, tables.column(corpus.utterances, 'n_outside')))
  for utt, (p, outside) in expected.items():
    np.testing.assert_allclose(got[utt], p, atol=1e-12, err_msg=utt)
    assert math.isclose(n_outside[utt], outside), utt


@pytest.fixture(scope='module')
def iemocap_root(tmp_path_factory):
  return write_iemocap(tmp_path_factory.mktemp('iemocap') / 'IEMOCAP_full_release').root


def test_builder_covers_every_code_and_session(iemocap_root):
  turns = _iemocap_truth(iemocap_root)
  assert {code for _, code, _ in turns.values()} == set(_FULL) | {'xxx'}
  assert {session for session, _, _ in turns.values()} == {1, 2, 3, 4, 5}
  wavs = list(iemocap_root.glob('Session*/sentences/wav/*/*.wav'))
  assert len(wavs) == len(turns)
  if real_audio_available():  # cut from EmoDB and resampled to IEMOCAP's 16 kHz
    assert sf.info(wavs[0]).samplerate == 16000


def test_iemocap_4class_default(iemocap_root):
  corpus = iemocap.load(iemocap_root)
  turns = _iemocap_truth(iemocap_root)
  expected = _expected(turns, _FOUR, lambda code: code in _FOUR)
  _check(corpus, expected, 'iemocap4')
  assert NO_IN_SET_TURN not in expected and turns[NO_IN_SET_TURN][1] == 'sad'
  report = corpus.protocol
  four = sum(code in _FOUR for _, code, _ in turns.values())
  assert (report.utterances_read, report.utterances_kept) == (len(turns), len(expected))
  assert report.dropped['no human vote inside the label set'] == four - len(expected) == 1
  by_code = collections.Counter(code for _, code, _ in turns.values() if code not in _FOUR)
  assert {k: v for k, v in report.dropped.items() if k.startswith('consensus')} == {
    f'consensus {code} outside the 4 classes': n for code, n in by_code.items()
  }
  assert report.label_set == 'iemocap4' and report.test_splits == ['test']
  sessions = {turn: session for turn, (session, _, _) in turns.items()}
  rows = corpus.utterances.to_pylist()
  assert all(r['fold'] == f'Session{sessions[r["utt_id"]]}' for r in rows)
  assert all(r['split'] == ('test' if sessions[r['utt_id']] == 5 else 'train') for r in rows)
  assert set(tables.column(corpus.votes, 'label')) <= {'neutral', 'happy', 'excited', 'sad', 'angry'}


def test_iemocap_outside_votes_as_other_and_self_evaluations(iemocap_root):
  turns = _iemocap_truth(iemocap_root)
  corpus = iemocap.load(iemocap_root, outside_votes='other')
  assert corpus.protocol.label_set == 'iemocap4_other'
  _check(corpus, _expected(turns, _FOUR, lambda code: code in _FOUR, outside='other'), 'iemocap4_other')
  with_self = iemocap.load(iemocap_root, self_evaluations=True)
  turns_self = _iemocap_truth(iemocap_root, self_evaluations=True)
  expected = _expected(turns_self, _FOUR, lambda code: code in _FOUR)
  assert NO_IN_SET_TURN in expected  # its in-set self-evaluation is its only in-set vote
  _check(with_self, expected, 'iemocap4')


def test_iemocap_any_in_set_and_full(iemocap_root):
  turns = _iemocap_truth(iemocap_root)
  any_in_set = iemocap.load(iemocap_root, protocol='any_in_set')
  _check(any_in_set, _expected(turns, _FOUR, lambda code: True), 'iemocap4')
  assert 'xxx' in {turns[u][1] for u in tables.column(any_in_set.utterances, 'utt_id')}
  three = iemocap.load(iemocap_root, protocol='any_in_set', label_set='neutral,sad,angry')
  _check(
    three,
    _expected(turns, {'neu': 'neutral', 'sad': 'sad', 'ang': 'angry'}, lambda c: True),
    three.protocol.label_set,
  )
  full = iemocap.load(iemocap_root, protocol='full')
  _check(full, _expected(turns, _FULL, lambda code: True), 'iemocap')
  assert full.protocol.utterances_kept == len(turns)


def test_iemocap_protocol_errors_and_sessions(iemocap_root):
  with pytest.raises(InputError, match="protocol '4class' takes its targets over label set iemocap4"):
    iemocap.load(iemocap_root, label_set='iemocap')
  with pytest.raises(InputError, match='unknown IEMOCAP protocol'):
    iemocap.load(iemocap_root, protocol='5class')
  with pytest.raises(InputError, match='outside_votes must be one of'):
    iemocap.load(iemocap_root, outside_votes='keep')
  corpus = iemocap.load(iemocap_root, label_set='demo', test_session=2, dev_session=3)
  splits = {r['fold']: r['split'] for r in corpus.utterances.to_pylist()}
  assert splits == {
    'Session1': 'train',
    'Session2': 'test',
    'Session3': 'dev',
    'Session4': 'train',
    'Session5': 'train',
  }


def test_a_protocol_that_keeps_nothing_says_why(iemocap_root, tmp_path):
  root = pathlib.Path(shutil.copytree(iemocap_root / 'Session2', tmp_path / 'rel' / 'Session2')).parent
  for path in root.glob('Session2/dialog/EmoEvaluation/*.txt'):
    text = path.read_text(encoding='latin-1')
    path.write_text(re.sub(r'\t(neu|hap|exc|sad|ang)\t', '\tfru\t', text), encoding='latin-1')
  with pytest.raises(
    InputError, match=r"protocol '4class' kept none of 12 utterances \(consensus fru outside"
  ):
    iemocap.load(root)


def _dialog_file(root):
  return root / 'Session1' / 'dialog' / 'EmoEvaluation' / 'Ses01F_impro01.txt'


@pytest.mark.parametrize(
  'damage,reason',
  [
    (lambda h: h[: h.index('\t', h.index('\t') + 1)] + '\tex', 'malformed utterance header'),  # truncated
    (lambda h: h[:9], 'malformed utterance header'),
    (lambda h: h.split('\t', 1)[1], 'unexpected line'),  # the [start - end] part lost
  ],
)
def test_iemocap_lenient_skips_the_block_of_a_broken_header(iemocap_root, tmp_path, damage, reason):
  """Issue 14 defect 4: F002's votes must never land on M001, and the skip names place and reason."""
  root = pathlib.Path(shutil.copytree(iemocap_root / 'Session1', tmp_path / 'rel' / 'Session1')).parent
  path = _dialog_file(root)
  lines = path.read_text(encoding='latin-1').split('\n')
  number = next(i for i, line in enumerate(lines) if '\tSes01F_impro01_F002\t' in line)
  block = lines[number + 1 : lines.index('', number)]
  lines[number] = damage(lines[number])
  path.write_text('\n'.join(lines), encoding='latin-1')
  with pytest.raises(InputError, match=reason) as error:
    iemocap.load(root, protocol='none')
  assert (error.value.path, error.value.line) == (str(path), number + 1)
  lenient = iemocap.load(root, protocol='none', lenient=True)
  intact = iemocap.load(iemocap_root, protocol='none')
  ids = tables.column(lenient.utterances, 'utt_id').tolist()
  session1 = [u for u in tables.column(intact.utterances, 'utt_id') if u.startswith('Ses01')]
  assert 'Ses01F_impro01_F002' not in ids and len(ids) == len(session1) - 1

  def votes_of(corpus, utt):  # NaN as None, so rows compare equal
    nan = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    return [
      {k: None if nan(x) else x for k, x in v.items()} for v in corpus.votes.to_pylist() if v['utt_id'] == utt
    ]

  assert votes_of(lenient, 'Ses01F_impro01_M001') == votes_of(intact, 'Ses01F_impro01_M001')
  assert lenient.skipped.counts == {f'{reason}: utterance block skipped': 1}
  assert lenient.skipped.examples == [
    f'{path}:{number + 1}: {error.value.reason}; skipped with the {len(block)} evaluator lines after it '
    f'(to line {number + 1 + len(block)}): whose votes they are is unknown'
  ]


def test_iemocap_line_numbers_survive_cp1252_bytes(iemocap_root, tmp_path):
  """Issue 14 defect 6: a 0x85 byte (cp1252's ellipsis; U+0085 in Latin-1) must not shift line numbers."""
  root = pathlib.Path(shutil.copytree(iemocap_root / 'Session1', tmp_path / 'rel' / 'Session1')).parent
  path = _dialog_file(root)
  lines = path.read_bytes().split(b'\n')
  lines[3] = lines[3].replace(b'\t(', b'\t(wait\x85 \x1c ', 1)
  bad = len(lines) - 3
  lines[bad - 1] = b'C-E9 Neutral'
  path.write_bytes(b'\n'.join(lines))
  with pytest.raises(InputError, match='unexpected line') as error:
    iemocap.load(root)
  assert error.value.line == bad


def test_iemocap_lenient_lines_of_two_utterances_run_together(iemocap_root, tmp_path):
  """A header lost entirely: F002's lines join M001's block; a second line of one evaluator shows it."""
  root = pathlib.Path(shutil.copytree(iemocap_root / 'Session1', tmp_path / 'rel' / 'Session1')).parent
  path = _dialog_file(root)
  lines = path.read_text(encoding='latin-1').split('\n')
  m001 = next(i for i, line in enumerate(lines) if '\tSes01F_impro01_M001\t' in line)
  f002 = next(i for i, line in enumerate(lines) if '\tSes01F_impro01_F002\t' in line)
  evaluator = re.match(r'C-(E\d):', lines[m001 + 1]).group(1)
  lines[f002 + 1] = re.sub(r'^C-E\d:', f'C-{evaluator}:', lines[f002 + 1])
  del lines[f002]
  path.write_text('\n'.join(lines), encoding='latin-1')
  with pytest.raises(InputError, match=f'second C-{evaluator} line') as error:
    iemocap.load(root, protocol='none')
  assert error.value.line == f002 + 1  # the renamed line, one up after the deletion
  lenient = iemocap.load(root, protocol='none', lenient=True)
  ids = tables.column(lenient.utterances, 'utt_id').tolist()
  assert 'Ses01F_impro01_M001' not in ids and 'Ses01F_impro01_F002' not in ids
  assert lenient.skipped.counts == {f'second C-{evaluator} line in one utterance: utterance skipped': 1}


# ----------------------------------------------------------------------------------------------
# An independent MSP-Podcast reader.

_MSP_CLASSES = ('neutral', 'happy', 'sad', 'angry', 'contempt', 'surprise', 'disgust', 'fear')
_MSP_WORDS = {'Neutral': 'neutral', 'Happy': 'happy', 'Sad': 'sad', 'Angry': 'angry', 'Contempt': 'contempt'}
_MSP_WORDS |= {'Surprise': 'surprise', 'Disgust': 'disgust', 'Fear': 'fear'}


def _msp_truth(root):
  """(consensus rows by FileName, [(FileName, primary)] of the ratings)."""
  labels = root / 'Labels'
  consensus_path = labels / CONSENSUS if (labels / CONSENSUS).exists() else labels / CONCENSUS
  with open(consensus_path, newline='', encoding='utf-8') as f:
    consensus = {row['FileName']: row for row in csv.DictReader(f)}
  ratings = []
  with open(labels / 'labels_detailed.csv', newline='', encoding='utf-8') as f:
    for row in csv.DictReader(f):
      if 'EmoDetail' in row:
        middle = row['EmoDetail'].split(';')[1:-4]  # worker; primary...; secondary; A; V; D;
        ratings.append((row['FileName'], ';'.join(middle[:-1]).strip()))
      else:
        ratings.append((row['FileName'], row['EmoClass_Major']))
  return consensus, ratings


def _msp_expected(root, keep=('N', 'H', 'S', 'A', 'C', 'U', 'D', 'F'), outside='drop'):
  consensus, ratings = _msp_truth(root)
  labels = list(_MSP_CLASSES) + (['other'] if outside == 'other' else [])
  counts = collections.defaultdict(collections.Counter)
  outside_weight = collections.Counter()
  for name, primary in ratings:
    label = _MSP_WORDS.get(primary)
    if label is None:
      outside_weight[name] += 1
      label = 'other' if outside == 'other' else None
    if label:
      counts[name][label] += 1
  expected = {}
  for name, row in consensus.items():
    total = sum(counts[name].values())
    if row['EmoClass'] in keep and total:
      expected[name] = (np.array([counts[name][c] / total for c in labels]), float(outside_weight[name]))
  return expected


@pytest.fixture(
  scope='module',
  params=[('v1.11', CONSENSUS, True), ('v1.6', CONCENSUS, False)],
  ids=['v1.11-consensus-test3', 'v1.6-concensus'],
)
def msp_build(request, tmp_path_factory):
  detailed, consensus_name, test3 = request.param
  root = tmp_path_factory.mktemp('msp') / 'MSP-Podcast'
  return write_msp_podcast(root, detailed_format=detailed, consensus_name=consensus_name, test3=test3)


def test_msp_8class_default(msp_build):
  root = msp_build.root
  corpus = msp_podcast.load(root)
  expected = _msp_expected(root)
  _check(corpus, expected, 'msp_podcast')
  consensus, _ = _msp_truth(root)
  report = corpus.protocol
  assert report.dropped['EmoClass X (no agreement)'] == sum(r['EmoClass'] == 'X' for r in consensus.values())
  assert report.dropped['EmoClass O (other)'] == sum(r['EmoClass'] == 'O' for r in consensus.values())
  assert UNRATED_FILE not in expected and report.dropped['no human vote inside the label set'] >= 1
  assert report.utterances_kept == len(expected) and report.label_set == 'msp_podcast'
  test3 = any(r['Split_Set'] == 'Test3' for r in consensus.values())
  assert report.test_splits == ['test1', 'test2'] + (['test3'] if test3 else [])
  assert report.default_test_split == 'test1'
  # Split names: perax's roles in split, the release's own in split_set.
  role = {'Train': 'train', 'Development': 'dev', 'Test1': 'test1', 'Test2': 'test2', 'Test3': 'test3'}
  for row in corpus.utterances.to_pylist():
    assert row['split_set'] == consensus[row['utt_id']]['Split_Set']
    assert row['split'] == role[row['split_set']]


def test_msp_unknown_speakers_are_each_their_own(msp_build):
  corpus = msp_podcast.load(msp_build.root, protocol='none')
  consensus, _ = _msp_truth(msp_build.root)
  unknown = [name for name, row in consensus.items() if row['SpkrID'] == 'Unknown']
  assert len({consensus[n]['Split_Set'] for n in unknown}) > 1  # the release has them in every split
  speakers = dict(
    zip(tables.column(corpus.utterances, 'utt_id'), tables.column(corpus.utterances, 'speaker'))
  )
  assert {speakers[n] for n in unknown} == {f'Unknown/{n[:-4]}' for n in unknown}
  splits_of = collections.defaultdict(set)
  for row in corpus.utterances.to_pylist():
    splits_of[row['speaker']].add(row['split'])
  assert all(len(s) == 1 for s in splits_of.values())  # speaker-disjoint, Unknown included
  for split in ('test1', 'test2', 'dev'):  # the check DiME-Aug's evaluation set runs
    assert not dime_aug.speaker_leaks(corpus.utterances, split)


@pytest.mark.parametrize(
  'name,options',
  [
    ('iemocap', {}),
    ('iemocap', {'protocol': 'any_in_set', 'outside_votes': 'other'}),
    ('iemocap', {'protocol': 'full'}),
    ('msp_podcast', {}),
    ('msp_podcast', {'outside_votes': 'other'}),
  ],
)
def test_natural_label_set_is_the_protocols(iemocap_root, msp_build, name, options):
  root = iemocap_root if name == 'iemocap' else msp_build.root
  corpus = corpora.load_corpus(name, root, **options)
  assert corpora.natural_label_set(name, options.get('protocol'), options.get('outside_votes', 'drop')) == (
    corpus.protocol.label_set
  )


def test_msp_x_o_and_outside_options(msp_build):
  root = msp_build.root
  kept = msp_podcast.load(root, emo_class_x='keep', emo_class_o='keep')
  _check(kept, _msp_expected(root, keep=tuple('NHSACUDFOX')), 'msp_podcast')
  other = msp_podcast.load(root, outside_votes='other', emo_class_x='keep')
  _check(other, _msp_expected(root, keep=tuple('NHSACUDFX'), outside='other'), 'msp_podcast_other')
  assert other.protocol.label_set == 'msp_podcast_other'
  with pytest.raises(InputError, match='msp_podcast_other'):
    msp_podcast.load(root, label_set='iemocap4')
  with pytest.raises(InputError, match='emo_class_x must be one of'):
    msp_podcast.load(root, emo_class_x='other')


@pytest.mark.parametrize(
  'file,line', [('labels_detailed.csv', 3), ('labels_detailed.csv', 170), (CONSENSUS, 30)]
)
def test_msp_bad_byte_is_reported_at_its_own_line(tmp_path, file, line):
  """Issue 14 defects 5/6: one-line InputError at the right line, far past csv's read buffer too."""
  root = write_msp_podcast(tmp_path / 'msp', audio=False).root
  path = root / 'Labels' / file
  lines = path.read_bytes().split(b'\n')
  assert (len(lines) > line and path.stat().st_size > 8192) or file == CONSENSUS
  lines[line - 1] = lines[line - 1].replace(b'.wav', b'\xe9.wav', 1)
  path.write_bytes(b'\n'.join(lines))
  with pytest.raises(InputError, match='not UTF-8 text: byte 0xe9') as error:
    msp_podcast.load(root, protocol='none')
  assert (error.value.path, error.value.line) == (str(path), line)
  lenient = msp_podcast.load(root, protocol='none', lenient=True)
  intact = msp_podcast.load(write_msp_podcast(tmp_path / 'intact', audio=False).root, protocol='none')
  bad = lines[line - 1].split(b',', 1)[0].replace(b'\xe9', b'').decode()
  assert lenient.skipped.counts[f'not UTF-8 text: byte 0xe9 at column {len(bad) - 3}'] == 1
  if file == CONSENSUS:  # the file's row is gone, and its ratings are counted as orphans
    with open(root / 'Labels' / 'labels_detailed.csv', newline='', encoding='utf-8') as f:
      orphans = sum(row['FileName'] == bad for row in csv.DictReader(f))
    assert orphans > 0
    assert lenient.utterances.num_rows == intact.utterances.num_rows - 1
    assert lenient.skipped.total == 1 + orphans and lenient.votes.num_rows == intact.votes.num_rows - orphans
  else:
    assert lenient.skipped.total == 1 and lenient.votes.num_rows == intact.votes.num_rows - 1


def test_msp_unreleased_labels(tmp_path):
  """A file whose consensus and ratings are not released (a hidden test set) is read, then dropped."""
  root = write_msp_podcast(tmp_path / 'msp', audio=False).root
  path = root / 'Labels' / CONSENSUS
  text = path.read_text(encoding='utf-8')
  row = next(line for line in text.split('\n') if line.startswith(UNRATED_FILE))
  fields = row.split(',')
  path.write_text(text.replace(row, ','.join(fields[:1] + [''] * 4 + fields[5:])), encoding='utf-8')
  raw = msp_podcast.load(root, protocol='none')
  rows = {r['utt_id']: r for r in raw.utterances.to_pylist()}
  assert rows[UNRATED_FILE]['consensus'] is None and math.isnan(rows[UNRATED_FILE]['arousal'])
  corpus = msp_podcast.load(root)
  assert UNRATED_FILE not in tables.column(corpus.utterances, 'utt_id')
  _check(corpus, _msp_expected(root), 'msp_podcast')


def test_msp_unknown_split_name(tmp_path):
  root = write_msp_podcast(tmp_path / 'msp', audio=False).root
  path = root / 'Labels' / CONSENSUS
  text = path.read_text(encoding='utf-8').split('\n')
  text[4] = text[4].replace(',Train', ',Tarin')
  path.write_text('\n'.join(text), encoding='utf-8')
  with pytest.raises(InputError, match="unknown Split_Set 'Tarin'") as error:
    msp_podcast.load(root)
  assert error.value.line == 5


# ----------------------------------------------------------------------------------------------
# prepare: the summary and protocol.json.


def test_prepare_launcher_reports_the_protocol(iemocap_root, tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      str(REPO / 'launch/prepare.py'),
      '--corpus=iemocap',
      f'--corpus_path={iemocap_root}',
      f'--out_dir={tmp_path}',
      '--outside_votes=other',
      '--iemocap_test_session=1',
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  turns = _iemocap_truth(iemocap_root)
  expected = _expected(turns, _FOUR, lambda code: code in _FOUR, outside='other')
  assert f'protocol kept {len(expected)} of {len(turns)} utterances' in result.stdout
  assert 'label set iemocap4_other' in result.stdout
  record = json.loads((tmp_path / 'protocol.json').read_text())
  assert record['utterances_kept'] == len(expected) and record['label_set'] == 'iemocap4_other'
  assert record['options']['test_session'] == 1 and record['test_splits'] == ['test']
  assert corpora.natural_label_set('iemocap', outside_votes='other') == record['label_set']
  utterances = tables.read_utterances(tmp_path / 'utterances.parquet')
  assert 'n_outside' in utterances.column_names and utterances.num_rows == len(expected)
