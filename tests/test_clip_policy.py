"""The clip policy (perax.data.clips) and its use in generate_proxies: bad audio skipped, counted and
listed, never NaN scores; clips over 30 s truncated or split into windows whose votes are pooled and
whose label distributions are averaged by duration."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from perax.core.errors import InputError
from perax.data import audio, clips, features, labels, tables
from perax.models import loading
from perax.models.tiny import make_tiny_checkpoint
from perax.raters import prompts, proxies
from perax.raters import sampler as sampler_lib

RATE = features.SAMPLE_RATE
LONG_SECONDS = 31.0  # two windows of 15.5 s when split


def test_check_audio_names_the_reason():
  ok = np.zeros(RATE, np.float32)
  clips.check_audio(ok)
  for waveform, reason in [
    (np.array([0.1, np.nan] * 400, np.float32), clips.NON_FINITE),
    (np.array([0.1, np.inf] * 400, np.float32), clips.NON_FINITE),
    (np.zeros(0, np.float32), clips.EMPTY),
    (np.zeros(2 * features.HOP_LENGTH, np.float32), clips.TOO_SHORT),  # 2 frames: 0 audio tokens
  ]:
    with pytest.raises(InputError) as info:
      clips.check_audio(waveform, path='x.wav', item='u')
    assert clips.skip_reason(info.value) == reason and info.value.item == 'u'
  # The shortest clip that gives an audio token passes, and the count agrees with the prompt rule.
  shortest = np.zeros(2 * features.HOP_LENGTH + 1, np.float32)
  clips.check_audio(shortest)
  assert prompts.num_audio_tokens(features.valid_frames(np.asarray([len(shortest)])))[0] == 1


@pytest.mark.parametrize('seconds, windows', [(30.0, 1), (30.01, 2), (45.0, 2), (61.0, 3), (90.0, 3)])
def test_long_clip_policies(seconds, windows):
  waveform = np.arange(int(seconds * RATE), dtype=np.float32) / 1e7
  truncated = clips.prepare(waveform, 'truncate')
  split = clips.prepare(waveform, 'split')
  if windows == 1:
    assert truncated.policy == split.policy == clips.WHOLE and len(split.windows) == 1
    return
  assert truncated.policy == clips.TRUNCATED
  np.testing.assert_array_equal(truncated.windows[0], waveform[: features.MAX_SAMPLES])
  assert split.policy == clips.SPLIT and len(split.windows) == windows
  np.testing.assert_array_equal(np.concatenate(split.windows), waveform)  # consecutive, nothing lost
  lengths = [len(w) for w in split.windows]
  assert max(lengths) <= features.MAX_SAMPLES and max(lengths) - min(lengths) <= 1
  assert min(lengths) > features.MAX_SAMPLES // 2
  np.testing.assert_allclose(split.weights, np.asarray(lengths) / len(waveform))


def test_aggregate_scores_is_the_duration_weighted_mean():
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
  mean, mass = clips.aggregate_scores(probs, np.array([0.9, 0.5]), np.array([0.75, 0.25]))
  np.testing.assert_allclose(
    mean, [0.75 * 0.7 + 0.25 * 0.1, 0.75 * 0.2 + 0.25 * 0.3, 0.75 * 0.1 + 0.25 * 0.6]
  )
  np.testing.assert_allclose(mean.sum(), 1.0)
  assert mass == pytest.approx(0.75 * 0.9 + 0.25 * 0.5)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('clips')
  checkpoint = make_tiny_checkpoint(root / 'tiny', seed=5)
  model, _, processor = loading.load_model(checkpoint)
  rng = np.random.default_rng(0)
  wavs = {
    'good': 0.2 * rng.normal(size=RATE),
    'nan': np.where(np.arange(RATE) % 100 == 0, np.nan, 0.1),
    'empty': np.zeros(0),
    'long': 0.2 * rng.normal(size=int(LONG_SECONDS * RATE)),
  }
  rows = []
  for utt_id, waveform in wavs.items():
    path = root / f'{utt_id}.wav'
    audio.write_wav(path, waveform, subtype='FLOAT')
    rows.append({'utt_id': utt_id, 'audio_path': str(path)})
  job = proxies.ProxyJob(
    model_name='tiny',
    label_set=labels.get_label_set('iemocap4'),
    prompts=tuple(prompts.load_prompts(prompt_ids=['direct'])),
    votes_per_utterance=3,
    max_new_tokens=3,
    seed=7,
    batch_size=2,
    shard_size=8,
  )
  mesh = Mesh(np.asarray(jax.devices()[:2]), ('data',))
  manifest = tables.utterances_table(rows)
  return dict(root=root, model=model, processor=processor, manifest=manifest, job=job, mesh=mesh)


def _run(setup, name, **changes):
  job = proxies.ProxyJob(**{**setup['job'].__dict__, **changes})
  return proxies.generate(
    job, setup['manifest'], str(setup['root'] / name), setup['model'], setup['processor'], mesh=setup['mesh']
  )


def test_bad_audio_is_skipped_counted_and_listed(setup, capsys):
  result = _run(setup, 'truncate')
  logged = capsys.readouterr().err
  votes = tables.read_table(result.output)
  assert list(dict.fromkeys(tables.column(votes, 'utt_id'))) == ['good', 'long']
  skipped = tables.read_table(result.skipped_output)
  assert tables.column(skipped, 'utt_id').tolist() == ['nan', 'empty']
  assert tables.column(skipped, 'reason').tolist() == [clips.NON_FINITE, clips.EMPTY]
  assert all('.wav' in m for m in tables.column(skipped, 'message'))
  assert result.skipped.total == 2 and dict(result.skipped.counts) == {clips.NON_FINITE: 1, clips.EMPTY: 1}
  assert 'skipped 2 utterances' in logged and 'nan, empty' in logged
  # The long clip: truncated, counted in a warning and marked.
  assert result.long_clips == {clips.TRUNCATED: 1}
  assert 'clips over 30 s (long_clips=truncate): 1 truncated' in logged
  long_votes = votes.filter(np.asarray(tables.column(votes, 'utt_id')) == 'long')
  assert long_votes.num_rows == 3 and set(tables.column(long_votes, proxies.CLIP_POLICY)) == {clips.TRUNCATED}
  assert set(tables.column(votes, proxies.WINDOWS)) == {1}
  assert f'{result.compiles} compilations in this run' in logged
  with pytest.raises(InputError, match='NaN or Inf'):
    _run(setup, 'strict', lenient_audio=False)


def test_split_votes_pool_every_window(setup):
  result = _run(setup, 'split_votes', long_clips='split')
  votes = tables.read_table(result.output)
  long_votes = votes.filter(np.asarray(tables.column(votes, 'utt_id')) == 'long')
  assert tables.column(long_votes, 'vote_index').tolist() == list(range(6))  # 2 windows x K=3
  assert set(tables.column(long_votes, proxies.CLIP_POLICY)) == {clips.SPLIT}
  assert set(tables.column(long_votes, proxies.WINDOWS)) == {2}
  assert result.long_clips == {clips.SPLIT: 1}
  good = votes.filter(np.asarray(tables.column(votes, 'utt_id')) == 'good')
  assert set(tables.column(good, proxies.CLIP_POLICY)) == {clips.WHOLE}


def test_split_scores_are_the_duration_weighted_mean_of_the_windows(setup):
  result = _run(setup, 'split_scores', mode='score', long_clips='split')
  scores = tables.read_table(result.output)
  columns = tables.label_columns(setup['job'].label_set.labels)
  assert tables.column(scores, 'utt_id').tolist() == ['good', 'long']
  probs = np.stack([tables.column(scores, c) for c in columns], axis=1)
  assert np.isfinite(probs).all()
  # The windows scored one by one with a direct sampler call.
  processor = setup['processor']
  waveform = audio.load_audio(setup['root'] / 'long.wav')
  windows = clips.prepare(waveform, 'split').windows
  sampler = sampler_lib.Sampler(setup['model'], processor.tokenizer, batch_size=2, mesh=setup['mesh'])
  encoded = sampler.encode(*features.batch_features(list(windows)))
  text = prompts.render_chat(processor, setup['job'].prompts[0].question(setup['job'].label_set.labels))
  ids = [prompts.PromptEncoder(processor).ids(text, int(n)) for n in encoded.num_tokens]
  label_tokens = sampler_lib.LabelTokens.build(processor.tokenizer, setup['job'].label_set.labels)
  window_probs = sampler_lib.normalise(sampler.score(encoded, ids, label_tokens))
  lengths = np.asarray([len(w) for w in windows], np.float64)
  expected = (lengths[:, None] * window_probs).sum(0) / lengths.sum()
  np.testing.assert_allclose(probs[1], expected, atol=1e-6)
  assert tables.column(scores, proxies.CLIP_POLICY).tolist() == [clips.WHOLE, clips.SPLIT]
  assert tables.column(scores, proxies.WINDOWS).tolist() == [1, 2]
