"""Tests for the corpus loaders, prepare and its launcher, on fixtures in the real formats and on the
real CREMA-D and EmoDB under ../shared (skipped where absent)."""

import collections
import csv
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import wave

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from perax.core.errors import InputError
from perax.data import corpora, tables
from perax.data.corpora import crema_d, emodb, iemocap, manifest, msp_podcast, splits

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
REPO = pathlib.Path(__file__).resolve().parents[1]
NAN = float('nan')


def _write_wav(path, seconds, sr=16000):
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(path, np.zeros(int(round(seconds * sr)), np.float32), sr, subtype='PCM_16')


def _copy(tmp_path_factory, name):
  return pathlib.Path(shutil.copytree(FIXTURES / name, tmp_path_factory.mktemp(name) / name))


def _rows(table, columns=None):
  """Rows as dicts, NaN and None dropped (so expectations list only what is set)."""
  columns = columns or table.column_names
  return [
    {
      k: v
      for k, v in row.items()
      if k in columns and v is not None and not (isinstance(v, float) and math.isnan(v))
    }
    for row in table.to_pylist()
  ]


def _edit(path, old, new):
  text = path.read_text(encoding='latin-1')
  assert old in text
  path.write_text(text.replace(old, new, 1), encoding='latin-1')


# ----------------------------------------------------------------------------------------------
# Speaker splits.


def test_speaker_split_rule_matches_an_independent_reading():
  speakers = [f'{n:04d}' for n in range(1001, 1092)]
  got = splits.speaker_splits(speakers + speakers[:5], seed=3)
  ordered = sorted(speakers, key=lambda s: hashlib.sha256(f'3:{s}'.encode()).hexdigest())
  expected = {s: 'train' for s in ordered[:64]}  # 0.7 * 91 = 63.7, 0.8 * 91 = 72.8
  expected.update({s: 'dev' for s in ordered[64:73]})
  expected.update({s: 'test' for s in ordered[73:]})
  assert got == expected
  assert splits.speaker_splits(speakers, seed=4) != got
  with pytest.raises(ValueError, match='summing to 1'):
    splits.speaker_splits(speakers, fractions=(0.5, 0.2, 0.2))


@settings(max_examples=50, deadline=None)
@given(speakers=st.sets(st.text(min_size=1, max_size=5), max_size=40), seed=st.integers(0, 99))
def test_speaker_split_properties(speakers, seed):
  got = splits.speaker_splits(speakers, seed=seed)
  assert set(got) == speakers and set(got.values()) <= set(splits.SPLITS)
  counts = collections.Counter(got.values())
  assert counts['train'] == math.floor(0.7 * len(speakers) + 0.5)
  assert got == splits.speaker_splits(sorted(speakers, reverse=True), seed=seed)


# ----------------------------------------------------------------------------------------------
# IEMOCAP.


@pytest.fixture(scope='module')
def iemocap_dir(tmp_path_factory):
  """The IEMOCAP fixture with a sentence wav for one turn and a dialog wav for its dialog."""
  root = _copy(tmp_path_factory, 'iemocap')
  _write_wav(root / 'Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav', 1.9456)
  _write_wav(root / 'Session1/dialog/wav/Ses01F_impro01.wav', 20.0)
  return root


def test_iemocap_utterances(iemocap_dir):
  corpus = iemocap.load(iemocap_dir, protocol='none')
  assert corpus.name == 'iemocap' and corpus.skipped.total == 0
  sentence = str(iemocap_dir / 'Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav')
  dialog = str(iemocap_dir / 'Session1/dialog/wav/Ses01F_impro01.wav')
  common = {'corpus': 'iemocap'}
  assert _rows(corpus.utterances) == [
    {
      'utt_id': 'Ses01F_impro01_F000',
      'audio_path': sentence,
      'duration_s': 8.2357 - 6.2901,
      'transcript': 'Excuse me.',
      'speaker': 'Ses01F',
      'split': 'train',
      'fold': 'Session1',
      **common,
      'consensus': 'neutral',
      'valence': 2.5,
      'arousal': 2.5,
      'dominance': 2.5,
    },
    {
      'utt_id': 'Ses01F_impro01_M001',
      'audio_path': dialog,
      'start_s': 10.01,
      'end_s': 11.3925,
      'duration_s': 11.3925 - 10.01,
      'transcript': 'Do you have your forms?',
      'speaker': 'Ses01M',
      'split': 'train',
      'fold': 'Session1',
      **common,
      'consensus': 'invalid',
      'valence': 2.0,
      'arousal': 3.5,
      'dominance': 3.5,
    },
    {
      'utt_id': 'Ses01F_impro01_F002',
      'audio_path': dialog,
      'start_s': 14.8872,
      'end_s': 18.0175,
      'duration_s': 18.0175 - 14.8872,
      'speaker': 'Ses01F',
      'split': 'train',
      'fold': 'Session1',
      **common,
      'consensus': 'excited',
      'valence': 4.0,
      'arousal': 4.0,
      'dominance': 3.0,
    },
    {
      'utt_id': 'Ses02M_impro03_F000',
      'duration_s': 2.5,
      'speaker': 'Ses02F',
      'split': 'train',
      'fold': 'Session2',
      **common,
      'consensus': 'sad',
      'valence': 1.5,
      'arousal': 2.0,
      'dominance': 2.5,
    },
    {
      'utt_id': 'Ses05M_script01_1_F000',
      'duration_s': 2.25,
      'transcript': 'What are you doing here?',
      'speaker': 'Ses05F',
      'split': 'test',
      'fold': 'Session5',
      **common,
      'consensus': 'angry',
      'valence': 1.5,
      'arousal': 4.0,
      'dominance': 4.5,
    },
    {
      'utt_id': 'Ses05M_script01_1_M001',
      'duration_s': 6.0 - 5.1,
      'transcript': "Oh! It's you. Caf\u00e9?",
      'speaker': 'Ses05M',
      'split': 'test',
      'fold': 'Session5',
      **common,
      'consensus': 'surprise',
      'valence': 3.0,
      'arousal': 4.0,
      'dominance': 3.0,
    },
  ]


