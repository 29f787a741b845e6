"""The Grain input pipeline: contents against Hugging Face, epochs, determinism, state, sharding."""

import collections

import numpy as np
import pyarrow as pa
import pytest
import soundfile
import transformers
from absl import flags
from emodb_tables import LABELS, emodb_tables

from perax.augment import audio_mix, dime_aug
from perax.augment import input_pipeline as dp
from perax.data import audio, features
from perax.data.tables import column, utterances_table
from perax.distributions.levels import LevelDefinition
from perax.models.tiny import make_tiny_checkpoint
from perax.raters import prompts

FILE_RATE = 22050
PROMPT = prompts.Prompt('direct', 'What emotion does the speaker express? Choose one of: {labels}.')
TRANSCRIPT_PROMPT = prompts.Prompt('heard', 'The speaker says: "{transcript}". Which of {labels}?')


@pytest.fixture(scope='module')
def processor(tmp_path_factory):
  path = make_tiny_checkpoint(tmp_path_factory.mktemp('tiny'))
  return transformers.AutoProcessor.from_pretrained(path)


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """Wavs at 22.05 kHz of 0.3-5 s (buckets 2, 4, 8 s), one utterance cut from a long recording."""
  root = tmp_path_factory.mktemp('corpus')
  rng = np.random.default_rng(0)
  rows, targets = [], []
  for split, n, speakers in (('train', 21, ('a', 'b', 'c')), ('test', 9, ('d', 'e'))):
    for k in range(n):
      utt_id = f'{split}{k:02d}'
      duration = float(rng.uniform(0.3, 5.0))
      t = np.arange(int(FILE_RATE * duration)) / FILE_RATE
      wave = (
        rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * rng.uniform(100, 400) * t)
        + 0.01 * rng.standard_normal(t.size)
      ).astype(np.float32)
      path = root / f'{utt_id}.wav'
      soundfile.write(path, wave, FILE_RATE)
      rows.append(
        dict(
          utt_id=utt_id,
          audio_path=str(path),
          transcript=f'words number {k} here',
          speaker=speakers[k % len(speakers)],
          split=split,
          corpus='synthetic',
        )
      )
      targets.append(rng.dirichlet(np.full(len(LABELS), 0.5)))
  long_path = root / 'session.wav'
  soundfile.write(long_path, (0.1 * rng.standard_normal(FILE_RATE * 6)).astype(np.float32), FILE_RATE)
  rows.append(
    dict(
      utt_id='train_segment',
      audio_path=str(long_path),
      start_s=1.25,
      end_s=3.5,
      transcript='a segment',
      speaker='a',
      split='train',
      corpus='synthetic',
    )
  )
  targets.append(np.asarray([0.0, 0.5, 0.5, 0.0]))
  utterances = utterances_table(rows)
  p = np.asarray(targets)
  distributions = pa.table(
    {'utt_id': column(utterances, 'utt_id'), **{f'p_{label}': p[:, c] for c, label in enumerate(LABELS)}}
  )
  levels = dime_aug.levels_from_split(utterances, distributions, LABELS)
  plan = dime_aug.plan_augmentation(utterances, distributions, LABELS, levels, seed=0)
  return utterances, distributions, plan


def _pipeline(corpus, processor, seed=0, num_epochs=1, prompt=PROMPT, batch=4, **options):
  utterances, distributions, plan = corpus
  process = {k: options.pop(k) for k in ('process_index', 'process_count') if k in options}
  config = dp.PipelineConfig(global_batch_size=batch, **options)
  return dp.build_pipeline(
    utterances,
    distributions,
    LABELS,
    processor,
    prompt,
    config,
    split='train',
    plan=plan,
    seed=seed,
    num_epochs=num_epochs,
    **process,
  )


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key


@pytest.fixture(scope='module')
def two_epochs(corpus, processor):
  pipeline = _pipeline(corpus, processor, num_epochs=2, batch=8)
  return pipeline, list(pipeline.dataset)


