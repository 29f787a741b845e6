"""DiME-Aug: plans, balance, targets, the balanced evaluation set, rendering and writing."""

import collections
import os
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import soundfile
from emodb_tables import LABELS, emodb_tables

from perax import distributions as dist
from perax.augment import audio_mix, augmented_set, dime_aug
from perax.core.errors import InputError
from perax.data import audio
from perax.data.tables import column, read_table, utterances_table, write_table
from perax.distributions.levels import LevelDefinition

SPLIT_SPEAKERS = {'train': ['s0', 's1', 's2', 's3', 's4', 's5'], 'dev': ['s6', 's7'], 'test': ['s8', 's9']}
# Share of each dominant emotion per split: imbalanced on purpose.
CLASS_SHARES = (0.5, 0.25, 0.15, 0.1)
RATERS = 5


def _corpus(seed: int = 0, per_split=(('train', 96), ('dev', 24), ('test', 40))):
  """Utterances and 5-rater distributions: imbalanced classes, speaker-disjoint splits."""
  rng = np.random.default_rng(seed)
  rows, targets = [], []
  for split, n in per_split:
    for k in range(n):
      intended = rng.choice(len(LABELS), p=CLASS_SHARES)
      agreement = rng.uniform(0.4, 1.0)
      votes = np.where(rng.random(RATERS) < agreement, intended, rng.integers(0, len(LABELS), RATERS))
      targets.append(np.bincount(votes, minlength=len(LABELS)) / RATERS)
      rows.append(
        dict(
          utt_id=f'{split}_{k:03d}',
          audio_path=f'/nowhere/{split}_{k:03d}.wav',
          duration_s=float(rng.uniform(1.0, 6.0)),
          transcript=f'words of {k}',
          speaker=SPLIT_SPEAKERS[split][k % len(SPLIT_SPEAKERS[split])],
          split=split,
          corpus='synthetic',
        )
      )
  utterances = utterances_table(rows)
  p = np.asarray(targets)
  distributions = pa.table(
    {'utt_id': column(utterances, 'utt_id'), **{f'p_{label}': p[:, c] for c, label in enumerate(LABELS)}}
  )
  return utterances, distributions


@pytest.fixture(scope='module')
def corpus():
  utterances, distributions = _corpus()
  levels = dime_aug.levels_from_split(utterances, distributions, LABELS)
  return utterances, distributions, levels


@pytest.fixture(scope='module')
def class_plan(corpus):
  utterances, distributions, levels = corpus
  return dime_aug.plan_augmentation(utterances, distributions, LABELS, levels, split='train', seed=3)


def _targets(table: pa.Table) -> np.ndarray:
  return np.stack([column(table, f'p_{label}') for label in LABELS], axis=1)


def _by_id(utterances, distributions):
  p = dict(zip(column(distributions, 'utt_id'), _targets(distributions)))
  duration = dict(zip(column(utterances, 'utt_id'), column(utterances, 'duration_s')))
  return p, duration


def test_levels_are_train_tertiles(corpus):
  utterances, distributions, levels = corpus
  train = column(utterances, 'split') == 'train'
  entropy = dist.normalized_entropy(_targets(distributions)[train])
  assert levels.edges == dist.tertile_edges(entropy)
  assert (levels.source, levels.split, levels.fitted_on) == ('tertiles', 'train', int(train.sum()))


def test_levels_come_from_human_entropy_where_the_table_has_it(corpus):
  """One level definition: tertiles of the training split's human entropy, which also sets each
  original's level in a plan (not its combined target's entropy)."""
  utterances, distributions, _ = corpus
  rng = np.random.default_rng(7)
  human = rng.uniform(0.0, 1.0, distributions.num_rows)
  human[3] = np.nan  # no human votes: the target's entropy stands in
  with_human = distributions.append_column('entropy_human', pa.array(human))
  levels = dime_aug.levels_from_split(utterances, with_human, LABELS)
  train = column(utterances, 'split') == 'train'
  assert levels.edges == dist.tertile_edges(human[train & ~np.isnan(human)])
  originals = dime_aug.original_rows(utterances, with_human, LABELS, levels, 'train')
  entropy = np.where(np.isnan(human), dist.normalized_entropy(_targets(distributions)), human)
  row = {u: k for k, u in enumerate(column(distributions, 'utt_id'))}
  e1, e2 = levels.edges
  for utt_id, level in zip(column(originals, 'utt_id'), column(originals, 'level')):
    e = entropy[row[utt_id]]
    assert level == ('low' if e <= e1 else 'medium' if e <= e2 else 'high'), utt_id


