"""The model's typed interfaces: the attention implementation as a config field, the output struct,
the one Whisper sinusoid table, and config.json checks (unknown model classes)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from transformers.models.whisper import modeling_whisper

from perax.core.errors import InputError
from perax.models import config as config_lib
from perax.models import convert, layers, tiny
from perax.models.qwen2_audio import Qwen2AudioForConditionalGeneration, Qwen2AudioOutput
from perax.train import config as train_config
from perax.train import model as train_model

TINY_AUDIO = dict(
  d_model=8, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=16, max_source_positions=16
)
TINY_TEXT = dict(
  vocab_size=40,
  hidden_size=8,
  intermediate_size=16,
  num_hidden_layers=2,
  num_attention_heads=2,
  num_key_value_heads=1,
)


def hf_dict(**extra):
  return {
    'model_type': 'qwen2_audio',
    'architectures': ['Qwen2AudioForConditionalGeneration'],
    'audio_config': dict(TINY_AUDIO),
    'text_config': dict(TINY_TEXT),
    'audio_token_index': 7,
    **extra,
  }


def attention_impls(model) -> set[str]:
  return {
    module.attention_impl
    for _, module in nnx.iter_graph(model)
    if isinstance(module, nnx.Module) and hasattr(module, 'attention_impl')
  }


def test_attention_impl_is_a_validated_config_field():
  assert config_lib.Qwen2AudioConfig.from_hf_dict(hf_dict()).attention_impl == 'einsum'
  config = config_lib.Qwen2AudioConfig.from_hf_dict(hf_dict(perax_attention_impl='xla'))
  assert config.attention_impl == 'xla'
  with pytest.raises(InputError, match=r"config.json: perax_attention_impl must be one of .*'flash'"):
    config_lib.Qwen2AudioConfig.from_hf_dict(hf_dict(perax_attention_impl='flash'), path='config.json')
  with pytest.raises(InputError, match='attention_impl must be one of'):
    dataclasses.replace(config, attention_impl='flash')
  assert train_config.default_config().model.attention_impl in config_lib.ATTENTION_IMPLS


def test_every_attention_layer_takes_the_config_field():
  config = config_lib.Qwen2AudioConfig.from_hf_dict(hf_dict())
  for impl in config_lib.ATTENTION_IMPLS:
    model = convert.abstract_model(dataclasses.replace(config, attention_impl=impl))
    assert attention_impls(model) == {impl}
    # the encoder's and the decoder's stacked attention layers carry it
    count = sum(
      1 for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Module) and hasattr(m, 'attention_impl')
    )
    assert count == 2
  assert not hasattr(layers, 'set_attention_implementation')


def test_output_is_a_frozen_pytree_with_named_fields():
  config = config_lib.Qwen2AudioConfig.from_hf_dict(hf_dict())
  model = nnx.jit(lambda: Qwen2AudioForConditionalGeneration(config, rngs=nnx.Rngs(0)))()  # one compile
  ids = jnp.arange(10, dtype=jnp.int32).reshape(2, 5)
  out, picked = nnx.jit(lambda m, x: (m(x), m(x, logits_at=jnp.array([[4], [2]]))))(model, ids)
  assert isinstance(out, Qwen2AudioOutput)
  assert out.logits.shape == (2, 5, TINY_TEXT['vocab_size']) and out.logits.dtype == jnp.float32
  assert out.hidden_states.shape == (2, 5, TINY_TEXT['hidden_size'])
  assert out.cache is None
  # The logits are the lm_head of the hidden states, computed independently here.
  kernel = np.asarray(model.lm_head.kernel[...])
  np.testing.assert_allclose(
    np.asarray(out.logits), np.asarray(out.hidden_states) @ kernel, rtol=1e-5, atol=1e-5
  )
  with pytest.raises(dataclasses.FrozenInstanceError):
    out.logits = None
  assert len(jax.tree.leaves(out)) == 2
  np.testing.assert_allclose(
    np.asarray(picked.logits[:, 0]), np.asarray(out.logits[[0, 1], [4, 2]]), atol=1e-5
  )


@pytest.mark.parametrize('length,channels', [(1500, 1280), (16, 8), (7, 24)])
def test_one_sinusoid_table_equal_to_whisper(length, channels):
  half = channels // 2
  # Whisper's formula as a power (perax's uses exp and log): channel i < half is sin(t * 10000^(-i /
  # (half - 1))), channel half + i the matching cosine.
  angle = np.arange(length)[:, None] * np.power(10000.0, -np.arange(half) / (half - 1))[None, :]
  expected = np.concatenate([np.sin(angle), np.cos(angle)], axis=1)
  table = layers.sinusoids(length, channels)
  assert table.dtype == np.float32
  np.testing.assert_allclose(table, expected, rtol=0, atol=1e-6)
  # transformers computes the same table in float32 (angles up to 1500 lose ~1e-4).
  np.testing.assert_allclose(table, modeling_whisper.sinusoids(length, channels).numpy(), rtol=0, atol=5e-4)
  assert not hasattr(tiny, 'whisper_sinusoids')


def test_tiny_checkpoint_positions_are_the_shared_table():
  config = tiny.tiny_config(100, {token: i for i, token in enumerate(tiny.SPECIAL_TOKENS)})
  weights = tiny.random_weights(config, seed=0)
  audio = config['audio_config']
  table = weights['model.audio_tower.embed_positions.weight']
  np.testing.assert_array_equal(table, layers.sinusoids(audio['max_source_positions'], audio['d_model']))


@pytest.mark.parametrize(
  'change,message',
  [
    (dict(model_type='whisper'), r"model_type is 'whisper': perax implements only 'qwen2_audio'"),
    (dict(model_type=None), r'model_type is None'),
    (
      dict(architectures=['LlavaForConditionalGeneration']),
      r"architectures \['LlavaForConditionalGeneration'\] do not include 'Qwen2AudioForConditionalGeneration'",
    ),
  ],
)
def test_unknown_model_class_is_an_input_error(tmp_path, change, message):
  (tmp_path / 'config.json').write_text(json.dumps(hf_dict(**change)))
  with pytest.raises(InputError, match=message) as caught:
    convert.read_hf_config(tmp_path)
  assert str(tmp_path / 'config.json') in str(caught.value)


def test_training_config_field_reaches_every_attention_layer(tmp_path):
  checkpoint = tiny.make_tiny_checkpoint(tmp_path / 'tiny', seed=3)
  config = train_config.default_config()
  config.model.attention_impl = 'xla'
  model, backbone_config, _, _ = train_model.build_model(
    checkpoint,
    train_model.ModelOptions(num_classes=4),
    compute_dtype='float32',
    attention_impl=config.model.attention_impl,
  )
  assert backbone_config.attention_impl == 'xla'
  assert attention_impls(model.backbone) == {'xla'}
