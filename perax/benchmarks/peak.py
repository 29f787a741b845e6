"""What the local accelerator can do: a measured matmul peak and a measured memory bandwidth.

Model FLOP utilisation (MFU) and bandwidth-bound step times are quoted against these measurements
on the same device, not against a datasheet, so the fractions mean the same on any machine:

  peak = matmul_peak(jnp.bfloat16)      # FLOP/s of a large square matmul, best of a few runs
  bandwidth = memory_bandwidth()        # bytes/s read + written by an elementwise pass
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Measured:
  """One measured rate.

  Attributes:
    per_second: the rate (FLOP/s or bytes/s), best over the repeats.
    seconds: the best wall time of one call.
    work: FLOPs or bytes of one call.
    device: the device's kind, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu'.
  """

  per_second: float
  seconds: float
  work: float
  device: str


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
  """Best wall time of ``fn()`` (blocked until its outputs are ready) over ``repeats`` calls, after
  one untimed call that compiles and warms up."""
  jax.block_until_ready(fn())
  best = float('inf')
  for _ in range(max(repeats, 1)):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def device_kind(device: jax.Device | None = None) -> str:
  device = jax.devices()[0] if device is None else device
  return str(getattr(device, 'device_kind', device.platform))


def matmul_peak(dtype=jnp.bfloat16, size: int = 8192, repeats: int = 5, chain: int = 4) -> Measured:
  """FLOP/s of ``chain`` dependent ``[size, size] @ [size, size]`` matmuls in one program.

  Each matmul is ``2 * size**3`` FLOPs; chaining several inside one jitted call hides the launch
  overhead. Accumulation is in float32 and the result is cast back to ``dtype``.
  """
  keys = jax.random.split(jax.random.key(0), 2)
  a = jax.random.normal(keys[0], (size, size), dtype)
  b = (jax.random.normal(keys[1], (size, size), jnp.float32) / size**0.5).astype(dtype)

  @jax.jit
  def product(a, b):
    for _ in range(chain):
      a = jnp.matmul(a, b, preferred_element_type=jnp.float32).astype(dtype)
    return a

  seconds = best_seconds(lambda: product(a, b), repeats)
  flops = 2.0 * size**3 * chain
  return Measured(flops / seconds, seconds, flops, device_kind())


def memory_bandwidth(num_bytes: int = 2**30, repeats: int = 5) -> Measured:
  """Bytes/s of an elementwise pass that reads and writes a ``num_bytes`` float32 array once each
  (the work counted is ``2 * num_bytes``)."""
  x = jnp.ones((num_bytes // 4,), jnp.float32)
  scale = jax.jit(lambda x: x * 1.0001)
  seconds = best_seconds(lambda: scale(x), repeats)
  work = 2.0 * (num_bytes // 4) * 4
  return Measured(work / seconds, seconds, work, device_kind())