def test_rows_without_human_votes_are_left_out_of_the_written_set(wav_corpus, tmp_path, capsys):
  utterances, distributions = wav_corpus
  n_human = np.full(distributions.num_rows, 3.0)
  test_rows = np.flatnonzero(column(utterances, 'split') == 'test')
  n_human[test_rows[:2]] = 0.0
  with_counts = distributions.append_column('n_human', pa.array(n_human))
  paths = augmented_set.augment(utterances, with_counts, str(tmp_path / 'kept'), split='test', eval_set=True)
  written = read_table(paths['plan'])
  dropped = set(column(distributions, 'utt_id')[test_rows[:2]])
  used = set(column(written, 'anchor_id')) | set(column(written, 'partner_id'))
  assert not dropped & used
  assert '2 of' in capsys.readouterr().err
  paths = augmented_set.augment(
    utterances, with_counts, str(tmp_path / 'all'), split='test', eval_set=True, proxy_only_targets=True
  )
  assert column(read_table(paths['plan']), 'origin').tolist().count('original') >= 1


def test_plan_is_deterministic_from_the_seed(corpus, class_plan):
  utterances, distributions, levels = corpus
  again = dime_aug.plan_augmentation(utterances, distributions, LABELS, levels, seed=3)
  other = dime_aug.plan_augmentation(utterances, distributions, LABELS, levels, seed=4)
  assert again.equals(class_plan)
  assert not other.equals(class_plan)


def test_concat_targets_follow_the_provenance(corpus, class_plan):
  utterances, distributions, _ = corpus
  p, duration = _by_id(utterances, distributions)
  transcript = dict(zip(column(utterances, 'utt_id'), column(utterances, 'transcript')))
  targets = _targets(class_plan)
  assert (targets >= 0).all()
  np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-12)
  for row, target in zip(class_plan.to_pylist(), targets):
    i, j = row['anchor_id'], row['partner_id']
    assert i != j and i.startswith('train_') and j.startswith('train_')
    w = duration[i] / (duration[i] + duration[j])
    assert row['weight'] == pytest.approx(w, abs=1e-12)
    np.testing.assert_allclose(target, w * p[i] + (1 - w) * p[j], atol=1e-12)
    assert 0.05 <= row['gap_s'] <= 0.15
    assert row['duration_s'] == pytest.approx(duration[i] + row['gap_s'] + duration[j])
    assert row['transcript'] == f'{transcript[i]} {transcript[j]}'
    assert LABELS[int(np.argmax(p[i]))] == row['wanted_label']  # anchors come from the class


def test_classes_are_balanced_exactly(corpus, class_plan):
  utterances, distributions, _ = corpus
  train = column(utterances, 'split') == 'train'
  originals = collections.Counter(np.asarray(LABELS)[dist.majority(_targets(distributions)[train])])
  added = collections.Counter(column(class_plan, 'label'))
  total = {label: originals[label] + added[label] for label in LABELS}
  # Tolerance 0: the same-class last resort keeps every example in its class.
  assert set(total.values()) == {max(originals.values())}, total
  assert class_plan.num_rows == sum(max(originals.values()) - originals[c] for c in LABELS)


def test_size_spreads_examples_evenly(corpus):
  utterances, distributions, levels = corpus
  plan = dime_aug.plan_augmentation(
    utterances, distributions, LABELS, levels, split='train', size=240, seed=1
  )
  train = column(utterances, 'split') == 'train'
  originals = collections.Counter(np.asarray(LABELS)[dist.majority(_targets(distributions)[train])])
  added = collections.Counter(column(plan, 'label'))
  assert all(originals[c] <= 60 for c in LABELS)
  assert {originals[c] + added[c] for c in LABELS} == {60}


