"""The fit planner, activation sharding constraints and merge_audio's row-local path (8 CPU devices)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perax.benchmarks import gpu_check, plan, plan_report
from perax.models import activation_sharding, sharding
from perax.models.config import Qwen2AudioConfig
from perax.models.qwen2_audio import Qwen2AudioForConditionalGeneration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUDIO_ID = 250
TINY_HF_CONFIG = {
  'model_type': 'qwen2_audio',
  'audio_token_index': AUDIO_ID,
  'audio_config': {
    'num_mel_bins': 128,
    'encoder_layers': 1,
    'encoder_attention_heads': 2,
    'encoder_ffn_dim': 64,
    'd_model': 32,
    'max_source_positions': 1500,
  },
  'text_config': {
    'vocab_size': 256,
    'hidden_size': 64,
    'intermediate_size': 256,
    'num_hidden_layers': 1,
    'num_attention_heads': 4,
    'num_key_value_heads': 2,
  },
}


def tiny_config() -> Qwen2AudioConfig:
  return Qwen2AudioConfig.from_hf_dict(TINY_HF_CONFIG)


@pytest.fixture(scope='module')
def config_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('plan') / 'config.json'
  path.write_text(json.dumps(TINY_HF_CONFIG))
  return str(path)


# ------------------------------------------------------------------------------------------------
# merge_audio


def reference_merge(embedding, input_ids, audio_embeds, audio_valid):
  """HF's masked_scatter in numpy: the valid embeddings of all clips, in order, over the audio tokens
  of the flattened batch."""
  out = embedding[input_ids].copy()
  sources = np.concatenate([audio_embeds[n][audio_valid[n]] for n in range(len(audio_embeds))])
  rows, cols = np.nonzero(input_ids == AUDIO_ID)
  out[rows, cols] = sources[: len(rows)]
  return out


def prompts_with_audio(rng, counts, length):
  """Left-padded prompts, row b holding counts[b] audio tokens between random text tokens."""
  ids = np.zeros((len(counts), length), np.int32)
  for b, count in enumerate(counts):
    prompt = np.concatenate(
      [rng.integers(1, AUDIO_ID, 3), np.full(count, AUDIO_ID), rng.integers(1, AUDIO_ID, 4)]
    )
    ids[b, length - len(prompt) :] = prompt
  return ids


@pytest.fixture(scope='module')
def small_model():
  return Qwen2AudioForConditionalGeneration(tiny_config(), rngs=nnx.Rngs(0))


@pytest.mark.parametrize('with_mesh', [False, True])
def test_merge_audio_matches_masked_scatter(small_model, with_mesh):
  rng = np.random.default_rng(0)
  batch, slots, hidden = 8, 12, small_model.config.text.hidden_size
  valid_counts = rng.integers(3, slots + 1, batch)
  audio_valid = np.arange(slots)[None, :] < valid_counts[:, None]
  audio_embeds = rng.normal(size=(batch, slots, hidden)).astype(np.float32)
  input_ids = prompts_with_audio(rng, valid_counts, 24)
  mesh = sharding.make_mesh(data=8, fsdp=1, tensor=1) if with_mesh else None

  @jax.jit
  def merge(ids, embeds, valid):
    with activation_sharding.active(mesh):
      return small_model.merge_audio(ids, embeds, valid)

  got = np.asarray(merge(input_ids, audio_embeds, audio_valid))
  embedding = np.asarray(small_model.language_model.embed_tokens.embedding[...])
  np.testing.assert_array_equal(got, reference_merge(embedding, input_ids, audio_embeds, audio_valid))


def test_merge_audio_two_clips_per_row_keeps_batch_order_under_a_mesh(small_model):
  """N != B (two clips per row): the batch-wide order, also while a mesh is active."""
  rng = np.random.default_rng(1)
  clips, slots, hidden = 8, 6, small_model.config.text.hidden_size
  audio_valid = np.arange(slots)[None, :] < rng.integers(2, slots + 1, clips)[:, None]
  audio_embeds = rng.normal(size=(clips, slots, hidden)).astype(np.float32)
  per_row = audio_valid.sum(1).reshape(4, 2).sum(1)
  input_ids = prompts_with_audio(rng, per_row, 24)
  mesh = sharding.make_mesh(data=4, fsdp=2, tensor=1)
  with activation_sharding.active(mesh):
    got = np.asarray(jax.jit(small_model.merge_audio)(input_ids, audio_embeds, audio_valid))
  embedding = np.asarray(small_model.language_model.embed_tokens.embedding[...])
  np.testing.assert_array_equal(got, reference_merge(embedding, input_ids, audio_embeds, audio_valid))


def test_constrain_is_identity_without_mesh_and_splits_batch_with_one():
  x = jnp.ones((8, 4, 6))
  assert activation_sharding.constrain(x) is x
  mesh = sharding.make_mesh(data=2, fsdp=4, tensor=1)

  @jax.jit
  def f(x):
    with activation_sharding.active(mesh):
      return activation_sharding.constrain(x * 2)

  out = f(x)
  assert out.sharding.is_equivalent_to(
    jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(('data', 'fsdp'))), x.ndim
  )
  # A batch the (data, fsdp) product does not divide is split over the axes that do divide it.
  assert sharding.partition_spec(('batch', None), (2, 3), mesh, activation_sharding.ACTIVATION_RULES) == (
    jax.sharding.PartitionSpec('data', None)
  )


# ------------------------------------------------------------------------------------------------
# The planner and the fsdp memory bound (one tiny LoRA model, data=8 against fsdp=8).

SETTINGS = dict(
  batch_size=16,
  clip_seconds=2.5,
  votes_per_clip=3,
  new_tokens=4,
  prompt_text_tokens=16,
  transcript_tokens=16,
  compute_dtype='float32',
  param_dtype='float32',
  lora_rank=4,
)


@pytest.fixture(scope='module')
def data_parallel_report(config_file, tmp_path_factory):
  """Every program planned and measured on mesh data=8 (8 virtual CPU devices)."""
  out = tmp_path_factory.mktemp('plan_out') / 'plan.json'
  settings = plan.PlanSettings(mesh=(8, 1, 1), **SETTINGS)
  report = plan_report.run(config_file, settings, device_memory_gib=1.0, measure=True, out=str(out))
  return report, out


def test_planner_reports_every_program(data_parallel_report):
  report, out = data_parallel_report
  assert json.loads(out.read_text()) == json.loads(json.dumps(report))
  for name in ('encode', 'prefill', 'decode_step', 'train_step'):
    figures = report['programs'][name]
    assert figures['argument_bytes'] > 0 and figures['temp_bytes'] > 0, name
    assert figures['flops'] > 0 and figures['compile_seconds'] > 0, name
    assert figures['measured_seconds'] > 0 and figures['fraction_of_peak'] > 0, name
    assert figures['peak_bytes'] == (
      figures['argument_bytes'] + figures['output_bytes'] - figures['alias_bytes'] + figures['temp_bytes']
    )
    assert report['fits'][name] == (figures['peak_bytes'] <= 2**30)
    assert any(line.startswith(f'{name}: per device arguments') for line in report['lines'])
  assert report['parameters'] == plan.count_parameters(tiny_config())
  assert not any(line.startswith('note:') for line in report['lines'])  # float32: no CPU bf16 caveat


def test_planner_argument_bytes_are_the_sharded_weights_and_inputs(data_parallel_report):
  """encode's per-device arguments: the (replicated, data=8) float32 weights and 1/8 of the inputs."""
  report, _ = data_parallel_report
  config = tiny_config()
  model = Qwen2AudioForConditionalGeneration(config, rngs=nnx.Rngs(0))
  weights = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model)))
  shapes = plan.Shapes.for_settings(plan.PlanSettings(**SETTINGS))
  inputs = (SETTINGS['batch_size'] // 8) * (128 * shapes.feature_frames * 4 + 4)
  assert report['programs']['encode']['argument_bytes'] == pytest.approx(weights + inputs, rel=0.01)


def test_cache_bytes_per_vote():
  config = tiny_config()
  settings = plan.PlanSettings(**SETTINGS)
  cache = plan.cache_bytes(config, settings)
  text = config.text
  per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * 4
  prompt = plan.Shapes.for_settings(settings).prompt_length
  assert cache['per_token'] == per_token
  assert cache['per_vote_repeated'] == per_token * (prompt + 4)
  assert cache['per_vote_shared'] == pytest.approx(per_token * (prompt / 3 + 4))
  assert cache['per_batch_repeated'] == per_token * (prompt + 4) * 16 * 3


def test_decode_unread_bytes_are_encoder_projector_and_embedding(small_model):
  def nbytes(module):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(module)))

  expected = (
    nbytes(small_model.audio_tower)
    + nbytes(small_model.multi_modal_projector)
    + nbytes(small_model.language_model.embed_tokens)
  )
  assert plan.decode_unread_bytes(tiny_config(), 'float32') == expected


