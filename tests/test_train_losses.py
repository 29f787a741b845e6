"""Losses, pooling, class weights, learning-rate schedule and mesh parsing, against independent
results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
import scipy.stats

from perax.models import sharding
from perax.train import head, losses, optim


@pytest.fixture(scope='module')
def logits_and_targets():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 4)).astype(np.float32) * 2
  targets = rng.dirichlet(np.ones(4), size=6).astype(np.float32)
  targets[0] = [1, 0, 0, 0]  # a one-hot row: zero-mass terms must vanish
  targets[1] = [0.5, 0.5, 0, 0]
  return logits, targets


def test_kl_matches_scipy(logits_and_targets):
  logits, targets = logits_and_targets
  q = scipy.special.softmax(logits.astype(np.float64), axis=1)
  expected = [scipy.stats.entropy(t, p) for t, p in zip(targets, q)]
  np.testing.assert_allclose(
    losses.kl_divergence(jnp.asarray(logits), jnp.asarray(targets)), expected, rtol=1e-5, atol=1e-6
  )


def test_kl_is_zero_at_the_target():
  targets = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], np.float32)
  logits = np.log(np.maximum(targets, 1e-30))
  np.testing.assert_allclose(losses.kl_divergence(jnp.asarray(logits), jnp.asarray(targets)), 0, atol=1e-6)


def test_soft_cross_entropy_is_kl_plus_entropy(logits_and_targets):
  logits, targets = logits_and_targets
  q = scipy.special.softmax(logits.astype(np.float64), axis=1)
  expected = -(targets * np.log(q)).sum(1)
  np.testing.assert_allclose(
    losses.soft_cross_entropy(jnp.asarray(logits), jnp.asarray(targets)), expected, rtol=1e-5
  )
  entropy = np.array([scipy.stats.entropy(t) for t in targets])
  np.testing.assert_allclose(
    expected - entropy, losses.kl_divergence(jnp.asarray(logits), jnp.asarray(targets)), rtol=1e-4, atol=1e-5
  )


def test_js_matches_scipy_in_bits(logits_and_targets):
  logits, targets = logits_and_targets
  q = scipy.special.softmax(logits.astype(np.float64), axis=1)
  expected = [scipy.spatial.distance.jensenshannon(t, p, base=2) ** 2 for t, p in zip(targets, q)]
  np.testing.assert_allclose(
    losses.js_divergence(jnp.asarray(logits), jnp.asarray(targets)), expected, rtol=1e-4, atol=1e-6
  )


def test_class_weights_scale_each_class_term(logits_and_targets):
  logits, targets = logits_and_targets
  weights = np.array([2.0, 1.0, 0.5, 1.0], np.float32)
  q = scipy.special.softmax(logits.astype(np.float64), axis=1)
  expected = -(weights * targets * np.log(q)).sum(1)
  np.testing.assert_allclose(
    losses.soft_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights)),
    expected,
    rtol=1e-5,
  )


def test_class_weights_from_targets():
  targets = np.array([[1, 0, 0], [1, 0, 0], [0.5, 0.5, 0], [0, 0, 1]], np.float64)
  # Mean mass: 0.625, 0.125, 0.25; inverse: 1.6, 8, 4; mean 4.5333.
  expected = np.array([1.6, 8.0, 4.0]) / np.mean([1.6, 8.0, 4.0])
  np.testing.assert_allclose(losses.class_weights_from_targets(targets), expected, rtol=1e-6)
  np.testing.assert_allclose(losses.class_weights_from_targets(targets, power=0.0), 1.0)
  with pytest.raises(ValueError, match='unknown loss'):
    losses.get_loss('mse')


def test_schedule_warms_up_then_decays_to_the_floor():
  schedule = optim.learning_rate_schedule(1e-3, total_steps=100, warmup_steps=10, end_factor=0.1)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(5)), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)
  # Cosine half-way through the decay: floor + (peak - floor) / 2.
  np.testing.assert_allclose(float(schedule(55)), 1e-4 + 0.9e-3 / 2, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(100)), 1e-4, rtol=1e-5)


@pytest.mark.parametrize(
  'sizes, devices, expected',
  [
    ((2, 4, 1), 8, (2, 4, 1)),
    ((-1, 1, 1), 8, (8, 1, 1)),
    ((1, -1, 2), 8, (1, 4, 2)),
    ((1, 1, 1), 1, (1, 1, 1)),
  ],
)
def test_make_mesh_sizes(sizes, devices, expected):
  mesh = sharding.make_mesh(*sizes, devices=jax.devices()[:devices])
  assert tuple(mesh.shape[a] for a in sharding.MESH_AXES) == expected


@pytest.mark.parametrize('sizes', [(2, 2, 1), (-1, -1, 1), (3, -1, 1), (0, 8, 1), (-2, 4, 1)])
def test_make_mesh_rejects(sizes):
  with pytest.raises(ValueError):
    sharding.make_mesh(*sizes)


def test_pooling_last_valid_position_and_audio_mean():
  rng = np.random.default_rng(1)
  hidden = rng.normal(size=(3, 6, 4)).astype(np.float32)
  mask = np.array(
    [
      [0, 0, 1, 1, 1, 1],  # left padded: last valid is 5
      [1, 1, 1, 0, 0, 0],  # right padded: last valid is 2
      [0, 1, 1, 1, 1, 0],
    ],
    bool,
  )
  np.testing.assert_array_equal(
    head.pool_last(jnp.asarray(hidden), jnp.asarray(mask)), hidden[[0, 1, 2], [5, 2, 4]]
  )
  audio = 7
  ids = np.array([[0, 0, 1, 7, 7, 2], [7, 7, 7, 0, 0, 0], [0, 1, 2, 3, 4, 5]])
  ids[1, 3] = audio  # an audio id on a padding position does not count
  pooled = np.asarray(head.pool_audio_mean(jnp.asarray(hidden), jnp.asarray(ids), jnp.asarray(mask), audio))
  np.testing.assert_allclose(pooled[0], hidden[0, 3:5].mean(0), rtol=1e-6)
  np.testing.assert_allclose(pooled[1], hidden[1, 0:3].mean(0), rtol=1e-6)
  np.testing.assert_array_equal(pooled[2], 0.0)