def test_cells_are_balanced_within_tolerance(corpus):
  utterances, distributions, levels = corpus
  plan = dime_aug.plan_augmentation(
    utterances, distributions, LABELS, levels, split='train', balance='cells', seed=2
  )
  originals = dime_aug.original_rows(utterances, distributions, LABELS, levels, 'train')
  cells = collections.Counter(zip(column(originals, 'label'), column(originals, 'level')))
  quota = max(cells.values())
  cells.update(zip(column(plan, 'label'), column(plan, 'level')))
  wanted = collections.Counter(zip(column(plan, 'wanted_label'), column(plan, 'wanted_level')))
  # Every example keeps the wanted dominant emotion; at most a tenth lands in a neighbouring level.
  np.testing.assert_array_equal(column(plan, 'label'), column(plan, 'wanted_label'))
  fallback = column(plan, 'fallback')
  assert fallback.mean() <= 0.1
  np.testing.assert_array_equal(fallback, column(plan, 'level') != column(plan, 'wanted_level'))
  for label in LABELS:
    for level in dime_aug.LEVELS:
      assert abs(cells[(label, level)] - quota) <= 0.1 * quota, (label, level, cells, wanted)


def test_mixup_weights_and_targets(corpus):
  utterances, distributions, levels = corpus
  config = dime_aug.MixConfig(variant='mixup', mixup_alpha=0.4)
  plan = dime_aug.plan_augmentation(
    utterances, distributions, LABELS, levels, split='train', seed=5, config=config
  )
  p, duration = _by_id(utterances, distributions)
  weights = column(plan, 'weight')
  assert ((weights > 0) & (weights < 1)).all() and np.isnan(column(plan, 'gap_s')).all()
  for row, target in zip(plan.to_pylist(), _targets(plan)):
    i, j, w = row['anchor_id'], row['partner_id'], row['weight']
    np.testing.assert_allclose(target, w * p[i] + (1 - w) * p[j], atol=1e-12)
    assert row['duration_s'] == max(duration[i], duration[j])
    assert row['label'] == LABELS[int(np.argmax(target))]


def test_eval_set_is_balanced_and_leaks_nothing(corpus):
  utterances, distributions, levels = corpus
  eval_set = dime_aug.build_eval_set(utterances, distributions, LABELS, levels, split='test', seed=0)
  speaker = dict(zip(column(utterances, 'utt_id'), column(utterances, 'speaker')))
  split = dict(zip(column(utterances, 'utt_id'), column(utterances, 'split')))
  used = [
    u
    for u in np.concatenate([column(eval_set, 'anchor_id'), column(eval_set, 'partner_id')])
    if u is not None
  ]
  assert {split[u] for u in used} == {'test'}
  assert {speaker[u] for u in used} <= set(SPLIT_SPEAKERS['test'])
  other_speakers = set(SPLIT_SPEAKERS['train'] + SPLIT_SPEAKERS['dev'])
  assert not {speaker[u] for u in used} & other_speakers
  origin = column(eval_set, 'origin')
  n_original = int((origin == 'original').sum())
  assert (origin[:n_original] == 'original').all() and (origin[n_original:] == 'augmented').all()
  test_ids = column(utterances, 'utt_id')[column(utterances, 'split') == 'test']
  assert sorted(column(eval_set, 'utt_id')[:n_original]) == sorted(test_ids)  # all originals kept
  counts = collections.Counter(column(eval_set, 'label'))
  assert len(set(counts[c] for c in LABELS)) == 1, counts


def test_eval_set_with_size_takes_originals_first(corpus):
  utterances, distributions, levels = corpus
  eval_set = dime_aug.build_eval_set(utterances, distributions, LABELS, levels, split='test', size=32, seed=0)
  counts = collections.Counter(column(eval_set, 'label'))
  assert {counts[c] for c in LABELS} == {8}
  test = column(utterances, 'split') == 'test'
  originals = collections.Counter(np.asarray(LABELS)[dist.majority(_targets(distributions)[test])])
  kept = collections.Counter(column(eval_set, 'label')[column(eval_set, 'origin') == 'original'])
  assert all(kept[c] == min(originals[c], 8) for c in LABELS)