def _vote(utt, rater, label, text, weight=1.0, **extra):
  return {
    'utt_id': utt,
    'rater': rater,
    'source': 'human',
    'label': label,
    'weight': weight,
    'text': text,
    **extra,
  }


IEMOCAP_VOTES = [
  _vote('Ses01F_impro01_F000', 'Session1/E2', 'neutral', 'Neutral'),
  _vote('Ses01F_impro01_F000', 'Session1/E3', 'neutral', 'Neutral', valence=3.0, arousal=2.0, dominance=2.0),
  _vote('Ses01F_impro01_F000', 'Session1/E4', 'neutral', 'Neutral', valence=2.0, arousal=3.0, dominance=3.0),
  _vote(
    'Ses01F_impro01_M001',
    'Session1/E1',
    'frustrated',
    'Frustration',
    0.5,
    valence=2.0,
    arousal=4.0,
    dominance=4.0,
  ),
  _vote('Ses01F_impro01_M001', 'Session1/E1', 'angry', 'Anger', 0.5, valence=2.0, arousal=4.0, dominance=4.0),
  _vote('Ses01F_impro01_M001', 'Session1/E3', 'other', 'Other:curious', comment='not sure'),
  _vote('Ses01F_impro01_M001', 'Session1/E4', 'neutral', 'Neutral state'),
  _vote(
    'Ses01F_impro01_F002', 'Session1/E2', 'excited', 'Excited', 0.5, valence=4.0, arousal=4.0, dominance=3.0
  ),
  _vote(
    'Ses01F_impro01_F002', 'Session1/E2', 'happy', 'Happiness', 0.5, valence=4.0, arousal=4.0, dominance=3.0
  ),
  _vote('Ses01F_impro01_F002', 'Session1/E3', 'excited', 'Excited'),
  _vote('Ses01F_impro01_F002', 'Session1/E4', 'happy', 'Happiness'),
  _vote('Ses02M_impro03_F000', 'Session2/E1', 'sad', 'Sadness', valence=1.0, arousal=2.0, dominance=2.0),
  _vote('Ses02M_impro03_F000', 'Session2/E2', 'sad', 'Sadness'),
  _vote('Ses02M_impro03_F000', 'Session2/E5', 'frustrated', 'Frustration'),
  _vote('Ses05M_script01_1_F000', 'Session5/E1', 'angry', 'Anger'),
  _vote('Ses05M_script01_1_F000', 'Session5/E3', 'angry', 'Anger', comment='threatening'),
  _vote('Ses05M_script01_1_M001', 'Session5/E1', 'surprise', 'Surprise'),
  _vote('Ses05M_script01_1_M001', 'Session5/E2', 'surprise', 'Surprise', 0.5),
  _vote('Ses05M_script01_1_M001', 'Session5/E2', 'fear', 'Fear', 0.5),
  _vote('Ses05M_script01_1_M001', 'Session5/E3', 'surprise', 'Surprise'),
]


def test_iemocap_votes(iemocap_dir):
  corpus = iemocap.load(iemocap_dir, protocol='none')
  assert _rows(corpus.votes) == IEMOCAP_VOTES
  assert corpus.votes.schema.names[: len(tables.VOTE_SCHEMA)] == tables.VOTE_SCHEMA.names


def test_iemocap_self_evaluations_and_sessions(iemocap_dir):
  corpus = iemocap.load(iemocap_dir, protocol='none', self_evaluations=True, test_session=1, dev_session=2)
  added = [v for v in _rows(corpus.votes) if v not in IEMOCAP_VOTES]
  assert added == [
    _vote(
      'Ses01F_impro01_F000',
      'Session1/F1',
      'neutral',
      'Neutral',
      comment='curious',
      valence=3.0,
      arousal=2.0,
      dominance=2.0,
    ),
    _vote('Ses01F_impro01_M001', 'Session1/M1', 'angry', 'Anger', valence=1.0, arousal=4.0, dominance=4.0),
    _vote('Ses05M_script01_1_F000', 'Session5/F1', 'frustrated', 'Frustration'),
  ]
  assert tables.column(corpus.utterances, 'split').tolist() == ['test'] * 3 + ['dev'] + ['train'] * 2
  with pytest.raises(InputError, match='both 4'):
    iemocap.load(iemocap_dir, protocol='none', test_session=4, dev_session=4)