def test_7b_parameter_count_matches_hf():
  assert plan.count_parameters(plan.load_config()) == 8_397_094_912  # field notes, section 6


def test_shapes_follow_the_clip():
  shapes = plan.Shapes.for_settings(plan.PlanSettings(clip_seconds=10.0))
  assert shapes.feature_frames == 1600  # the 16 s bucket holds 1000 frames plus the guard frame
  assert shapes.audio_tokens == 250  # HF's count for 1000 valid frames: (500 - 2) // 2 + 1
  assert shapes.prompt_length >= 250 + 64


def test_fsdp_temp_memory_within_1_3x_of_data_parallel(data_parallel_report, monkeypatch):
  """With the activation constraints, fsdp=8 needs at most 1.3x data=8's temp memory per device;
  without them (the constraint context made a no-op) it needs more than that."""
  report, _ = data_parallel_report
  data_temp = report['programs']['train_step']['temp_bytes']
  config = tiny_config()
  settings = plan.PlanSettings(mesh=(1, 8, 1), **SETTINGS)
  mesh = plan.make_mesh(settings.mesh)
  fsdp_temp = plan.train_program(config, settings, mesh).temp_bytes
  assert fsdp_temp <= 1.3 * data_temp, (fsdp_temp, data_temp)
  original = activation_sharding.active
  monkeypatch.setattr(activation_sharding, 'active', lambda mesh: original(None))
  unconstrained = plan.train_program(config, settings, mesh).temp_bytes
  assert unconstrained > 1.3 * data_temp, (unconstrained, data_temp)