def test_eval_set_refuses_speakers_shared_with_other_splits(corpus):
  utterances, distributions, levels = corpus
  speakers = column(utterances, 'speaker').copy()
  speakers[0] = SPLIT_SPEAKERS['test'][0]  # a train utterance by a test speaker
  leaky = utterances.set_column(utterances.schema.get_field_index('speaker'), 'speaker', pa.array(speakers))
  assert dime_aug.speaker_leaks(leaky, 'test') == {SPLIT_SPEAKERS['test'][0]}
  with pytest.raises(InputError, match='speakers of split'):
    dime_aug.build_eval_set(leaky, distributions, LABELS, levels, split='test')
  allowed = dime_aug.build_eval_set(
    leaky, distributions, LABELS, levels, split='test', allow_speaker_overlap=True
  )
  assert allowed.num_rows > 0


def test_bad_target_names_the_utterance(corpus):
  utterances, distributions, levels = corpus
  bad = distributions.set_column(1, 'p_neutral', pa.array(column(distributions, 'p_neutral') + 0.5))
  with pytest.raises(InputError, match='train_000'):
    dime_aug.plan_augmentation(utterances, bad, LABELS, levels)


def test_concatenate_matches_loudness_and_gap():
  t = np.arange(16000) / 16000
  anchor = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
  partner = (0.05 * np.sin(2 * np.pi * 330 * t[:8000])).astype(np.float32)
  mixed = audio_mix.concatenate(anchor, partner, gap_s=0.1)
  gap = 1600
  assert mixed.shape == (16000 + gap + 8000,) and mixed.dtype == np.float32
  np.testing.assert_array_equal(mixed[:16000], anchor)
  assert not mixed[16000 : 16000 + gap].any()
  tail = mixed[16000 + gap :].astype(np.float64)
  # The sine's RMS is its amplitude / sqrt(2).
  assert np.sqrt(np.mean(tail**2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)
  np.testing.assert_allclose(tail, 10.0 * partner, atol=1e-3)  # both sines' amplitude ratio


def test_overlay_is_the_weighted_sum_and_stays_in_full_scale():
  rng = np.random.default_rng(1)
  anchor = (0.2 * rng.standard_normal(3000)).astype(np.float32)
  partner = (0.1 * rng.standard_normal(5000)).astype(np.float32)
  scale = np.sqrt(
    np.mean(np.square(anchor, dtype=np.float64)) / np.mean(np.square(partner, dtype=np.float64))
  )
  expected = np.zeros(5000)
  expected[:3000] += 0.7 * anchor
  expected += 0.3 * scale * partner
  np.testing.assert_allclose(audio_mix.overlay(anchor, partner, 0.7), expected, atol=1e-6)
  loud = np.full(100, 0.9, np.float32)
  assert np.abs(audio_mix.overlay(loud, loud, 0.5)).max() <= 1.0
  assert np.abs(audio_mix.concatenate(loud, -loud, 0.0)).max() == pytest.approx(0.9)


def test_durations_fall_back_to_segment_and_file(tmp_path):
  path = tmp_path / 'clip.wav'
  soundfile.write(path, np.zeros(22050 * 3, np.float32), 22050)
  utterances = utterances_table(
    [
      dict(utt_id='a', audio_path=str(path), duration_s=1.5),
      dict(utt_id='b', audio_path=str(path), start_s=0.5, end_s=2.0),
      dict(utt_id='c', audio_path=str(path)),
      dict(utt_id='d', audio_path=str(path), start_s=1.0),
    ]
  )
  np.testing.assert_allclose(audio_mix.utterance_durations(utterances), [1.5, 1.5, 3.0, 2.0])
  with pytest.raises(InputError, match="'e'"):
    audio_mix.utterance_durations(utterances_table([dict(utt_id='e')]))


@pytest.fixture(scope='module')
def wav_corpus(tmp_path_factory):
  """A small corpus with real wav files at 22.05 kHz, and its targets."""
  root = tmp_path_factory.mktemp('wavs')
  utterances, distributions = _corpus(seed=7, per_split=(('train', 16), ('test', 12)))
  rng = np.random.default_rng(0)
  paths, durations = [], []
  for utt_id in column(utterances, 'utt_id'):
    duration = float(rng.uniform(0.5, 1.5))
    path = root / f'{utt_id}.wav'
    soundfile.write(path, (0.1 * rng.standard_normal(int(22050 * duration))).astype(np.float32), 22050)
    paths.append(str(path))
    durations.append(soundfile.info(path).duration)
  utterances = utterances.set_column(1, 'audio_path', pa.array(paths))
  utterances = utterances.set_column(4, 'duration_s', pa.array(durations))
  return utterances, distributions


def test_write_augmented_set_renders_the_plan(wav_corpus, tmp_path, capsys):
  utterances, distributions = wav_corpus
  levels = dime_aug.levels_from_split(utterances, distributions, LABELS)
  plan = dime_aug.build_eval_set(utterances, distributions, LABELS, levels, split='test', seed=0)
  utt_path, dist_path = augmented_set.write_augmented_set(
    plan, utterances, distributions, LABELS, levels, str(tmp_path)
  )
  written, targets = read_table(utt_path), read_table(dist_path)
  assert column(written, 'utt_id').tolist() == column(plan, 'utt_id').tolist()
  assert 'examples/s' in capsys.readouterr().err
  np.testing.assert_allclose(_targets(targets), _targets(plan))
  by_id = {r['utt_id']: r for r in utterances.to_pylist()}
  for row in written.to_pylist():
    if row['origin'] == 'original':
      assert row['audio_path'] == by_id[row['utt_id']]['audio_path']
      continue
    waveform = audio.load_audio(row['audio_path'])
    anchor = audio.load_audio(by_id[row['anchor_id']]['audio_path'])
    partner = audio.load_audio(by_id[row['partner_id']]['audio_path'])
    gap = int(round(row['gap_s'] * 16000))
    assert waveform.size == anchor.size + gap + partner.size
    np.testing.assert_allclose(waveform[: anchor.size], anchor, atol=1 / 32768)
    assert row['duration_s'] == pytest.approx(waveform.size / 16000)
  assert set(column(targets, 'ambiguity')) <= set(dime_aug.LEVELS)


def test_launcher_writes_a_balanced_set(wav_corpus, tmp_path):
  utterances, distributions = wav_corpus
  write_table(utterances, tmp_path / 'utterances.parquet')
  write_table(distributions, tmp_path / 'distributions.parquet')
  out = tmp_path / 'out'
  launcher = pathlib.Path(__file__).resolve().parents[1] / 'launch' / 'augment.py'
  result = subprocess.run(
    [
      sys.executable,
      str(launcher),
      f'--manifest={tmp_path / "utterances.parquet"}',
      f'--distributions={tmp_path / "distributions.parquet"}',
      '--split=train',
      '--seed=1',
      f'--out_dir={out}',
    ],
    capture_output=True,
    text=True,
    env={**os.environ},
    check=False,
  )
  assert result.returncode == 0, result.stderr
  written = read_table(out / 'distributions.parquet')
  counts = collections.Counter(column(written, 'majority'))
  assert len(counts) > 1 and len(set(counts.values())) == 1, counts  # classes with utterances
  assert '[DiME-Aug]' in result.stderr and 'augmented examples' in result.stderr
  plan = read_table(out / 'plan.parquet')
  assert plan.num_rows == written.num_rows


def test_emodb_examples_render_from_real_audio(emodb_dir):
  utterances, distributions = emodb_tables(emodb_dir, max_files=60)
  plan = dime_aug.plan_augmentation(utterances, distributions, LABELS, LevelDefinition((0.0, 0.0)), seed=0)
  assert plan.num_rows > 0
  paths = dict(zip(column(utterances, 'utt_id'), column(utterances, 'audio_path')))
  for row in plan.to_pylist()[:3]:
    waveform, _, target = audio_mix.render(row, lambda u: audio.load_audio(paths[u]))
    expected = (
      audio.load_audio(paths[row['anchor_id']]).size
      + int(round(row['gap_s'] * 16000))
      + audio.load_audio(paths[row['partner_id']]).size
    )
    assert waveform.size == expected and np.abs(waveform).max() <= 1.0
    assert target.sum() == pytest.approx(1.0) and target[LABELS.index(row['wanted_label'])] >= 0.5