@pytest.mark.parametrize(
  'old,new,line,reason',
  [
    ('A-E4:\tval 2; act 3; dom  3;', 'A-E4:\tval 2; act 3;', 9, 'expected "val v; act a; dom d;"'),
    ('Ses01F_impro01_M001\txxx', 'Ses01F_impro01_M001\tqqq', 12, 'unknown iemocap emotion code'),
    ('C-E4:\tNeutral state;', 'C-E4:\t;', 15, 'evaluator line has no label'),
    ('C-E4:\tNeutral state;', 'C-E3:\tNeutral state;', 15, 'second C-E3 line'),
    ('Ses01F_impro01_F002', 'Ses02F_impro01_F002', 21, 'does not belong to dialog'),
    ('C-E3:\tExcited;', 'E3 said Excited', 23, 'unexpected line'),
    ('[14.8872 - 18.0175]', '[18.8872 - 18.0175]', 21, 'ends (18.0175) before it starts'),
  ],
)
def test_iemocap_errors_name_file_and_line(tmp_path_factory, old, new, line, reason):
  root = _copy(tmp_path_factory, 'iemocap')
  path = root / 'Session1/dialog/EmoEvaluation/Ses01F_impro01.txt'
  _edit(path, old, new)
  with pytest.raises(InputError, match=re.escape(reason)) as error:
    iemocap.load(root, protocol='none')
  assert (error.value.path, error.value.line) == (str(path), line)
  lenient = iemocap.load(root, protocol='none', lenient=True)
  assert lenient.skipped.total == 1 and reason.split('"')[0] in next(iter(lenient.skipped.counts))
  if 'val v' in reason:  # only the A- line is lost: the vote stays, without its ratings
    assert lenient.utterances.num_rows == 6 and lenient.votes.num_rows == len(IEMOCAP_VOTES)
  if 'emotion code' in reason or 'belong' in reason or 'before it starts' in reason:
    assert lenient.utterances.num_rows == 5  # a bad header skips its whole utterance


def test_iemocap_repeated_turn_and_no_sessions(tmp_path_factory):
  root = _copy(tmp_path_factory, 'iemocap')
  path = root / 'Session5/dialog/EmoEvaluation/Ses05M_script01_1.txt'
  with open(path, 'a', encoding='latin-1') as f:
    f.write(
      '\n[7.0000 - 8.0000]\tSes05M_script01_1_F000\tneu\t[2.0000, 2.0000, 2.0000]\nC-E1:\tNeutral;\t()\n'
    )
  with pytest.raises(InputError, match='turn id repeats') as error:
    iemocap.load(root, protocol='none')
  assert (error.value.path, error.value.item) == (str(path), 'Ses05M_script01_1_F000')
  lenient = iemocap.load(root, protocol='none', lenient=True)
  assert lenient.skipped.total == 1 and _rows(lenient.votes) == IEMOCAP_VOTES
  with pytest.raises(InputError, match='no utterances'):
    iemocap.load(root / 'Session1')


# ----------------------------------------------------------------------------------------------
# MSP-Podcast.


@pytest.fixture(scope='module')
def msp_dir(tmp_path_factory):
  root = _copy(tmp_path_factory, 'msp_podcast_v1.11')
  _write_wav(root / 'Audios/MSP-PODCAST_0002_0033.wav', 1.25)
  return root


