"""A step every process of a multi-process run finishes together: all succeed, or all raise.

  tables = rendezvous.run_everywhere('proxies shards', lambda: write_my_shards())

Processes of a run (perax.core.distributed) often share a step whose results one process then reads,
such as the proxy shards that process 0 merges. Two things go wrong with a device collective
(``multihost_utils.sync_global_devices``) as the barrier after such a step:

- on CPU, gloo gives up on a peer after 30 s, so processes whose work differs by more than that (one
  more shard than the others) fail with a timeout instead of waiting;
- a process whose step raised never reaches the barrier: the others wait until JAX's shutdown barrier
  times out (minutes), then die with an error about the coordination service, not the cause.

:func:`run_everywhere` waits on the coordination service's own barrier instead (no devices, no
collective; a timeout of days, so a slow peer is waited for), after every process has posted whether
its step succeeded. A failed process raises its own error after the barrier; the others raise one
naming it and its message (an InputError when the failure was bad input, so launchers exit with
code 2 and one line everywhere). With one process it is ``fn()``. A process that dies without a word
(kill -9) is caught by JAX's heartbeats, which end the others.

Every process must call the same rendezvous in the same order: keys are numbered per name.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from typing import TypeVar

import jax

from perax.core.errors import InputError

T = TypeVar('T')
WAIT_MS = 7 * 24 * 3600 * 1000  # a slow peer is waited for; a dead one is caught by heartbeats
_KEY_PREFIX = 'perax/rendezvous'
_calls: collections.Counter[str] = collections.Counter()


class PeerFailed(RuntimeError):
  """Another process's step raised something other than an InputError."""


def _client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top  (as Orbax does)

  client = distributed.global_state.client
  if client is None:
    raise RuntimeError('a multi-process run without JAX distributed runtime (jax.distributed.initialize)')
  return client


def exchange(name: str, status: dict) -> list[dict]:
  """Posts this process's ``status`` (JSON-ready), waits for every process, returns all statuses.

  Args:
    name: the rendezvous' name, the same in every process (numbered per call, so it may repeat).

  Returns:
    Every process's status, by process index (one process: ``[status]``).
  """
  if jax.process_count() == 1:
    return [status]
  _calls[name] += 1
  key = f'{_KEY_PREFIX}/{name}/{_calls[name]}'
  client = _client()
  client.key_value_set(f'{key}/{jax.process_index()}', json.dumps(status))
  client.wait_at_barrier(f'{key}/barrier', WAIT_MS)
  return [
    json.loads(client.blocking_key_value_get(f'{key}/{i}', WAIT_MS)) for i in range(jax.process_count())
  ]


def run_everywhere(name: str, fn: Callable[[], T]) -> T:
  """``fn()`` in every process, returning together; if it raised in any process, it raises in all.

  Raises:
    the error ``fn`` raised in this process; else InputError (bad input) or :class:`PeerFailed`
    naming the lowest failed process and its message.
  """
  if jax.process_count() == 1:
    return fn()
  try:
    result = fn()
  except Exception as error:
    exchange(name, {'failed': True, 'input_error': isinstance(error, InputError), 'message': str(error)})
    raise
  statuses = exchange(name, {'failed': False})
  failed = [(i, s) for i, s in enumerate(statuses) if s['failed']]
  if failed:
    index, status = failed[0]
    others = f' (and {len(failed) - 1} more)' if len(failed) > 1 else ''
    message = f'{name}: process {index} of {len(statuses)} failed{others}: {status["message"]}'
    raise (InputError if status['input_error'] else PeerFailed)(message)
  return result
