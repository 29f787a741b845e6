"""Bulk proxy generation: the votes table, resumption after a kill, score mode, the launcher."""

import importlib.util
import pathlib

import jax
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import soundfile
from absl import flags
from jax.sharding import Mesh

from perax.core.errors import InputError
from perax.core.progress import Progress
from perax.data import audio, features, labels, tables
from perax.models import loading
from perax.models.tiny import make_tiny_checkpoint
from perax.raters import prompts, proxies
from perax.raters import sampler as sampler_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
FILE_RATE = 22050  # EmoDB's rate: load_audio resamples to 16 kHz
# All clips fit the 2 s feature bucket and one prompt bucket: one compilation per function.
SECONDS = {'u0': 0.8, 'u1': 1.9, 'u2': 1.2, 'u3': 1.7, 'u4': 0.5}
MISSING = 'u_missing'
SEGMENT = ('u_segment', 0.3, 1.5)  # a segment of u3's file


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('proxies')
  checkpoint = make_tiny_checkpoint(root / 'tiny-qwen2-audio', seed=5)
  model, _, processor = loading.load_model(checkpoint)
  rng = np.random.default_rng(0)
  rows = []
  for utt_id, seconds in SECONDS.items():
    path = root / 'wav' / f'{utt_id}.wav'
    audio.write_wav(path, 0.2 * rng.normal(size=int(seconds * FILE_RATE)), sr=FILE_RATE)
    rows.append({'utt_id': utt_id, 'audio_path': str(path), 'transcript': f'words of {utt_id}'})
  rows.insert(2, {'utt_id': MISSING, 'audio_path': str(root / 'wav' / 'gone.wav')})
  rows.append(
    {'utt_id': SEGMENT[0], 'audio_path': rows[4]['audio_path'], 'start_s': SEGMENT[1], 'end_s': SEGMENT[2]}
  )
  manifest = root / 'utterances.parquet'
  tables.write_table(tables.utterances_table(rows), manifest)
  job = proxies.ProxyJob(
    model_name='tiny',
    label_set=labels.get_label_set('iemocap4'),
    prompts=tuple(prompts.load_prompts(prompt_ids=['direct', 'listener'])),
    votes_per_utterance=3,
    max_new_tokens=4,
    temperature=1.0,
    seed=7,
    batch_size=2,
    shard_size=3,
  )
  mesh = Mesh(np.asarray(jax.devices()[:2]), ('data',))
  first = proxies.generate(
    job, tables.read_utterances(manifest), str(root / 'full'), model, processor, mesh=mesh
  )
  return dict(
    root=root,
    checkpoint=checkpoint,
    model=model,
    processor=processor,
    manifest=manifest,
    job=job,
    mesh=mesh,
    first=first,
  )


def _run(setup, out_dir, job=None):
  return proxies.generate(
    job or setup['job'],
    tables.read_utterances(setup['manifest']),
    str(out_dir),
    setup['model'],
    setup['processor'],
    mesh=setup['mesh'],
  )


def test_votes_table(setup):
  result = setup['first']
  votes = tables.read_table(result.output)
  readable = [u for u in tables.column(tables.read_utterances(setup['manifest']), 'utt_id') if u != MISSING]
  job = setup['job']
  assert votes.num_rows == result.rows == len(readable) * len(job.prompts) * 3
  assert list(dict.fromkeys(tables.column(votes, 'utt_id'))) == readable  # manifest order
  keys = list(zip(*(tables.column(votes, c).tolist() for c in ('utt_id', 'prompt_id', 'vote_index'))))
  assert len(set(keys)) == len(keys)
  assert votes.schema.field('vote_index').type == pa.int32()
  assert set(tables.column(votes, 'rater')) == {'tiny|direct', 'tiny|listener'}
  assert set(tables.column(votes, 'source')) == {tables.SYNTHETIC}
  assert set(tables.column(votes, 'weight')) == {1.0}
  texts, parsed = tables.column(votes, 'text'), tables.column(votes, 'label')
  assert [labels.parse_label(t) for t in texts] == parsed.tolist()
  np.testing.assert_array_equal(tables.column(votes, 'valid'), job.label_set.index(parsed) >= 0)
  assert result.skipped.total == 1 and MISSING in result.skipped.examples[0]