def test_msp_podcast_v1_11(msp_dir):
  corpus = msp_podcast.load(msp_dir, protocol='none')
  assert corpus.skipped.total == 0
  assert _rows(corpus.utterances) == [
    {
      'utt_id': 'MSP-PODCAST_0001_0008.wav',
      'transcript': 'I am fine, thanks.',
      'speaker': '30',
      'split': 'test1',
      'split_set': 'Test1',
      'corpus': 'msp_podcast',
      'arousal': 2.2,
      'consensus': 'neutral',
      'dominance': 2.6,
      'gender': 'Male',
      'valence': 4.0,
    },
    {
      'utt_id': 'MSP-PODCAST_0001_0019.wav',
      'speaker': '30',
      'split': 'dev',
      'split_set': 'Development',
      'corpus': 'msp_podcast',
      'arousal': 4.0,
      'consensus': 'invalid',
      'dominance': 4.2,
      'gender': 'Male',
      'valence': 3.4,
    },
    {
      'utt_id': 'MSP-PODCAST_0002_0033.wav',
      'audio_path': str(msp_dir / 'Audios/MSP-PODCAST_0002_0033.wav'),
      'duration_s': 1.25,
      'transcript': 'Stop doing that!',
      'speaker': 'Unknown/MSP-PODCAST_0002_0033',
      'split': 'train',
      'split_set': 'Train',
      'corpus': 'msp_podcast',
      'arousal': 5.4,
      'consensus': 'angry',
      'dominance': 5.0,
      'gender': 'Female',
      'valence': 2.2,
    },
    {
      'utt_id': 'MSP-PODCAST_0003_0010.wav',
      'speaker': '112',
      'split': 'test2',
      'split_set': 'Test2',
      'corpus': 'msp_podcast',
      'arousal': 4.6,
      'consensus': 'happy',
      'dominance': 4.4,
      'gender': 'Female',
      'valence': 5.8,
    },
  ]
  utt = 'MSP-PODCAST_000{}.wav'.format
  assert _rows(corpus.votes) == [
    _vote(utt('1_0008'), 'WORKER00012', 'neutral', 'Neutral', valence=4.0, arousal=2.0, dominance=3.0),
    _vote(
      utt('1_0008'),
      'WORKER00013',
      'neutral',
      'Neutral',
      valence=4.0,
      arousal=3.0,
      dominance=2.0,
      secondary='Concerned',
    ),
    _vote(
      utt('1_0008'),
      'WORKER00014',
      'other',
      'Other-Dissapointed',
      valence=3.0,
      arousal=2.0,
      dominance=3.0,
      secondary='Disappointed,Sad',
    ),
    _vote(
      utt('1_0019'),
      'WORKER00012',
      'happy',
      'Happy',
      valence=6.0,
      arousal=5.0,
      dominance=4.0,
      secondary='Amused,Excited',
    ),
    _vote(utt('1_0019'), 'WORKER00020', 'surprise', 'Surprise', valence=4.0, arousal=4.0, dominance=5.0),
    _vote(
      utt('1_0019'),
      'WORKER00021',
      'contempt',
      'Contempt',
      valence=2.0,
      arousal=3.0,
      dominance=5.0,
      secondary='Annoyed',
    ),
    _vote(
      utt('2_0033'),
      'WORKER00012',
      'angry',
      'Angry',
      valence=2.0,
      arousal=5.0,
      dominance=4.0,
      secondary='Frustrated,Annoyed',
    ),
    _vote(utt('2_0033'), 'WORKER00030', 'angry', 'Angry', valence=1.0, arousal=6.0, dominance=6.0),
    _vote(
      utt('2_0033'),
      'WORKER00031',
      'other',
      'Other- upset; tense',
      valence=2.0,
      arousal=5.0,
      dominance=5.0,
      secondary='Angry',
    ),
  ]


def test_msp_podcast_v1_6_concensus_spelling():
  corpus = msp_podcast.load(FIXTURES / 'msp_podcast_v1.6', protocol='none')
  assert tables.column(corpus.utterances, 'split').tolist() == ['test1', 'train']
  assert _rows(corpus.votes) == [
    _vote(
      'MSP-PODCAST_0001_0008.wav',
      'WORKER00000012',
      'neutral',
      'Neutral',
      valence=4.0,
      arousal=2.0,
      dominance=3.0,
    ),
    _vote(
      'MSP-PODCAST_0001_0008.wav',
      'WORKER00000013',
      'other',
      'Other-Confused',
      valence=4.0,
      arousal=3.0,
      dominance=2.0,
      secondary='Confused,Concerned',
    ),
    _vote(
      'MSP-PODCAST_0002_0033.wav',
      'WORKER00000012',
      'angry',
      'Angry',
      valence=2.0,
      arousal=5.0,
      dominance=4.0,
      secondary='Frustrated,Annoyed',
    ),
    _vote('MSP-PODCAST_0002_0033.wav', 'WORKER00000040', 'disgust', 'D', valence=2.0, arousal=4.0),
  ]


@pytest.mark.parametrize(
  'file,old,new,line,reason,skipped,votes',
  [
    (
      'labels_detailed.csv',
      'WORKER00020; Surprise; ; A:4.0; V:4.0; D:5.0;',
      'WORKER00020; Surprise',
      6,
      'is not "WORKER; primary',
      1,
      8,
    ),
    (
      'labels_detailed.csv',
      'WORKER00030; Angry; ; A:6.0;',
      'WORKER00030; Angry; ; A:six;',
      9,
      "A 'six' is not a number",
      1,
      8,
    ),
    (
      'labels_detailed.csv',
      'MSP-PODCAST_0001_0019.wav,"WORKER00012',
      'MSP-PODCAST_9_9.wav,"W',
      5,
      'absent from the consensus file',
      1,
      8,
    ),
    ('labels_detailed.csv', 'WORKER00021; Contempt;', 'WORKER00021; X;', 7, 'consensus code', 1, 8),
    # The row and its file's three ratings are skipped.
    ('labels_consensus.csv', '0001_0019.wav,X,', '0001_0019.wav,Q,', 3, 'emotion code', 4, 6),
    ('labels_consensus.csv', ',Test2', ',Test2,extra', 5, 'expected 8 fields, found 9', 1, 9),
  ],
)
def test_msp_podcast_errors_name_file_and_line(
  tmp_path_factory, file, old, new, line, reason, skipped, votes
):
  root = _copy(tmp_path_factory, 'msp_podcast_v1.11')
  path = root / 'Labels' / file
  _edit(path, old, new)
  with pytest.raises(InputError, match=re.escape(reason)) as error:
    msp_podcast.load(root, protocol='none')
  assert (error.value.path, error.value.line) == (str(path), line)
  lenient = msp_podcast.load(root, protocol='none', lenient=True)
  assert (lenient.skipped.total, lenient.votes.num_rows) == (skipped, votes)


