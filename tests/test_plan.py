"""The fit planner, activation sharding constraints and merge_audio's row-local path (8 CPU devices)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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
