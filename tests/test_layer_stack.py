"""Stacked layers (perax.models.layer_stack): a scan and an unrolled loop over the same stacked weights
compute the same model; remat policies change memory, not values; LoRA adapts every layer of a stack;
a scanned stack compiles one layer whatever the depth."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perax.core.errors import InputError
from perax.models import cache as cache_lib
from perax.models import convert, layer_stack, loading, tiny
from perax.models.config import Qwen2AudioConfig
from perax.models.qwen2_audio import Qwen2AudioForConditionalGeneration
from perax.train import lora

LAYERS, ENCODER_LAYERS = 3, 2
BATCH, LENGTH, FRAMES = 2, 24, 64


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  return tiny.make_tiny_checkpoint(
    tmp_path_factory.mktemp('stack') / 'ckpt', seed=5, num_hidden_layers=LAYERS, encoder_layers=ENCODER_LAYERS
  )


@pytest.fixture(scope='module')
def models(checkpoint):
  """The same weights, scanned and unrolled."""
  scanned, config, _ = loading.load_model(checkpoint, scan_layers=True, with_processor=False)
  unrolled, unrolled_config, _ = loading.load_model(checkpoint, scan_layers=False, with_processor=False)
  assert config.scan_layers and not unrolled_config.scan_layers
  return scanned, unrolled


@pytest.fixture(scope='module')
def inputs(models):
  config = models[0].config
  rng = np.random.default_rng(0)
  features = rng.normal(size=(BATCH, config.audio.num_mel_bins, FRAMES)).astype(np.float32)
  lengths = np.array([FRAMES - 2, FRAMES // 2], np.int32)
  ids = rng.integers(0, config.text.vocab_size, size=(BATCH, LENGTH)).astype(np.int32)
  mask = np.ones((BATCH, LENGTH), bool)
  mask[1, :5] = False  # left padding
  return features, lengths, ids, mask


@nnx.jit
def encode(model, features, lengths):
  return model.encode_audio(features, lengths)


@nnx.jit
def full_logits(model, ids, mask):
  return model(ids, attention_mask=mask).logits


@nnx.jit
def cached_logits(model, ids, mask):
  """Prefill all but the last token into a cache, then the last token alone: ``[B, V]``."""
  batch, length = ids.shape
  cache = cache_lib.init_cache(model.config, batch, length, jnp.float32)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  first = model(ids[:, :-1], positions=positions[:, :-1], attention_mask=mask[:, :-1], cache=cache)
  last = model(ids[:, -1:], positions=positions[:, -1:], attention_mask=mask[:, -1:], cache=first.cache)
  return last.logits[:, 0]


def test_parameters_are_stacked_with_a_layers_axis(models):
  scanned, unrolled = models
  state = dict(convert.flat_variables(nnx.state(scanned)))
  kernel = state['language_model.layers.mlp.up_proj.kernel']
  assert kernel.shape[0] == LAYERS
  assert kernel.get_metadata()['logical_axes'] == ('layers', 'embed', 'mlp')
  assert state['audio_tower.layers.fc1.kernel'].shape[0] == ENCODER_LAYERS
  assert not any('layers.0' in path for path in state)
  # The layout does not depend on how the stack runs.
  unrolled_state = dict(convert.flat_variables(nnx.state(unrolled)))
  assert state.keys() == unrolled_state.keys()
  for path, variable in state.items():
    np.testing.assert_array_equal(np.asarray(variable[...]), np.asarray(unrolled_state[path][...]))


def test_scanned_and_unrolled_stacks_compute_the_same_model(models, inputs):
  scanned, unrolled = models
  features, lengths, ids, mask = inputs
  for got, want in zip(encode(scanned, features, lengths), encode(unrolled, features, lengths)):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=1e-5)
  np.testing.assert_allclose(full_logits(scanned, ids, mask), full_logits(unrolled, ids, mask), atol=1e-5)
  np.testing.assert_allclose(cached_logits(scanned, ids, mask), cached_logits(unrolled, ids, mask), atol=1e-5)
  # And the cache path equals the full pass at the last position.
  np.testing.assert_allclose(
    cached_logits(scanned, ids, mask), full_logits(scanned, ids, mask)[:, -1], atol=1e-4
  )


def _loss_and_grads(model, ids, mask):
  graphdef, state = nnx.split(model)

  def loss(state):
    logits = nnx.merge(graphdef, state)(ids, attention_mask=mask).logits
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  return jax.jit(jax.value_and_grad(loss))(state)


def test_remat_policies_give_the_same_values_and_gradients(checkpoint, inputs):
  _, _, ids, mask = inputs
  results = {}
  for policy in layer_stack.REMAT_POLICIES:
    model, _, _ = loading.load_model(checkpoint, remat_policy=policy, with_processor=False)
    assert model.language_model.remat_policy == policy
    results[policy] = _loss_and_grads(model, ids, mask)
  base_loss, base_grads = results['none']
  for policy, (loss, grads) in results.items():
    np.testing.assert_allclose(loss, base_loss, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=policy)
  # A stacked kernel's gradient has one nonzero slice per layer.
  up = dict(convert.flat_variables(base_grads))['language_model.layers.mlp.up_proj.kernel']
  assert all(np.abs(np.asarray(up[...])[layer]).max() > 0 for layer in range(LAYERS))


def _abstract(config: Qwen2AudioConfig) -> nnx.Module:
  return nnx.eval_shape(lambda: Qwen2AudioForConditionalGeneration(config, rngs=nnx.Rngs(0)))


def _config(**overrides) -> Qwen2AudioConfig:
  raw = {
    'model_type': 'qwen2_audio',
    'audio_config': dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128),
    'text_config': dict(
      vocab_size=512,
      hidden_size=128,
      intermediate_size=256,
      num_hidden_layers=4,
      num_attention_heads=4,
      num_key_value_heads=2,
    ),
  }
  return dataclasses.replace(Qwen2AudioConfig.from_hf_dict(raw), **overrides)


def _compiled_train_pass(config: Qwen2AudioConfig, length: int):
  """The gradient of a forward pass, compiled abstractly."""
  graphdef, state = nnx.split(_abstract(config))

  def loss(state, ids):
    return jnp.mean(nnx.merge(graphdef, state)(ids).logits)

  ids = jax.ShapeDtypeStruct((4, length), jnp.int32)
  return jax.jit(jax.grad(loss)).lower(state, ids)


def test_remat_full_keeps_less_for_the_backward_pass_than_none():
  temps = {
    policy: _compiled_train_pass(_config(remat_policy=policy), 256)
    .compile()
    .memory_analysis()
    .temp_size_in_bytes
    for policy in ('none', 'full')
  }
  assert temps['full'] < 0.7 * temps['none'], temps


def _dot_count(config: Qwen2AudioConfig) -> int:
  graphdef, state = nnx.split(_abstract(config))

  def logits(state, ids):
    return nnx.merge(graphdef, state)(ids).logits

  text = jax.jit(logits).lower(state, jax.ShapeDtypeStruct((2, 16), jnp.int32)).as_text()
  return text.count('stablehlo.dot_general')


def test_a_scanned_stack_compiles_one_layer_whatever_its_depth():
  text = _config().text
  deep = dataclasses.replace(text, num_hidden_layers=8)
  shallow = dataclasses.replace(text, num_hidden_layers=2)
  scanned = [_dot_count(_config(text=t)) for t in (shallow, deep)]
  unrolled = [_dot_count(_config(text=t, scan_layers=False)) for t in (shallow, deep)]
  assert scanned[0] == scanned[1]
  assert unrolled[1] > unrolled[0] > scanned[0] - 1


def test_lora_adapts_every_layer_of_a_stack(checkpoint, inputs):
  _, _, ids, mask = inputs
  outputs = {}
  for scan in (True, False):
    model, _, _ = loading.load_model(checkpoint, scan_layers=scan, with_processor=False)
    adapted = lora.apply_lora(model, ('language_model/.*/q_proj',), rank=2, alpha=4.0, rngs=nnx.Rngs(7))
    assert adapted == ['language_model/layers/self_attn/q_proj']
    q_proj = model.language_model.layers.self_attn.q_proj
    hidden = model.config.text.hidden_size
    assert q_proj.lora_a.shape == (LAYERS, hidden, 2)
    assert q_proj.lora_a.get_metadata()['logical_axes'] == ('layers', 'embed', 'lora_rank')
    assert q_proj.lora_b.shape == (LAYERS, 2) + q_proj.base.kernel.shape[2:]
    # Per-layer adapters are drawn independently.
    a = np.asarray(q_proj.lora_a[...])
    assert not np.allclose(a[0], a[1])
    q_proj.lora_b[...] = jax.random.normal(jax.random.key(1), q_proj.lora_b.shape) * 0.1
    outputs[scan] = np.asarray(full_logits(model, ids, mask))
    # Changing one layer's adapter changes the output: each layer reads its own slice.
    q_proj.lora_b[...] = q_proj.lora_b[...].at[LAYERS - 1].set(0.0)
    assert not np.allclose(np.asarray(full_logits(model, ids, mask)), outputs[scan], atol=1e-6)
  np.testing.assert_allclose(outputs[True], outputs[False], atol=1e-5)


def test_stack_settings_are_validated_config_fields(checkpoint):
  raw = {'model_type': 'qwen2_audio', 'perax_scan_layers': False, 'perax_remat_policy': 'full'}
  config = Qwen2AudioConfig.from_hf_dict(raw)
  assert (config.scan_layers, config.remat_policy) == (False, 'full')
  with pytest.raises(InputError, match=r'config.json: perax_remat_policy must be one of .*everything'):
    Qwen2AudioConfig.from_hf_dict({**raw, 'perax_remat_policy': 'everything'}, path='config.json')
  with pytest.raises(InputError, match='perax_scan_layers must be true or false'):
    Qwen2AudioConfig.from_hf_dict({**raw, 'perax_scan_layers': 'yes'})
  with pytest.raises(InputError, match='remat_policy must be one of'):
    loading.load_model(checkpoint, remat_policy='some', with_processor=False)