def test_every_example_once_per_epoch(corpus, two_epochs):
  pipeline, batches = two_epochs
  _, _, plan = corpus
  n = len(pipeline.utt_ids)
  assert n % 8 and n == 22 + plan.num_rows and len(batches) == 2 * pipeline.batches_per_epoch
  orders = []
  for epoch in range(2):
    epoch_batches = batches[epoch * pipeline.batches_per_epoch : (epoch + 1) * pipeline.batches_per_epoch]
    seen = np.concatenate([b['example_index'][b['example_mask']] for b in epoch_batches])
    assert sorted(seen.tolist()) == list(range(n))
    padded = [b for b in epoch_batches if not b['example_mask'].all()]
    assert len(padded) == 1
    for batch in padded:
      assert (batch['example_index'][~batch['example_mask']] == -1).all()
    orders.append(seen)
  assert not np.array_equal(orders[0], orders[1])  # reshuffled per epoch


def test_shapes_follow_the_bucket(two_epochs, processor):
  _, batches = two_epochs
  shapes = collections.defaultdict(set)
  for batch in batches:
    frames = batch['input_features'].shape[-1]
    assert frames // 100 in dp.PipelineConfig.bucket_seconds
    assert (batch['feature_lengths'] <= frames).all()
    shapes[frames].add(batch['input_ids'].shape)
    assert batch['targets'].dtype == np.float32 and batch['attention_mask'].dtype == bool
    np.testing.assert_allclose(batch['targets'].sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(
      batch['positions'], np.maximum(np.cumsum(batch['attention_mask'], axis=1) - 1, 0)
    )
    assert batch['attention_mask'][:, -1].all()  # left padding: every prompt ends at the end
  assert len(shapes) >= 2 and all(len(s) == 1 for s in shapes.values())  # one L per bucket


def _hf_reference(processor, waveform, chat_text):
  """Hugging Face's processor on one clip: (features [128, 3000], valid frames, input ids)."""
  out = processor(text=chat_text, audio=waveform, sampling_rate=16000, return_tensors='np')
  return (out['input_features'][0], int(out['feature_attention_mask'][0].sum()), out['input_ids'][0])


def _expected_waveform(record, sources):
  """The example's audio, rebuilt from perax.data.audio.load_audio and the plan's numbers."""

  def load(utt_id):
    path, start_s, end_s = sources[utt_id]
    return audio.load_audio(path, start_s=start_s, end_s=end_s)

  anchor = load(record['anchor_id'])
  if record['origin'] == 'original':
    return anchor
  partner = load(record['partner_id'])
  scale = np.sqrt(
    np.mean(np.square(anchor, dtype=np.float64)) / np.mean(np.square(partner, dtype=np.float64))
  )
  gap = np.zeros(int(round(record['gap_s'] * 16000)), np.float32)
  mixed = np.concatenate([anchor, gap, (partner * scale).astype(np.float32)])
  return mixed / max(1.0, np.abs(mixed).max())


@pytest.mark.parametrize('prompt', [PROMPT, TRANSCRIPT_PROMPT], ids=['plain', 'transcript'])
def test_batches_equal_hugging_face(corpus, processor, prompt):
  utterances, distributions, plan = corpus
  pipeline = _pipeline(corpus, processor, prompt=prompt, seed=1)
  sources = {
    r['utt_id']: (
      r['audio_path'],
      None if np.isnan(r['start_s']) else r['start_s'],
      None if np.isnan(r['end_s']) else r['end_s'],
    )
    for r in utterances.to_pylist()
  }
  records = {r['utt_id']: r for r in plan.to_pylist()}
  records.update({u: dict(origin='original', anchor_id=u) for u in sources})
  targets = dict(
    zip(column(distributions, 'utt_id'), np.stack([column(distributions, f'p_{c}') for c in LABELS], axis=1))
  )
  targets.update(zip(column(plan, 'utt_id'), np.stack([column(plan, f'p_{c}') for c in LABELS], axis=1)))
  checked, checked_ids = collections.Counter(), set()
  for batch in pipeline.dataset:
    frames = batch['input_features'].shape[-1]
    for row in np.flatnonzero(batch['example_mask']):
      utt_id = pipeline.utt_ids[batch['example_index'][row]]
      record = records[utt_id]
      if checked[record['origin']] >= 3 and utt_id != 'train_segment':
        continue
      checked[record['origin']] += 1
      checked_ids.add(utt_id)
      transcript = (
        ' '.join(
          utterances.filter(pa.array(column(utterances, 'utt_id') == u)).column('transcript')[0].as_py()
          for u in (record['anchor_id'], record.get('partner_id'))
          if u
        )
        if prompt is TRANSCRIPT_PROMPT
        else None
      )
      chat_text = prompts.render_chat(processor, prompt.question(LABELS, transcript))
      waveform = _expected_waveform(record, sources)
      features, valid, ids = _hf_reference(processor, waveform, chat_text)
      assert batch['feature_lengths'][row] == valid
      np.testing.assert_allclose(batch['input_features'][row], features[:, :frames], atol=2e-4)
      np.testing.assert_array_equal(batch['input_ids'][row][batch['attention_mask'][row]], ids)
      np.testing.assert_allclose(batch['targets'][row], targets[utt_id], atol=1e-6)
  assert checked['original'] >= 3 and checked['augmented'] >= 3
  assert 'train_segment' in checked_ids  # cut from a longer recording


def test_long_transcripts_are_cut_to_the_bucket_length(processor):
  ids = dp.PromptIds(processor, TRANSCRIPT_PROMPT, LABELS, max_transcript_tokens=8, token_multiple=8)
  length = ids.length(200)
  long = ids.ids(' '.join(['emotion'] * 300), int(prompts.num_audio_tokens(np.asarray([200]))[0]), length)
  short = ids.ids('hi', 50, length)
  assert len(long) <= length and len(short) < len(long)
  assert length % 8 == 0


def test_same_seed_gives_byte_identical_batches(corpus, processor):
  first = _take(iter(_pipeline(corpus, processor, seed=5).dataset), 3)
  again = _take(iter(_pipeline(corpus, processor, seed=5, read_threads=1).dataset), 3)
  other = _take(iter(_pipeline(corpus, processor, seed=6).dataset), 3)
  _assert_batches_equal(first, again)
  assert any(not np.array_equal(a['example_index'], b['example_index']) for a, b in zip(first, other))


def test_worker_count_does_not_change_the_batches_nor_the_state(corpus, processor):
  if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags, as under app.run.
    flags.FLAGS.mark_as_parsed()
  in_process = _take(iter(_pipeline(corpus, processor, seed=2, num_epochs=None).dataset), 4)
  workers = _pipeline(corpus, processor, seed=2, num_epochs=None, num_workers=2)
  iterator = iter(workers.dataset)
  try:
    first = _take(iterator, 2)
    state = iterator.get_state()
    _assert_batches_equal(in_process, first + _take(iterator, 2))
  finally:
    iterator.close()
  resumed = iter(workers.dataset)
  try:
    resumed.set_state(state)
    _assert_batches_equal(in_process[2:], _take(resumed, 2))
  finally:
    resumed.close()


def test_state_restores_exactly(corpus, processor):
  pipeline = _pipeline(corpus, processor, seed=3, num_epochs=None)
  iterator = iter(pipeline.dataset)
  _take(iterator, pipeline.batches_per_epoch - 1)  # the next ones cross into the second epoch
  state = iterator.get_state()
  expected = _take(iterator, 3)
  resumed = iter(pipeline.dataset)
  resumed.set_state(state)
  _assert_batches_equal(expected, _take(resumed, 3))


def test_bucket_indices_follow_the_one_bucket_rule():
  durations = np.asarray([0.5, 1.99, 2.0, 3.99, 4.0, 7.0, 9.0, 40.0])
  buckets = (2, 4, 8)
  got = dp.bucket_indices(durations, buckets)
  # Independently: a clip of n samples has ceil(n / 160) valid frames; the encoder reads one frame
  # past an even count and two past an odd one; a bucket of s seconds holds 100 s frames.
  samples = np.ceil(durations * 16000).astype(int)
  frames = -(-np.minimum(samples, 480000) // 160)
  needed = np.minimum(frames + 1 + frames % 2, 3000)
  want = [next((k for k, s in enumerate(buckets) if n <= 100 * s), len(buckets) - 1) for n in needed]
  assert got.tolist() == want
  assert want[0] == 0 and want[2] == 1  # 2.00 s needs the 4 s bucket
  assert [buckets[k] for k in got] == [features.bucket_for(int(n), buckets) for n in samples]


def test_processes_take_row_slices_of_one_global_batch(corpus, processor):
  whole = _take(iter(_pipeline(corpus, processor, seed=4).dataset), 3)
  halves = [
    _take(iter(_pipeline(corpus, processor, seed=4, process_index=p, process_count=2).dataset), 3)
    for p in range(2)
  ]
  for k, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([halves[0][k][key], halves[1][k][key]]), batch[key])
  with pytest.raises(ValueError, match='divisible'):
    _pipeline(corpus, processor, batch=3, process_index=0, process_count=2)


def test_a_process_slice_of_only_padding_gets_a_masked_batch_of_the_same_shapes(corpus, processor):
  """9 test utterances in global batches of 8: the last batch holds 1 real row, so process 1's half
  of it is all padding; it must still load (filled with the global batch's first example, masked)."""
  utterances, distributions, _ = corpus

  def batches(**process):
    pipeline = dp.build_pipeline(
      utterances,
      distributions,
      LABELS,
      processor,
      PROMPT,
      dp.PipelineConfig(global_batch_size=8),
      split='test',
      seed=None,
      num_epochs=1,
      **process,
    )
    return list(pipeline.dataset)

  whole = batches()
  halves = [batches(process_index=p, process_count=2) for p in range(2)]
  assert len(whole) == len(halves[0]) == len(halves[1]) == 2
  assert not halves[1][-1]['example_mask'].any() and (halves[1][-1]['example_index'] == -1).all()
  for k, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([halves[0][k][key], halves[1][k][key]]), batch[key])