def test_votes_equal_a_direct_sampler_call(setup):
  """The plumbing (audio, bucket, prompt, keys) reproduces the sampler on one utterance alone."""
  job, processor = setup['job'], setup['processor']
  waveform = audio.load_audio(setup['root'] / 'wav' / 'u3.wav', start_s=SEGMENT[1], end_s=SEGMENT[2])
  sampler = sampler_lib.Sampler(setup['model'], processor.tokenizer, batch_size=2, mesh=setup['mesh'])
  feats, lengths = features.batch_features([waveform] * 2)
  encoded = sampler.encode(feats, lengths)
  prompt = job.prompts[1]
  text = prompts.render_chat(processor, prompt.question(job.label_set.labels))
  ids = [prompts.PromptEncoder(processor).ids(text, int(n)) for n in encoded.num_tokens]
  config = sampler.config(
    votes_per_clip=3,
    max_new_tokens=4,
    temperature=1.0,
    stop_strings=job.stop_strings,
    eos_ids=sampler_lib.eos_token_ids(processor.tokenizer),
  )
  tokens = sampler.sample(
    encoded, ids, config, seed=job.seed, utt_ids=[SEGMENT[0]] * 2, prompt_id=prompt.prompt_id
  )
  expected = sampler.texts(tokens, job.stop_strings)[0]
  votes = tables.read_table(setup['first'].output)
  mine = votes.filter(
    pc.and_(pc.equal(votes['utt_id'], SEGMENT[0]), pc.equal(votes['prompt_id'], prompt.prompt_id))
  )
  assert tables.column(mine, 'text').tolist() == expected


