"""The embedded demo corpus: determinism, speed, structure, and acoustics that carry emotion."""

import os
import pathlib
import shutil

import numpy as np
import pyarrow as pa
import pytest
import soundfile

from perax import distributions as dist
from perax.core.errors import InputError
from perax.data import labels as labels_lib
from perax.data import tables
from perax.data.corpora import demo

NUM_CLIPS = 200
LABELS = labels_lib.get_label_set('demo').labels


def _file_bytes(root):
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
  """The default demo corpus (seed 0), as a (path,) tuple."""
  out_dir = tmp_path_factory.mktemp('demo')
  return (demo.generate(out_dir, seed=0, n_clips=NUM_CLIPS),)


@pytest.fixture(scope='module')
def corpus(generated):
  return demo.load(generated[0])


@pytest.fixture(scope='module')
def acoustics(corpus):
  """Per clip: RMS level in dB over the speech part, and spectral centroid in Hz."""
  levels, centroids = [], []
  for path in tables.column(corpus.utterances, 'audio_path'):
    audio, rate = soundfile.read(path)
    speech = audio[np.abs(audio) > 10 * demo.BACKGROUND_NOISE]
    levels.append(10 * np.log10(np.mean(speech**2)))
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(audio.size, 1 / rate)
    centroids.append((freqs * spectrum).sum() / spectrum.sum())
  return np.array(levels), np.array(centroids)


def test_same_seed_gives_identical_files(tmp_path, generated):
  first = _file_bytes(demo.generate(tmp_path, seed=0, n_clips=12))
  again = _file_bytes(demo.generate(tmp_path, seed=0, n_clips=12))
  assert first == again and len(first) == 12 + 4
  full = _file_bytes(generated[0])
  assert all(first[f'wav/demo_{i:04d}.wav'] == full[f'wav/demo_{i:04d}.wav'] for i in range(12))
  other = _file_bytes(demo.generate(tmp_path / 'other', seed=1, n_clips=12))
  assert other['wav/demo_0000.wav'] != first['wav/demo_0000.wav']


def test_structure(corpus, generated):
  utterances = corpus.utterances
  assert corpus.name == 'demo' and utterances.num_rows == NUM_CLIPS and corpus.skipped.total == 0
  durations = tables.column(utterances, 'duration_s')
  assert durations.min() >= 1.0 and durations.max() <= 3.0
  info = soundfile.info(tables.column(utterances, 'audio_path')[0])
  assert (info.samplerate, info.channels, info.subtype) == (16000, 1, 'PCM_16')
  split_of = dict(zip(tables.column(utterances, 'speaker'), tables.column(utterances, 'split')))
  assert len(split_of) == demo.NUM_SPEAKERS
  speakers_per_split = {s: sum(v == s for v in split_of.values()) for s in ('train', 'dev', 'test')}
  assert speakers_per_split == {'train': 6, 'dev': 2, 'test': 2}
  assert all(t and t.split() for t in tables.column(utterances, 'transcript'))
  votes, reference = corpus.votes, corpus.reference_votes
  assert votes.num_rows == demo.HUMAN_VOTES * NUM_CLIPS
  assert reference.num_rows == demo.REFERENCE_VOTES * NUM_CLIPS
  assert set(tables.column(votes, 'label')) <= set(LABELS)
  assert all(r.startswith('dense_') for r in tables.column(reference, 'rater'))
  assert not any(r.startswith('dense_') for r in tables.column(votes, 'rater'))
  for table in (votes, reference):
    _ids, counts = dist.vote_counts(table, 'demo', tables.column(utterances, 'utt_id'))
    assert len(set(counts.sum(-1))) == 1
  truth = demo.true_distribution(generated[0])
  p = np.stack([tables.column(truth, c) for c in tables.label_columns(LABELS)], -1)
  np.testing.assert_allclose(p.sum(-1), 1.0)
  assert set(tables.column(truth, 'dominant')) == set(LABELS)


def test_votes_follow_the_true_distribution(corpus, generated):
  truth = demo.true_distribution(generated[0])
  p = np.stack([tables.column(truth, c) for c in tables.label_columns(LABELS)], -1)
  _, dense = dist.vote_counts(corpus.reference_votes, 'demo', tables.column(truth, 'utt_id'))
  frequency = dense / demo.REFERENCE_VOTES
  # Each entry is a binomial share of 30 votes: its mean error over 200 clips is tiny.
  assert np.abs((frequency - p).mean(0)).max() < 0.02
  assert np.corrcoef(frequency.ravel(), p.ravel())[0, 1] > 0.9


def test_all_ambiguity_levels_occur(corpus):
  table, info = dist.build_distributions(corpus.votes, label_set='demo', utterances=corpus.utterances)
  assert min(info['level_counts'].values()) > NUM_CLIPS / 10, info['level_counts']
  assert table.num_rows == NUM_CLIPS


def test_acoustics_separate_dominant_emotions(generated, acoustics):
  truth = demo.true_distribution(generated[0])
  dominant = tables.column(truth, 'dominant')
  p = np.stack([tables.column(truth, c) for c in tables.label_columns(LABELS)], -1)
  clear = p.max(-1) > 0.5
  levels, centroids = acoustics
  mean_level = {label: levels[dominant == label].mean() for label in LABELS}
  assert mean_level['angry'] > mean_level['happy'] > mean_level['neutral'] > mean_level['sad']
  mean_centroid = {label: centroids[dominant == label].mean() for label in LABELS}
  assert mean_centroid['angry'] > mean_centroid['sad']
  angry, sad = levels[clear & (dominant == 'angry')], levels[clear & (dominant == 'sad')]
  separated = (angry[:, None] > sad[None, :]).mean()  # AUC of level, angry vs sad
  assert separated > 0.95


def test_load_strict_and_lenient(generated, tmp_path):
  copy = tmp_path / 'copy'
  shutil.copytree(generated[0], copy)
  utterances = tables.read_table(copy / demo.UTTERANCES_FILE)
  paths = tables.column(utterances, 'audio_path').tolist()
  paths[3] = str(copy / 'missing.wav')
  utterances = utterances.set_column(
    utterances.schema.get_field_index('audio_path'), 'audio_path', pa.array(paths)
  )
  tables.write_table(utterances, copy / demo.UTTERANCES_FILE)
  with pytest.raises(InputError, match='demo_0003'):
    demo.load(copy)
  loaded = demo.load(copy, lenient=True)
  assert loaded.utterances.num_rows == NUM_CLIPS - 1
  assert loaded.skipped.total == 1 + demo.HUMAN_VOTES + demo.REFERENCE_VOTES
  assert 'demo_0003' not in set(tables.column(loaded.votes, 'utt_id'))

  shutil.copy(pathlib.Path(generated[0]) / demo.UTTERANCES_FILE, copy / demo.UTTERANCES_FILE)
  votes = tables.read_table(copy / demo.VOTES_FILE)
  labels = tables.column(votes, 'label').tolist()
  labels[10] = 'fear'
  votes = votes.set_column(votes.schema.get_field_index('label'), 'label', pa.array(labels))
  tables.write_table(votes, copy / demo.VOTES_FILE)
  with pytest.raises(InputError, match='fear') as error:
    demo.load(copy)
  assert error.value.path == str(copy / demo.VOTES_FILE)
  assert error.value.item == tables.column(votes, 'utt_id')[10]
  assert demo.load(copy, lenient=True).skipped.total == 1
  os.remove(copy / demo.UTTERANCES_FILE)
  with pytest.raises(InputError, match='no such file'):
    demo.load(copy)
