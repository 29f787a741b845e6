"""Orbax checkpoints: restore onto another mesh, the iterator position, the keep policy."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perax.models import sharding
from perax.train import checkpointing, head, mesh, optim
from perax.train import state as state_lib


def _iterator():
  return iter(grain.MapDataset.range(40).shuffle(seed=3).batch(4).repeat().to_iter_dataset())


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A train state saved on one device after two optimizer updates, its iterator 3 batches in."""
  model = head.DistributionalHead(16, 4, kind='mlp', mlp_size=8, rngs=nnx.Rngs(0))
  _, params, frozen = nnx.split(model, nnx.Param, ...)
  tx, _ = optim.make_optimizer(learning_rate=0.1, total_steps=10, warmup_steps=1)
  one = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  train_state = state_lib.create_train_state(params, frozen, tx)
  train_state = jax.device_put(train_state, mesh.state_shardings(train_state, one))
  grads = jax.tree.map(jnp.ones_like, train_state.params)
  for _ in range(2):
    updates, opt_state = tx.update(grads, train_state.opt_state, train_state.params)
    train_state = train_state.replace(
      step=train_state.step + 1,
      opt_state=opt_state,
      params=jax.tree.map(jnp.add, train_state.params, updates),
    )
  iterator = _iterator()
  seen = [next(iterator) for _ in range(3)]
  directory = tmp_path_factory.mktemp('ckpt')
  checkpointer = checkpointing.Checkpointer(directory, keep_last=2)
  checkpointer.save(2, train_state, iterator, config={'seed': 0})
  checkpointer.close()
  return directory, train_state, next(iterator), seen


def test_restore_onto_a_2x4_mesh(saved):
  directory, saved_state, next_batch, _ = saved
  target_mesh = sharding.make_mesh(2, 4, 1)
  shardings = mesh.state_shardings(saved_state, target_mesh)
  checkpointer = checkpointing.Checkpointer(directory)
  iterator = _iterator()
  restored = checkpointer.restore(2, saved_state, shardings, iterator)
  assert checkpointer.restore_config(2) == {'seed': 0}
  checkpointer.close()
  assert int(restored.step) == 2
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(saved_state)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # The hidden kernel [embed=16, head_mlp=8]: 'embed' goes to fsdp (4 devices); the restored array
  # really is split in four row blocks, each on two devices (replicated over 'data').
  kernel = restored.params['hidden']['kernel'][...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec('fsdp', None)
  assert {s.data.shape for s in kernel.addressable_shards} == {(4, 8)}
  adam_mu = jax.tree.leaves(restored.opt_state)
  assert any(
    getattr(x, 'sharding', None) is not None
    and x.shape == (16, 8)
    and x.sharding.spec == jax.sharding.PartitionSpec('fsdp', None)
    for x in adam_mu
  )
  np.testing.assert_array_equal(next(iterator), next_batch)


def test_keep_last_and_best(tmp_path):
  tree = {'w': jnp.arange(4.0)}
  checkpointer = checkpointing.Checkpointer(tmp_path, keep_last=2, keep_best=1, best_metric='js')
  dev_js = {1: 0.5, 2: 0.2, 3: 0.4, 4: 0.3, 5: 0.6}
  for step, js in dev_js.items():
    checkpointer.save(step, tree, metrics={'js': js})
  checkpointer.wait()
  assert sorted(checkpointer.all_steps()) == [2, 4, 5]
  assert checkpointer.best_step() == 2
  assert not checkpointer.save(5, tree)
  checkpointer.close()
  # The metrics are on disk: a reopened manager (a resumed run) still knows the best step.
  reopened = checkpointing.Checkpointer(tmp_path, keep_last=2, keep_best=1, best_metric='js')
  assert reopened.best_step() == 2
  reopened.close()