def test_config_checks_the_data_parallel_size():
  with pytest.raises(ValueError, match='data_parallel_size'):
    dp.PipelineConfig(global_batch_size=6, data_parallel_size=4)


def test_eval_iterator_covers_the_balanced_set_once(corpus, processor):
  utterances, distributions, _ = corpus
  levels = dime_aug.levels_from_split(utterances, distributions, LABELS)
  eval_set = dime_aug.build_eval_set(utterances, distributions, LABELS, levels, split='test')
  config = dp.PipelineConfig(global_batch_size=4)
  batches = list(
    dp.make_eval_iterator(utterances, distributions, LABELS, processor, PROMPT, config, eval_set=eval_set)
  )
  seen = np.concatenate([b['example_index'][b['example_mask']] for b in batches])
  assert sorted(seen.tolist()) == list(range(eval_set.num_rows))
  frames = [b['input_features'].shape[-1] for b in batches]
  assert frames == sorted(frames)  # table order, grouped by bucket
  targets = np.concatenate([b['targets'][b['example_mask']] for b in batches])
  expected = np.stack([column(eval_set, f'p_{c}') for c in LABELS], axis=1)[seen]
  np.testing.assert_allclose(targets, expected, atol=1e-6)


def test_emodb_through_the_whole_pipeline(emodb_dir, processor):
  utterances, distributions = emodb_tables(emodb_dir, max_files=48)
  plan = dime_aug.plan_augmentation(utterances, distributions, LABELS, LevelDefinition((0.0, 0.0)), seed=0)
  iterator = dp.make_train_iterator(
    utterances,
    distributions,
    LABELS,
    processor,
    PROMPT,
    dp.PipelineConfig(global_batch_size=8),
    seed=0,
    plan=plan,
    num_epochs=1,
  )
  batches = list(iterator)
  seen = sum(int(b['example_mask'].sum()) for b in batches)
  assert seen == utterances.num_rows + plan.num_rows
  durations = audio_mix.utterance_durations(utterances)
  for batch in batches:
    lengths = batch['feature_lengths'][batch['example_mask']]
    assert (lengths >= np.ceil(durations.min() * 100)).all()
    assert np.isfinite(batch['input_features']).all()
