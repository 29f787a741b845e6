"""Sharded training on the real Qwen2-Audio port (a tiny random checkpoint): placement by the rules,
1 device vs a 2x4 mesh, gradient accumulation, LoRA scope, bf16 compute over float32 masters."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from perax.models import sharding as model_sharding
from perax.models import tiny
from perax.models.audio_encoder import audio_token_lengths
from perax.train import losses, optim, step
from perax.train import mesh as mesh_lib
from perax.train import model as model_lib
from perax.train import state as state_lib

NUM_CLASSES = 4
LEARNING_RATE = 1e-2
TOTAL_STEPS = 20
WARMUP_STEPS = 2


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  """perax.models.tiny's random checkpoint cut to one encoder and one decoder layer: hidden 32,
  4 query / 2 key-value heads of 8 (small programs compile fast)."""
  return tiny.make_tiny_checkpoint(
    tmp_path_factory.mktemp('tiny'), seed=0, encoder_layers=1, num_hidden_layers=1
  )


def synthetic_batch(audio_token, batch_size=16, frames=200, seed=0):
  """Left-padded prompts '1 2 <audio x n_b> 3 4 3'; features are noise shifted by a per-row class,
  targets Dirichlet draws around that class; the last two rows are padding (example_mask False)."""
  rng = np.random.default_rng(seed)
  classes = np.arange(batch_size) % NUM_CLASSES
  lengths = rng.integers(frames // 2, frames + 1, size=batch_size).astype(np.int32)
  lengths[0] = frames
  n_audio = np.asarray(audio_token_lengths(lengths))
  rows = [[1, 2] + [audio_token] * n + [3, 4, 3] for n in n_audio]
  width = max(map(len, rows))
  input_ids = np.zeros((batch_size, width), np.int32)
  mask = np.zeros((batch_size, width), bool)
  for b, row in enumerate(rows):
    input_ids[b, width - len(row) :] = row
    mask[b, width - len(row) :] = True
  return {
    'input_features': (rng.normal(size=(batch_size, 128, frames)) + (classes - 1.5)[:, None, None]).astype(
      np.float32
    ),
    'feature_lengths': lengths,
    'input_ids': input_ids,
    'attention_mask': mask,
    'positions': np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32),
    'targets': np.stack([rng.dirichlet(1 + 8 * np.eye(NUM_CLASSES)[c]) for c in classes]).astype(np.float32),
    'example_mask': np.arange(batch_size) < batch_size - 2,
  }


def build(checkpoint, scope, compute_dtype='float32', head='linear'):
  options = model_lib.ModelOptions(
    num_classes=NUM_CLASSES,
    scope=scope,
    head=head,
    pooling='audio_mean' if head == 'mlp' else 'last',
    lora_targets=('language_model/.*/q_proj', 'v_proj'),
  )
  model, _, _, adapted = model_lib.build_model(checkpoint, options, compute_dtype=compute_dtype)
  graphdef, params, frozen = state_lib.split_model(model, scope)
  return graphdef, params, frozen, adapted


def place(graphdef, params, frozen, mesh, *, microbatches=1, learning_rate=LEARNING_RATE):
  tx, schedule = optim.make_optimizer(
    learning_rate=learning_rate, total_steps=TOTAL_STEPS, warmup_steps=WARMUP_STEPS
  )
  # Copies: the step donates its state, and device_put may alias the fixture's buffers.
  params, frozen = jax.tree.map(jnp.copy, (params, frozen))
  train_state = state_lib.create_train_state(params, frozen, tx)
  shardings = mesh_lib.state_shardings(train_state, mesh)
  train_state = jax.device_put(train_state, shardings)
  fn = step.make_train_step(
    graphdef, loss='kl', tx=tx, schedule=schedule, mesh=mesh, num_microbatches=microbatches
  )
  return train_state, step.train_step_compiler(fn, shardings, mesh)


def loss_and_grads(graphdef, params, frozen, batch, mesh):
  """Jitted masked-mean loss, per-example losses and gradients, placed by the rules on ``mesh``."""
  params = jax.device_put(params, mesh_lib.state_shardings(params, mesh))
  frozen = jax.device_put(frozen, mesh_lib.state_shardings(frozen, mesh))
  batch = step.device_batch(batch, step.TRAIN_INPUTS, mesh)

  def mean_loss(p):
    logits = nnx.merge(graphdef, p, frozen)(batch)
    per_example = losses.kl_divergence(logits, batch['targets'])
    mask = batch['example_mask']
    return jnp.sum(jnp.where(mask, per_example, 0.0)) / mask.sum(), per_example

  (loss, per_example), grads = jax.jit(jax.value_and_grad(mean_loss, has_aux=True))(params)
  return float(loss), np.asarray(per_example), jax.device_get(grads)


@pytest.fixture(scope='module')
def full(checkpoint):
  return build(checkpoint, 'full')


@pytest.fixture(scope='module')
def batch(checkpoint):
  config = json.loads((pathlib.Path(checkpoint) / 'config.json').read_text())
  return synthetic_batch(config['audio_token_index'])


@pytest.fixture(scope='module')
def one_device(full, batch):
  """Loss, per-example losses and gradients of the full model on a single device."""
  graphdef, params, frozen, _ = full
  one = model_sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  return loss_and_grads(graphdef, params, frozen, batch, one)


def test_parameters_are_sharded_as_the_rules_say(full):
  _, params, _, _ = full
  mesh = model_sharding.make_mesh(2, 2, 2)
  placed = jax.device_put(params, mesh_lib.state_shardings(params, mesh))
  for path, variable in nnx.to_flat_state(placed):
    value = variable[...]
    axes = variable.get_metadata()['logical_axes']
    assert value.sharding.spec == model_sharding.partition_spec(axes, value.shape, mesh), path
  layer = placed['backbone']['language_model']['layers']
  # Independent of the rules' code: q_proj [layers 1, embed 32, heads 4, head_dim 8] keeps the layer
  # axis whole, splits embed over fsdp and heads over tensor, so each device holds a [1, 16, 2, 8] block.
  q_kernel = layer['self_attn']['q_proj']['kernel'][...]
  assert q_kernel.sharding.spec == P(None, 'fsdp', 'tensor', None)
  assert {s.data.shape for s in q_kernel.addressable_shards} == {(1, 16, 2, 8)}
  embedding = placed['backbone']['language_model']['embed_tokens']['embedding'][...]
  assert embedding.sharding.spec == P('tensor', 'fsdp')
  assert {s.data.shape for s in embedding.addressable_shards} == {(embedding.shape[0] // 2, 16)}
  norm = layer['input_layernorm']['scale'][...]
  assert norm.sharding.spec == P(None, None)


def test_batch_is_split_over_data_and_fsdp(batch):
  mesh = model_sharding.make_mesh(2, 4, 1)
  placed = step.device_batch(batch, step.TRAIN_INPUTS, mesh)
  assert {s.data.shape for s in placed['input_features'].addressable_shards} == {(2, 128, 200)}


def test_padding_rows_are_left_out_of_the_loss(batch, one_device):
  loss, per_example, _ = one_device
  mask = batch['example_mask']
  assert not mask.all()
  np.testing.assert_allclose(loss, per_example[mask].mean(), rtol=1e-6)
  assert abs(loss - per_example.mean()) > 1e-4


def test_same_loss_and_gradients_on_one_device_and_a_2x4_mesh(full, batch, one_device):
  graphdef, params, frozen, _ = full
  loss_one, _, grads_one = one_device
  loss_8, _, grads_8 = loss_and_grads(graphdef, params, frozen, batch, model_sharding.make_mesh(2, 4, 1))
  # float32 throughout; only the order of the sums differs: agree to 1e-5 relative.
  np.testing.assert_allclose(loss_8, loss_one, rtol=1e-5)
  flat_one, flat_8 = jax.tree.leaves(grads_one), jax.tree.leaves(grads_8)
  assert len(flat_one) == len(flat_8) == len(jax.tree.leaves(params))
  for g1, g8 in zip(flat_one, flat_8):
    np.testing.assert_allclose(g8, g1, rtol=1e-4, atol=1e-5 * float(np.abs(g1).max()) + 1e-8)


def test_accumulated_step_on_2x4_matches_the_one_device_gradients(full, batch, one_device):
  """Two micro-batches on a 2x4 mesh, head scope: same loss, the head's gradient norm, and the same
  AdamW update as optax applied on the host to the single-device gradients of the head."""
  graphdef, params, frozen, _ = full
  loss_one, _, grads_one = one_device
  head_graphdef, head_params, head_frozen = state_lib.split_model(nnx.merge(graphdef, params, frozen), 'head')
  head_grads = grads_one['head']
  mesh = model_sharding.make_mesh(2, 4, 1)
  train_state, compiled = place(head_graphdef, head_params, head_frozen, mesh, microbatches=2)
  train_state, metrics = compiled(train_state, step.device_batch(batch, step.TRAIN_INPUTS, mesh))
  np.testing.assert_allclose(float(metrics['loss']), loss_one, rtol=1e-5)
  norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in jax.tree.leaves(head_grads)))
  np.testing.assert_allclose(float(metrics['grad_norm']), norm, rtol=1e-4)
  assert float(metrics['examples']) == batch['example_mask'].sum()
  tx, _ = optim.make_optimizer(
    learning_rate=LEARNING_RATE, total_steps=TOTAL_STEPS, warmup_steps=WARMUP_STEPS
  )
  updates, _ = tx.update(head_grads, tx.init(head_params['head']), head_params['head'])
  expected = optax.apply_updates(head_params['head'], updates)
  got = jax.device_get(train_state.params['head'])
  assert len(jax.tree.leaves(expected)) == len(jax.tree.leaves(got)) > 0
  for want, have in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    # Adam divides by the gradient's scale: compare updates to a small share of the rate.
    np.testing.assert_allclose(np.asarray(have), np.asarray(want), rtol=1e-4, atol=1e-3 * LEARNING_RATE)


def test_lora_starts_at_the_base_model_and_trains_only_adapters_and_head(checkpoint, batch):
  graphdef, params, frozen, adapted = build(checkpoint, 'lora', head='mlp')
  assert adapted == [
    'audio_tower/layers/self_attn/v_proj',
    'language_model/layers/self_attn/q_proj',
    'language_model/layers/self_attn/v_proj',
  ]
  trainable = {'/'.join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
  assert all(p.startswith('head/') or p.endswith(('lora_a', 'lora_b')) for p in trainable)
  assert len([p for p in trainable if p.endswith('lora_b')]) == len(adapted)
  # Adam moments exist for the trainable parameters only.
  mesh = model_sharding.make_mesh(2, 4, 1)
  train_state, compiled = place(graphdef, params, frozen, mesh)
  moments = sum(x.size for x in jax.tree.leaves(train_state.opt_state) if x.ndim)
  assert moments == 2 * state_lib.count_parameters(params)  # Adam's mu and nu, nothing frozen

  # B = 0: the adapted model's logits equal the same model with the adapters stripped off.
  inputs = {k: jnp.asarray(v) for k, v in batch.items()}
  with_lora = nnx.merge(graphdef, params, frozen)
  base_params = nnx.merge(graphdef, params, frozen)
  for path in adapted:
    parent = base_params.backbone
    *parents, name = path.split('/')
    for key in parents:
      parent = parent[int(key)] if key.isdigit() else getattr(parent, key)
    setattr(parent, name, getattr(parent, name).base)
  np.testing.assert_allclose(
    np.asarray(with_lora(inputs)), np.asarray(base_params(inputs)), rtol=1e-6, atol=1e-6
  )

  before_frozen = jax.device_get(train_state.frozen)
  before = jax.device_get(train_state.params)
  placed = step.device_batch(batch, step.TRAIN_INPUTS, mesh)
  for _ in range(2):
    train_state, _ = compiled(train_state, placed)
  after = dict(nnx.to_flat_state(jax.device_get(train_state.params)))
  for path, variable in nnx.to_flat_state(before):
    assert not np.array_equal(after[path][...], variable[...]), path
  for (path, old), (_, new) in zip(
    nnx.to_flat_state(before_frozen), nnx.to_flat_state(jax.device_get(train_state.frozen))
  ):
    np.testing.assert_array_equal(new[...], old[...], err_msg=str(path))


def test_bf16_compute_keeps_float32_master_weights_and_learns(checkpoint, batch):
  graphdef, params, frozen, _ = build(checkpoint, 'head', compute_dtype='bfloat16', head='mlp')
  assert {x.dtype for x in jax.tree.leaves(frozen)} == {jnp.dtype('float32')}
  mesh = model_sharding.make_mesh(2, 4, 1)
  train_state, compiled = place(graphdef, params, frozen, mesh)
  placed = step.device_batch(batch, step.TRAIN_INPUTS, mesh)
  history = []
  for _ in range(TOTAL_STEPS):
    train_state, metrics = compiled(train_state, placed)
    history.append(float(metrics['loss']))
  assert len(compiled.executables) == 1
  assert {x.dtype for x in jax.tree.leaves(train_state.params)} == {jnp.dtype('float32')}
  assert np.isfinite(history).all()
  # 14 targets that follow the features' class, from a frozen random backbone: a quarter off in
  # 20 steps.
  assert history[-1] < 0.75 * history[0], history