def test_msp_podcast_missing_labels(tmp_path):
  with pytest.raises(InputError, match='no labels_consensus.csv or labels_concensus.csv'):
    msp_podcast.load(tmp_path)


# ----------------------------------------------------------------------------------------------
# CREMA-D.


def test_crema_d_fixture():
  corpus = crema_d.load(FIXTURES / 'crema_d', reference_modality='audiovisual', seed=1)
  actors = ['1001', '1001', '1002', '1003']
  split_of = splits.speaker_splits(actors, seed=1)
  assert _rows(corpus.utterances) == [
    {
      'utt_id': utt,
      'transcript': text,
      'speaker': actor,
      'split': split_of[actor],
      'corpus': 'crema_d',
      'intended_emotion': intended,
      'intensity': level,
    }
    for utt, text, actor, intended, level in [
      ('1001_IEO_NEU_XX', "It's eleven o'clock.", '1001', 'neutral', 'XX'),
      ('1001_IEO_ANG_MD', "It's eleven o'clock.", '1001', 'angry', 'MD'),
      ('1002_DFA_SAD_HI', "Don't forget a jacket.", '1002', 'sad', 'HI'),
      ('1003_TSI_HAP_MD', 'The surface is slick.', '1003', 'happy', 'MD'),
    ]
  ]
  tie = [v for v in _rows(corpus.votes) if v['utt_id'] == '1001_IEO_ANG_MD']
  codes = 'AAAAADDDDDNS'
  assert tie == [
    _vote('1001_IEO_ANG_MD', f'voice_{k}', label, code)
    for k, (code, label) in enumerate(zip(codes, ['angry'] * 5 + ['disgust'] * 5 + ['neutral', 'sad']))
  ]
  assert corpus.votes.num_rows == 11 + 12 + 9 + 9
  reference = _rows(corpus.reference_votes)
  assert len(reference) == 10 + 9 + 11 + 10
  assert collections.Counter(v['label'] for v in reference if v['utt_id'] == '1003_TSI_HAP_MD') == {
    'happy': 8,
    'angry': 1,
    'neutral': 1,
  }
  assert {v['rater'] for v in reference} == {f'audiovisual_{k}' for k in range(11)}
  face = crema_d.load(FIXTURES / 'crema_d', modality='face')
  assert face.reference_votes is None and face.votes.num_rows == 9 + 9 + 10 + 10


def test_crema_d_audio_when_present(tmp_path_factory):
  root = _copy(tmp_path_factory, 'crema_d')
  _write_wav(root / 'AudioWAV/1002_DFA_SAD_HI.wav', 2.5)
  corpus = crema_d.load(root)
  assert tables.column(corpus.utterances, 'audio_path').tolist() == [
    None,
    None,
    str(root / 'AudioWAV/1002_DFA_SAD_HI.wav'),
    None,
  ]
  np.testing.assert_array_equal(tables.column(corpus.utterances, 'duration_s'), [NAN, NAN, 2.5, NAN])


@pytest.mark.parametrize(
  'old,new,line,reason',
  [
    ('"100101",0,0,2,0,1,6', '"100101",0,0,2,0,1,7', 4, 'do not sum to numResponses 9'),
    ('"100101",0,0,2', '"100101",0,x,2', 4, 'must be integers'),
    (
      '"100101",0,0,2,0,1,6,"1002_DFA_SAD_HI"',
      '"100101",0,0,2,0,1,6,"1002_DFA_SAD"',
      4,
      'is not ACTOR_SENTENCE_EMOTION_LEVEL',
    ),
    ('"100101"', '"900101"', 4, 'modality digit'),
    (
      '"100202",3,0,0,4,2,0,"1003_TSI_HAP_MD"',
      '"100202",3,0,0,4,2,0,"1001_IEO_NEU_XX"',
      5,
      'repeats in pool 1',
    ),
  ],
)
def test_crema_d_errors_name_file_and_line(tmp_path_factory, old, new, line, reason):
  root = _copy(tmp_path_factory, 'crema_d')
  _edit(root / 'tabulatedVotes.csv', old, new)
  with pytest.raises(InputError, match=re.escape(reason)) as error:
    crema_d.load(root)
  assert (error.value.path, error.value.line) == (str(root / 'tabulatedVotes.csv'), line)
  lenient = crema_d.load(root, lenient=True, reference_modality='face')
  assert lenient.skipped.total == 2  # the row, and the face pool's votes for the clip lost
  assert lenient.utterances.num_rows == 3
  with pytest.raises(InputError, match="unknown CREMA-D modality 'video'"):
    crema_d.load(root, modality='video')


# ----------------------------------------------------------------------------------------------
# EmoDB.

EMODB_SECONDS = {'03a01Fa': 0.5, '03a01Nc': 0.2, '08a01Ab': 0.6, '16b10Wb': 1.0}  # whole samples


@pytest.fixture(scope='module')
def emodb_fixture(tmp_path_factory):
  root = _copy(tmp_path_factory, 'emodb')
  for stem, seconds in EMODB_SECONDS.items():
    _write_wav(root / 'wav' / f'{stem}.wav', seconds, sr=22050)
  return root