def test_plan_launcher(config_file, tmp_path):
  out = tmp_path / 'plan.json'
  done = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, 'launch', 'plan.py'),
      f'--config={config_file}',
      '--mesh=1,2,1',
      '--batch_size=2',
      '--votes=2',
      '--clip_seconds=2',
      '--programs=decode_step',
      '--device_memory_gib=0.000001',
      f'--out={out}',
    ],
    capture_output=True,
    text=True,
    check=False,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'decode_step: per device arguments' in done.stdout
  assert 'fits in 1e-06 GiB per device: decode_step NO' in done.stdout
  assert 'kv cache per vote' in done.stdout
  assert 'note: the CPU backend computes bfloat16 matmuls in float32' in done.stdout
  figures = json.loads(out.read_text())
  assert figures['settings']['mesh'] == [1, 2, 1] and figures['fits'] == {'decode_step': False}


# ------------------------------------------------------------------------------------------------
# The GPU check, on CPU with --tiny.


def run_gpu_check(tmp_path, *flags):
  out = tmp_path / 'check.json'
  done = subprocess.run(
    [sys.executable, os.path.join(REPO, 'launch', 'gpu_check.py'), '--tiny', f'--out={out}', *flags],
    capture_output=True,
    text=True,
    check=False,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(out.read_text()), done.stdout


def test_gpu_check_tiny_runs_every_section(tmp_path):
  result, stdout = run_gpu_check(tmp_path, '--isolate=false')
  sections = result['sections']
  assert list(sections) == list(gpu_check.SECTIONS)
  assert all(entry['status'] == 'ok' for entry in sections.values()), sections
  summary = result['summary']
  for key in ('prefill_mfu', 'train_mfu', 'decode_step_s', 'decode_bandwidth_limit_s', 'votes_per_s_perax'):
    assert summary[key] > 0, key
  votes, hf = sections['votes']['figures'], sections['hf']['figures']
  assert votes['votes_per_batch'] == hf['votes_per_batch'] == 2 * 3
  assert votes['tokens_per_vote'] == hf['tokens_per_vote'] == 3  # both decode every step
  assert summary['votes_speedup'] == pytest.approx(votes['votes_per_s'] / hf['votes_per_s'])
  prefill, peak = sections['prefill']['figures'], sections['peak']['figures']
  assert summary['prefill_mfu'] == pytest.approx(
    prefill['flops'] / prefill['seconds'] / peak['matmul_flops_per_s']
  )
  assert 'votes/s: perax' in stdout and 'LoRA train step MFU' in stdout


def test_gpu_check_sections_run_apart_with_timeouts(tmp_path):
  result, _ = run_gpu_check(tmp_path, '--sections=peak,decode', '--timeout_s=0.01')
  assert [e['status'] for e in result['sections'].values()] == ['timeout', 'timeout']
  assert result['summary']['decode_step_s'] is None
  result, stdout = run_gpu_check(tmp_path, '--sections=peak')
  assert result['sections']['peak']['status'] == 'ok', result
  assert result['sections']['peak']['figures']['matmul_flops_per_s'] > 0
  assert 'peak: ok' in stdout


def test_scanned_programs_report_the_flops_of_every_layer():
  """XLA counts a scanned stack's body once; plan_programs' FLOPs equal the unrolled program's."""
  deep = Qwen2AudioConfig.from_hf_dict(
    {
      **TINY_HF_CONFIG,
      'audio_config': {**TINY_HF_CONFIG['audio_config'], 'encoder_layers': 3},
      'text_config': {**TINY_HF_CONFIG['text_config'], 'num_hidden_layers': 4},
    }
  )
  assert deep.scan_layers
  settings = plan.PlanSettings(batch_size=2, clip_seconds=2.0, votes_per_clip=2, new_tokens=2)
  mesh = plan.make_mesh((1, 1, 1))
  scanned = plan.plan_programs(deep, settings, mesh, ('prefill',))['prefill'].flops
  unrolled_config = plan.PlanSettings(scan_layers=False).model_config(deep)
  unrolled = plan.plan_programs(unrolled_config, settings, mesh, ('prefill',))['prefill'].flops
  # The raw cost analysis of the scanned program misses layers; the planner's figure does not.
  raw = plan.inference_programs(deep, settings, mesh, names=('prefill',))['prefill'].flops
  assert raw < 0.8 * unrolled
  np.testing.assert_allclose(scanned, unrolled, rtol=0.02)
