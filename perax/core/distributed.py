"""Multi-process runs on JAX's own distributed runtime, from three flags every launcher has.

  python launch/train.py ... --coordinator_address=host0:1234 --num_processes=2 --process_id=0
  python launch/train.py ... --coordinator_address=host0:1234 --num_processes=2 --process_id=1

With ``--num_processes`` > 1, :func:`initialize` calls ``jax.distributed.initialize`` before any JAX
computation (perax.core.cli.run does it for every launcher). On CPU, collectives go through gloo, so
two processes on one machine form one global device set, as hosts of a GPU cluster or TPU pod do.
On SLURM or Cloud TPU, leave the flags unset: JAX finds the cluster from its environment when
``--distributed_auto`` is given.
"""

from __future__ import annotations

from absl import flags

COORDINATOR_ADDRESS = flags.DEFINE_string(
  'coordinator_address', None, 'host:port of process 0, for multi-process runs (jax.distributed).'
)
NUM_PROCESSES = flags.DEFINE_integer(
  'num_processes', 1, 'Processes in a multi-process run (1: single process).'
)
PROCESS_ID = flags.DEFINE_integer('process_id', 0, "This process's index in a multi-process run.")
DISTRIBUTED_AUTO = flags.DEFINE_bool(
  'distributed_auto',
  False,
  'Call jax.distributed.initialize() with cluster auto-detection (SLURM, TPU pods).',
)


def initialize(
  coordinator_address: str | None, num_processes: int, process_id: int, auto: bool = False
) -> bool:
  """Joins a multi-process run when asked; returns whether JAX's distributed runtime is on.

  Raises:
    ValueError: an inconsistent set of flags (no coordinator, or a process id out of range).
  """
  import jax  # imported late: flags are parsed before JAX is configured

  if auto:
    jax.distributed.initialize()
    return True
  if num_processes <= 1:
    return False
  if not coordinator_address:
    raise ValueError('--num_processes > 1 needs --coordinator_address (host:port of process 0)')
  if not 0 <= process_id < num_processes:
    raise ValueError(f'--process_id must be in [0, {num_processes}), got {process_id}')
  if jax.config.jax_platforms in (None, '', 'cpu') or 'cpu' in str(jax.config.jax_platforms):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
  return True


def initialize_from_flags() -> bool:
  """:func:`initialize` with this module's flags (after absl has parsed them)."""
  return initialize(COORDINATOR_ADDRESS.value, NUM_PROCESSES.value, PROCESS_ID.value, DISTRIBUTED_AUTO.value)