def test_emodb_fixture(emodb_fixture):
  corpus = emodb.load(emodb_fixture, seed=2)
  split_of = splits.speaker_splits(['03', '08', '16'], seed=2)
  assert _rows(corpus.utterances) == [
    {
      'utt_id': stem,
      'audio_path': str(emodb_fixture / 'wav' / f'{stem}.wav'),
      'duration_s': EMODB_SECONDS[stem],
      'transcript': text,
      'speaker': stem[:2],
      'split': split_of[stem[:2]],
      'corpus': 'emodb',
      'intended_emotion': label,
    }
    for stem, text, label in [
      ('03a01Fa', 'Der Lappen liegt auf dem Eisschrank.', 'happy'),
      ('03a01Nc', 'Der Lappen liegt auf dem Eisschrank.', 'neutral'),
      ('08a01Ab', 'Der Lappen liegt auf dem Eisschrank.', 'fear'),
      ('16b10Wb', 'Die wird auf dem Platz sein, wo wir sie immer hinlegen.', 'angry'),
    ]
  ]
  votes = _rows(corpus.votes)
  # 90% of 20, 100% of 20, 85% of 20, 95.24% of 21 listeners.
  expected = {'03a01Fa': 18, '03a01Nc': 20, '08a01Ab': 17, '16b10Wb': 20}
  assert collections.Counter(v['utt_id'] for v in votes) == expected
  assert votes[:2] == [
    _vote('03a01Fa', 'listener_0', 'happy', 'happiness'),
    _vote('03a01Fa', 'listener_1', 'happy', 'happiness'),
  ]
  with_other = _rows(emodb.load(emodb_fixture, unrecognised_label='other').votes)
  others = collections.Counter(v['utt_id'] for v in with_other if v['label'] == 'other')
  assert others == {'03a01Fa': 2, '08a01Ab': 3, '16b10Wb': 1}
  assert {v['rater'] for v in with_other if v['utt_id'] == '16b10Wb'} == {f'listener_{k}' for k in range(21)}


def test_emodb_recognised_count():
  assert emodb.recognised_count(95.24) == (20, 21)
  assert emodb.recognised_count(85.71) == (18, 21)
  assert emodb.recognised_count(80.0) == (16, 20)
  with pytest.raises(InputError, match='no whole count'):
    emodb.recognised_count(33.3)


@pytest.mark.parametrize(
  'old,new,line,reason',
  [
    ('08a01Ab.wav,08,a01,fear', '08a01Ab.wav,08,a01,anger', 4, 'disagrees with the file name'),
    ('08a01Ab.wav,08', '08a01Ab.wav,09', 4, 'disagree with file name'),
    ('85.00', '85.1', 4, 'no whole count'),
    ('16b10Wb.wav', '16b10Wc.wav', 5, 'no wav for'),
  ],
)
def test_emodb_errors_name_file_and_line(tmp_path_factory, old, new, line, reason):
  root = _copy(tmp_path_factory, 'emodb')
  for stem, seconds in EMODB_SECONDS.items():
    _write_wav(root / 'wav' / f'{stem}.wav', seconds)
  _edit(root / 'perception.csv', old, new)
  with pytest.raises(InputError, match=re.escape(reason)) as error:
    emodb.load(root)
  assert (error.value.path, error.value.line) == (str(root / 'perception.csv'), line)
  lenient = emodb.load(root, lenient=True)
  assert lenient.utterances.num_rows == 3
  # A renamed row also leaves its wav without a row: counted too.
  assert lenient.skipped.total == (2 if 'no wav' in reason else 1)


def test_emodb_wav_without_row(emodb_fixture, tmp_path):
  root = pathlib.Path(shutil.copytree(emodb_fixture, tmp_path / 'emodb'))
  _write_wav(root / 'wav/09a02Tc.wav', 0.1)
  with pytest.raises(InputError, match='wav has no row in perception.csv') as error:
    emodb.load(root)
  assert error.value.path == str(root / 'wav/09a02Tc.wav')


# ----------------------------------------------------------------------------------------------
# Manifests.


@pytest.fixture(scope='module')
def manifest_dir(tmp_path_factory):
  root = _copy(tmp_path_factory, 'manifest')
  _write_wav(root / 'audio/u1.wav', 0.75)
  _write_wav(root / 'audio/u2.wav', 3.0)
  rows = [json.loads(line) for line in (root / 'utterances.jsonl').read_text().splitlines() if line]
  names = list(dict.fromkeys(name for row in rows for name in row))
  pq.write_table(
    pa.table({name: [row.get(name) for row in rows] for name in names}), root / 'utterances.parquet'
  )
  return root


MANIFEST_UTTERANCES = [
  {
    'utt_id': 'u1',
    'duration_s': 0.75,
    'transcript': 'hello there',
    'speaker': 'spk1',
    'split': 'train',
    'corpus': 'mycorpus',
    'gender': 'F',
  },
  {
    'utt_id': 'u2',
    'start_s': 0.5,
    'end_s': 1.5,
    'duration_s': 1.0,
    'speaker': 'spk2',
    'split': 'test',
    'corpus': 'mycorpus',
    'gender': 'M',
  },
  {
    'utt_id': 'u3',
    'duration_s': 2.5,
    'transcript': 'no audio here',
    'speaker': 'spk2',
    'split': 'dev',
    'corpus': 'manifest',
    'gender': 'M',
  },
]