def test_resume_after_kill_gives_the_same_table(setup, monkeypatch):
  out_dir = setup['root'] / 'killed'
  write = tables.write_table
  calls = []

  def killed_on_second_shard(table, path):
    calls.append(path)
    if len(calls) == 2:
      pathlib.Path(f'{path}.tmp-1').write_bytes(b'half a parquet file')
      raise KeyboardInterrupt('kill -9')
    return write(table, path)

  monkeypatch.setattr(tables, 'write_table', killed_on_second_shard)
  with pytest.raises(KeyboardInterrupt):
    _run(setup, out_dir)
  monkeypatch.setattr(tables, 'write_table', write)
  assert len(list((out_dir / 'shards').glob('part-*.parquet'))) == 1
  resumed = _run(setup, out_dir)
  n_shards = -(-tables.read_utterances(setup['manifest']).num_rows // setup['job'].shard_size)
  assert resumed.shards_done == n_shards - 1
  merged = tables.read_table(resumed.output)
  uninterrupted = tables.read_table(setup['first'].output)
  assert merged.schema.equals(uninterrupted.schema)
  np.testing.assert_equal(merged.to_pydict(), uninterrupted.to_pydict())  # NaN == NaN here
  assert resumed.skipped.total == 1
  again = _run(setup, out_dir)  # a finished job only merges again
  assert again.shards_done == 0 and again.rows == resumed.rows


def test_a_different_job_is_refused(setup):
  other = proxies.ProxyJob(**{**setup['job'].__dict__, 'seed': 8})
  with pytest.raises(InputError, match=r'settings differ from the recorded run \(seed: recorded 7, now 8\)'):
    _run(setup, setup['root'] / 'full', other)


def test_unreadable_audio_raises_when_strict(setup):
  strict = proxies.ProxyJob(**{**setup['job'].__dict__, 'lenient_audio': False})
  with pytest.raises(InputError) as info:
    _run(setup, setup['root'] / 'strict', strict)
  assert info.value.item == MISSING and info.value.path.endswith('gone.wav')


def test_constrained_votes_on_emodb_audio(setup, emodb_dir):
  """Real 22.05 kHz EmoDB clips through the whole path; constrained votes are all labels."""
  paths = sorted((emodb_dir / 'wav').glob('*.wav'), key=lambda p: soundfile.info(str(p)).duration)[
    :3
  ]  # the shortest clips
  manifest = tables.utterances_table([{'utt_id': p.stem, 'audio_path': str(p)} for p in paths])
  job = proxies.ProxyJob(**{**setup['job'].__dict__, 'constrained': True})
  result = proxies.generate(
    job, manifest, str(setup['root'] / 'emodb'), setup['model'], setup['processor'], mesh=setup['mesh']
  )
  votes = tables.read_table(result.output)
  assert votes.num_rows == len(paths) * len(job.prompts) * job.votes_per_utterance
  assert set(tables.column(votes, 'label')) <= set(job.label_set.labels)
  assert tables.column(votes, 'valid').all() and result.skipped.total == 0


@pytest.fixture(scope='module')
def launcher():
  spec = importlib.util.spec_from_file_location('generate_proxies', REPO / 'launch' / 'generate_proxies.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # defines the launcher's flags, once per test module
  return module


def test_launcher_mesh_shape_and_dtype_defaults(launcher):
  parser = launcher._MeshShapeParser()
  assert parser.parse('(1,4,2)') == parser.parse('1, 4, 2') == (1, 4, 2)
  assert parser.parse('(2, -1, 1)') == (2, -1, 1)
  for bad in ('(1,4)', '1,x,2', '1,2,3,4'):
    with pytest.raises(ValueError, match='three integers'):
      parser.parse(bad)
  assert proxies.default_dtype('cpu') == 'float32'
  assert proxies.default_dtype('gpu') == proxies.default_dtype('tpu') == 'bfloat16'
  assert flags.FLAGS['dtype'].default is None and 'bfloat16 on GPU and TPU' in flags.FLAGS['dtype'].help
  mesh = proxies.local_mesh((2, 2, -1))
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': len(jax.local_devices()) // 4}


def test_launcher_score_mode(setup, launcher):
  out_dir = setup['root'] / 'scores'
  flags.FLAGS(
    [
      'generate_proxies',
      f'--checkpoint={setup["checkpoint"]}',
      f'--manifest={setup["manifest"]}',
      f'--out_dir={out_dir}',
      '--mode=score',
      '--labels=neutral,happy,sad',
      '--batch_size=8',
      '--shard_size=4',
    ]
  )
  try:
    launcher.main(['generate_proxies'])
  finally:
    flags.FLAGS.unparse_flags()
  compiles = sampler_lib.compile_count()
  scores = tables.read_table(out_dir / 'scores.parquet')
  columns = tables.label_columns(['neutral', 'happy', 'sad'])
  assert scores.column_names == [
    'utt_id',
    'prompt_id',
    *columns,
    proxies.LABEL_MASS,
    proxies.CLIP_POLICY,
    proxies.WINDOWS,
  ]
  assert scores.num_rows == len(SECONDS) + 1 and set(tables.column(scores, 'prompt_id')) == {'direct'}
  probs = np.stack([tables.column(scores, c) for c in columns], axis=1)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
  mass = tables.column(scores, proxies.LABEL_MASS)
  assert np.all((mass > 0) & (mass < 1))
  # The first utterance's scores from a direct sampler call (the launcher's shapes and mesh).
  processor = setup['processor']
  sampler = sampler_lib.Sampler(setup['model'], processor.tokenizer, batch_size=8, mesh=proxies.local_mesh())
  # u1 sets the prompt bucket of the launcher's first batch, as it does here.
  u0, u1 = (audio.load_audio(setup['root'] / 'wav' / f'{u}.wav') for u in ('u0', 'u1'))
  encoded = sampler.encode(*features.batch_features(sampler_lib.pad_rows([u0, u1], 8)))
  question = prompts.load_prompts()[0].question(['neutral', 'happy', 'sad'])
  text = prompts.render_chat(processor, question)
  ids = [prompts.PromptEncoder(processor).ids(text, int(n)) for n in encoded.num_tokens]
  label_tokens = sampler_lib.LabelTokens.build(processor.tokenizer, ['neutral', 'happy', 'sad'])
  logp = sampler.score(encoded, ids, label_tokens)
  np.testing.assert_allclose(probs[0], sampler_lib.normalise(logp)[0], atol=1e-6)
  np.testing.assert_allclose(mass[0], np.exp(logp[0].astype(np.float64)).sum(), rtol=1e-5)
  assert sampler_lib.compile_count() == compiles  # the launcher compiled these shapes already


def test_progress_reports_rate_and_eta():
  now = [0.0]
  lines = []
  progress = Progress(
    total=100, unit='utt', what='job', every_s=10.0, print_fn=lines.append, clock=lambda: now[0]
  )
  progress.update(20, resumed=True)  # found done: not part of the rate
  now[0] = 4.0
  progress.update(10)  # within every_s of the last line: not printed
  now[0] = 10.0
  progress.update(20)
  assert lines[-1] == 'job: 50/100 utt (50.0%) 3 utt/s, elapsed 0:00:10, ETA 0:00:17'
  now[0] = 12.0
  progress.update(50)
  progress.close()
  assert len(lines) == 3 and lines[-1].startswith('job: 100/100 utt (100.0%) 6.67 utt/s')
  assert lines[-1].endswith('ETA 0:00:00')
