"""The fit planner's report: compiles the chosen programs (perax.benchmarks.plan) and words the figures.

:func:`run` returns ``{'lines': [...], 'settings': ..., 'programs': {name: figures}, ...}`` and
writes the same as JSON when asked. Every figure is per device: memory from XLA's memory analysis,
FLOPs from its cost analysis, the ideal time of a program at the matmul peak measured on this
machine (``flops / peak``), and with ``measure`` the achieved FLOP/s on random inputs and its fraction
of that peak.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax

from perax.benchmarks import peak as peak_lib
from perax.benchmarks import plan as plan_lib
from perax.core import jsonio, log
from perax.train.model import dtype_from_name

MIB = 2**20
GIB = 2**30


def _matmul_peak(dtype: str) -> peak_lib.Measured:
  """The local matmul peak; a smaller matrix on CPU, where a large one takes seconds."""
  size = 8192 if jax.default_backend() != 'cpu' else 1024
  return peak_lib.matmul_peak(dtype_from_name(dtype), size=size, repeats=3)


def run(
  config_path: str,
  settings: plan_lib.PlanSettings,
  *,
  programs: Sequence[str] = ('encode', 'prefill', 'decode_step', 'train_step'),
  device_memory_gib: float = 0.0,
  measure: bool = False,
  out: str | None = None,
) -> dict:
  """Plans ``settings`` for the model of ``config_path`` and returns (and optionally writes) the report."""
  config = settings.model_config(plan_lib.load_config(config_path))
  mesh = plan_lib.make_mesh(settings.mesh)
  shapes = plan_lib.Shapes.for_settings(settings)
  parameters = plan_lib.count_parameters(config)
  lines = [
    f'model: {config_path}: {parameters:,} parameters; mesh data={settings.mesh[0]} '
    f'fsdp={settings.mesh[1]} tensor={settings.mesh[2]} on {jax.default_backend()} '
    f'({mesh.devices.size} devices)',
    f'shapes: {settings.clip_seconds:g} s clips -> {shapes.feature_frames} feature frames, '
    f'{shapes.audio_tokens} audio tokens, prompt bucket {shapes.prompt_length} tokens (train '
    f'{shapes.train_length}); batch {settings.batch_size} clips x {settings.votes_per_clip} votes x '
    f'{settings.new_tokens} new tokens; {settings.compute_dtype} compute, {settings.param_dtype} '
    f'weights; train scope {settings.scope}; layers '
    f'{"scanned" if config.scan_layers else "unrolled"}, remat {config.remat_policy}',
  ]
  plans = plan_lib.plan_programs(config, settings, mesh, programs)
  for name in programs:
    lines.append(plans[name].line())
    log.info(plans[name].line(), stage='plan')

  cache = plan_lib.cache_bytes(config, settings)
  lines.append(
    f'kv cache per vote ({settings.compute_dtype}): {cache["per_vote_repeated"] / MIB:.1f} MiB with the '
    f'prompt cache copied per vote, {cache["per_vote_shared"] / MIB:.1f} MiB with one prompt cache per '
    f'clip shared by its {settings.votes_per_clip} votes; per batch {cache["per_batch_repeated"] / GIB:.2f} '
    f'against {cache["per_batch_shared"] / GIB:.2f} GiB ({cache["per_token"] / MIB:.3f} MiB per token)'
  )

  if jax.default_backend() == 'cpu' and settings.compute_dtype in ('bfloat16', 'float16'):
    lines.append(
      f'note: the CPU backend computes {settings.compute_dtype} matmuls in float32, so these temp figures may '
      'include float32 copies of the weights (up to 4 bytes per weight) that a GPU compile does not make'
    )
  fits = {}
  if device_memory_gib > 0:
    for name in programs:
      fits[name] = plans[name].peak_bytes <= device_memory_gib * GIB
    verdicts = ', '.join(f'{name} {"yes" if ok else "NO"}' for name, ok in fits.items())
    lines.append(f'fits in {device_memory_gib:g} GiB per device: {verdicts}')

  peak = _matmul_peak(settings.compute_dtype)
  lines.append(
    f'matmul peak measured on {peak.device} ({settings.compute_dtype}): {peak.per_second / 1e12:.3f} TFLOP/s'
  )
  figures = {name: plans[name].to_json() for name in programs}
  for name in programs:
    flops = plans[name].flops
    if flops:
      figures[name]['ideal_seconds_at_peak'] = flops / peak.per_second
  if measure:
    for name in programs:
      seconds = plan_lib.measure(plans[name])
      figures[name]['measured_seconds'] = seconds
      flops = plans[name].flops
      achieved = flops / seconds if flops else None
      figures[name]['achieved_flops_per_s'] = achieved
      figures[name]['fraction_of_peak'] = None if achieved is None else achieved / peak.per_second
      fraction = 'n/a' if achieved is None else f'{100 * achieved / peak.per_second:.1f}%'
      lines.append(
        f'{name} measured: {seconds * 1e3:.2f} ms per call, '
        f'{(achieved or 0) / 1e9:.2f} GFLOP/s per device = {fraction} of the matmul peak'
      )
  report = {
    'config': config_path,
    'parameters': parameters,
    'backend': jax.default_backend(),
    'settings': dataclasses.asdict(settings),
    'shapes': dataclasses.asdict(shapes),
    'programs': figures,
    'kv_cache_bytes': cache,
    'fits': fits,
    'device_memory_gib': device_memory_gib,
    'matmul_peak': dataclasses.asdict(peak),
    'lines': lines,
  }
  if out:
    jsonio.write_json(out, report)
  return report