@pytest.mark.parametrize('name', ['utterances.csv', 'utterances.jsonl', 'utterances.parquet'])
def test_manifest_utterances_in_every_format(manifest_dir, name):
  corpus = manifest.load(manifest_dir / name)
  rows = _rows(corpus.utterances)
  assert [r.pop('audio_path', None) for r in rows] == [
    str(manifest_dir / 'audio/u1.wav'),
    str(manifest_dir / 'audio/u2.wav'),
    None,
  ]
  assert rows == MANIFEST_UTTERANCES
  assert corpus.votes.num_rows == 0


def test_manifest_votes(manifest_dir):
  corpus = manifest.load(
    manifest_dir / 'utterances.csv', votes=f'{manifest_dir / "votes.csv"},{manifest_dir / "votes.jsonl"}'
  )
  votes = _rows(corpus.votes, tables.VOTE_SCHEMA.names + ['prompt_id'])
  assert votes == [
    _vote('u1', 'r1', 'angry', 'Anger'),
    _vote('u1', 'r2', 'happy', 'The speaker sounds happy.'),
    {**_vote('u1', 'qwen|p0', 'sad', 'sad'), 'source': 'synthetic'},
    _vote('u2', 'r1', 'invalid', 'Frustration, anger'),
    _vote('u2', 'r2', 'neutral', 'neutral', 0.5),
    _vote('u2', 'r2', 'sad', 'sad', 0.5),
    _vote('u3', 'r1', 'neutral', 'Nuetral'),
    _vote('u1', 'r3', 'happy', 'Happiness', valence=4.0, arousal=3.0, dominance=2.5),
    {**_vote('u3', 'qwen|p1', 'sad', 'The speaker sounds sad.'), 'source': 'synthetic', 'prompt_id': 'p1'},
  ]


@pytest.mark.parametrize(
  'file,old,new,where,reason',
  [
    ('votes.csv', 'u3,r1,Nuetral', 'u9,r1,Nuetral', {'line': 8}, 'absent from the utterances'),
    ('votes.csv', 'neutral,,0.5', 'neutral,,1.5', {'line': 6}, 'outside (0, 1]'),
    ('votes.csv', 'u1,r1,Anger,human', 'u1,r1,Anger,robot', {'line': 2}, "source 'robot'"),
    ('votes.csv', 'u1,r2,The', 'u1,,The', {'line': 3}, 'vote lacks rater'),
    ('votes.jsonl', '"prompt_id": "p1"}', '"prompt_id": "p1"', {'line': 2}, 'invalid JSON'),
    ('utterances.csv', 'u3,,,,2.5', 'u1,,,,2.5', {'line': 4}, "utt_id 'u1' repeats"),
    (
      'utterances.csv',
      'u2,audio/u2.wav,0.5',
      'u2,audio/u2.wav,half',
      {'line': 3},
      "start_s 'half' is not a number",
    ),
    ('utterances.csv', 'audio/u2.wav', 'audio/u7.wav', {'line': 3}, 'does not exist'),
  ],
)
def test_manifest_errors_name_file_and_line(manifest_dir, tmp_path, file, old, new, where, reason):
  root = pathlib.Path(shutil.copytree(manifest_dir, tmp_path / 'manifest'))
  _edit(root / file, old, new)
  votes = f'{root / "votes.csv"},{root / "votes.jsonl"}'
  with pytest.raises(InputError, match=re.escape(reason)) as error:
    manifest.load(root / 'utterances.csv', votes=votes)
  assert error.value.path == str(root / file) and error.value.line == where['line']
  lenient = manifest.load(root / 'utterances.csv', votes=votes, lenient=True)
  assert lenient.skipped.total >= 1


def test_manifest_parquet_errors_name_the_row(manifest_dir, tmp_path):
  table = pa.table(
    {'utt_id': ['u1', 'u2'], 'rater': ['r1', 'r1'], 'label': ['sad', 'happy'], 'weight': [1.0, -1.0]}
  )
  pq.write_table(table, tmp_path / 'votes.parquet')
  with pytest.raises(InputError, match=r'votes.parquet, item .row 1.: weight -1.0') as error:
    manifest.load(manifest_dir / 'utterances.csv', votes=tmp_path / 'votes.parquet')
  assert error.value.item == 'row 1'


# ----------------------------------------------------------------------------------------------
# Real data under ../shared.


def test_real_crema_d(crema_d_dir):
  with open(crema_d_dir / 'tabulatedVotes.csv', newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  for modality, digit in crema_d.MODALITIES.items():
    corpus = crema_d.load(crema_d_dir, modality=modality)
    pool = [r for r in rows if r[''].startswith(digit)]
    assert corpus.utterances.num_rows == len(pool) == 7442 and corpus.skipped.total == 0
    assert corpus.votes.num_rows == sum(int(r['numResponses']) for r in pool)
  # The voice pool's votes for one row, read independently: "100009" (1001_IEO_ANG_MD).
  row = next(r for r in rows if r[''] == '100009')
  voice = crema_d.load(crema_d_dir, reference_modality='face')
  got = collections.Counter(v['text'] for v in voice.votes.to_pylist() if v['utt_id'] == row['fileName'])
  assert got == {code: int(row[code]) for code in 'ADFHNS' if int(row[code])}
  speakers = tables.column(voice.utterances, 'speaker')
  split = tables.column(voice.utterances, 'split')
  assert len(set(speakers)) == 91
  assert all(len(set(split[speakers == s])) == 1 for s in set(speakers))
  assert collections.Counter(splits.speaker_splits(speakers).values()) == {'train': 64, 'dev': 9, 'test': 18}
  face_row = next(r for r in rows if r[''] == '200009')
  face_counts = collections.Counter(
    v['text'] for v in voice.reference_votes.to_pylist() if v['utt_id'] == face_row['fileName']
  )
  assert face_counts == {code: int(face_row[code]) for code in 'ADFHNS' if int(face_row[code])}


def test_real_emodb(emodb_dir):
  corpus = emodb.load(emodb_dir)
  assert corpus.utterances.num_rows == 535 and corpus.skipped.total == 0
  for row in corpus.utterances.to_pylist()[::53]:
    with wave.open(row['audio_path']) as w:
      assert row['duration_s'] == w.getnframes() / w.getframerate()
  with open(emodb_dir / 'perception.csv', newline='', encoding='utf-8') as f:
    pct = {r['file'][:-4]: float(r['recognition_pct']) for r in csv.DictReader(f)}
  counts = collections.Counter(tables.column(corpus.votes, 'utt_id'))
  for stem, share in pct.items():
    listeners = 20 if abs(share * 20 / 100 - round(share * 20 / 100)) < 0.01 else 21
    assert counts[stem] == round(share * listeners / 100)
  assert len(set(tables.column(corpus.utterances, 'speaker'))) == 10


# ----------------------------------------------------------------------------------------------
# prepare and its launcher.


def test_prepare_writes_tables_and_reports(tmp_path):
  lines = []
  paths = corpora.prepare(
    'crema_d',
    FIXTURES / 'crema_d',
    tmp_path,
    label_set='iemocap4',
    reference_modality='face',
    seed=1,
    echo=lines.append,
  )
  assert paths == {
    name: str(tmp_path / f'{name}.parquet') for name in ('utterances', 'votes', 'reference_votes')
  }
  loaded = crema_d.load(FIXTURES / 'crema_d', reference_modality='face', seed=1)
  for name, table in [
    ('utterances', loaded.utterances),
    ('votes', loaded.votes),
    ('reference_votes', loaded.reference_votes),
  ]:
    written = pq.read_table(paths[name])
    assert written.schema.equals(table.schema) and _rows(written) == _rows(table)  # NaN != NaN
  text = '\n'.join(lines)
  # iemocap4 holds neutral, happy, sad, angry: 14 + 5 + 7 + 8 of the 41 voice votes.
  assert 'label set iemocap4' in text and '34 votes in the set, 7 outside it, 0 invalid' in text
  assert 'votes per label: neutral: 14, angry: 8, sad: 7' in text
  assert 'reference votes: 38 on 4 utterances' in text and 'skipped 0 items' in text


def test_prepare_generates_demo_once(tmp_path, monkeypatch):
  calls = []

  class FakeDemo:
    @staticmethod
    def generate(out_dir, seed=0):
      calls.append((out_dir, seed))
      os.makedirs(out_dir)
      (pathlib.Path(out_dir) / 'marker').write_text('demo')

    @staticmethod
    def load(path, *, lenient=False):
      return crema_d.load(FIXTURES / 'crema_d', lenient=lenient)

  monkeypatch.setattr(corpora, '_module', lambda name: FakeDemo)
  corpora.prepare('demo', None, tmp_path, seed=7, echo=lambda line: None)
  corpora.prepare('demo', None, tmp_path, seed=7, echo=lambda line: None)
  assert calls == [(str(tmp_path / 'demo_corpus'), 7)]
  assert (tmp_path / 'votes.parquet').is_file()


def test_load_corpus_names():
  assert corpora.load_corpus('crema_d', FIXTURES / 'crema_d', modality='face').votes.num_rows == 38
  with pytest.raises(InputError, match="unknown corpus 'ravdess'"):
    corpora.load_corpus('ravdess', FIXTURES)


def test_launcher_end_to_end(manifest_dir, tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      str(REPO / 'launch/prepare.py'),
      '--corpus=manifest',
      f'--corpus_path={manifest_dir / "utterances.jsonl"}',
      f'--manifest_votes={manifest_dir / "votes.csv"}',
      f'--out_dir={tmp_path}',
      '--label_set=iemocap4',
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  assert 'manifest: 3 utterances, 2 speakers' in result.stdout
  assert 'label set iemocap4 (merging' in result.stdout
  assert '6 votes in the set, 0 outside it, 1 invalid' in result.stdout
  assert pq.read_table(tmp_path / 'votes.parquet').num_rows == 7
