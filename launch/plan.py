"""Will a run fit? Compiles its programs abstractly (no weights) and prints XLA's per-device figures.

  python launch/plan.py --mesh=1,8,1 --batch_size=8 --clip_seconds=10 --votes=10
  python launch/plan.py --config=ckpt/config.json --mesh=2,4,1 --device_memory_gib=80 --out=plan.json

For a Qwen2-Audio config.json (default: Qwen2-Audio-7B-Instruct's, shipped in perax/configs), a
(data, fsdp, tensor) mesh and a batch, it lowers and compiles the sampler's encode, prefill and
decode step and the training step (perax.benchmarks.plan), and prints for each the per-device
argument, temp and peak memory, XLA's FLOPs and the lower and compile times; then the KV-cache bytes
per vote, the matmul peak measured on this machine and the step time that peak allows. With
--device_memory_gib each program is marked as fitting or not.

Planning happens on this machine's devices: on CPU, the mesh's devices are virtual
(--xla_force_host_platform_device_count is set from --mesh), and the memory figures are those of
XLA's CPU backend: argument and output bytes are exact, but the CPU computes bf16 matmuls in float32
and its temp bytes for a bf16 plan can include float32 copies of the weights (up to 4 bytes per weight)
that a GPU does not make. JAX_PLATFORMS=cuda plans on the local GPUs instead. Compile times are measured with
JAX's persistent compilation cache off. --measure also runs each program on random inputs (only for
models that fit here) and prints the achieved FLOP/s as a fraction of the measured matmul peak.
"""

import math
import os

from absl import app, flags

from perax.core import cli
from perax.models import layer_stack

_CONFIG = flags.DEFINE_string(
  'config', None, 'HF config.json of the model; default: Qwen2-Audio-7B-Instruct.'
)
_MESH = flags.DEFINE_string('mesh', '1,1,1', 'Mesh sizes data,fsdp,tensor.')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Clips per sampler batch and examples per training step.')
_CLIP_SECONDS = flags.DEFINE_float('clip_seconds', 10.0, 'Clip duration in seconds.')
_VOTES = flags.DEFINE_integer('votes', 10, 'Votes per clip (decode rows per clip).')
_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 8, 'Tokens generated per vote.')
_TEXT_TOKENS = flags.DEFINE_integer('prompt_text_tokens', 64, 'Prompt tokens besides the audio tokens.')
_COMPUTE_DTYPE = flags.DEFINE_string('compute_dtype', 'bfloat16', 'Activation and matmul dtype.')
_PARAM_DTYPE = flags.DEFINE_string('param_dtype', 'bfloat16', 'Stored backbone weights (inference, frozen).')
_SCOPE = flags.DEFINE_enum('scope', 'lora', ['head', 'lora', 'full'], 'Trainable part in the train step.')
_LORA_RANK = flags.DEFINE_integer('lora_rank', 16, 'LoRA rank (scope lora).')
_MICROBATCHES = flags.DEFINE_integer('num_microbatches', 1, 'Gradient-accumulation steps per train step.')
_PROGRAMS = flags.DEFINE_list(
  'programs', ['encode', 'prefill', 'decode_step', 'train_step'], 'Programs to compile.'
)
_SCAN_LAYERS = flags.DEFINE_bool(
  'scan_layers', None, "Run the layer stacks as a scan (one compiled layer); default: the config's (true)."
)
_REMAT = flags.DEFINE_enum(
  'remat_policy', None, list(layer_stack.REMAT_POLICIES), "Layers' remat policy; default: the config's."
)
_DEVICE_GIB = flags.DEFINE_float('device_memory_gib', 0.0, 'Memory per device; > 0 prints fit verdicts.')
_MEASURE = flags.DEFINE_bool(
  'measure', False, 'Run each program on random inputs and report achieved FLOP/s.'
)
_OUT = flags.DEFINE_string('out', None, 'Write the figures to this JSON file.')

PROGRAMS = ('encode', 'prefill', 'decode_step', 'train_step')


def _mesh_shape(spec: str) -> tuple[int, int, int]:
  try:
    sizes = tuple(int(s) for s in spec.split(','))
  except ValueError as e:
    raise app.UsageError(f'--mesh {spec!r} is not three comma-separated integers') from e
  if len(sizes) != 3 or min(sizes) < 1:
    raise app.UsageError(f'--mesh {spec!r} needs three positive sizes data,fsdp,tensor')
  return sizes


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  unknown = sorted(set(_PROGRAMS.value) - set(PROGRAMS))
  if unknown:
    raise app.UsageError(f'unknown programs {unknown}; choose from {list(PROGRAMS)}')
  shape = _mesh_shape(_MESH.value)
  # JAX creates its backends lazily, at the first device query: still time to ask for virtual devices.
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  count = f'--xla_force_host_platform_device_count={math.prod(shape)}'
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {count}'.strip()

  import jax  # pylint: disable=import-outside-toplevel

  from perax.benchmarks import plan as plan_lib  # pylint: disable=import-outside-toplevel
  from perax.benchmarks import plan_report  # pylint: disable=import-outside-toplevel

  jax.config.update('jax_enable_compilation_cache', False)
  settings = plan_lib.PlanSettings(
    mesh=shape,
    batch_size=_BATCH.value,
    clip_seconds=_CLIP_SECONDS.value,
    votes_per_clip=_VOTES.value,
    new_tokens=_NEW_TOKENS.value,
    prompt_text_tokens=_TEXT_TOKENS.value,
    compute_dtype=_COMPUTE_DTYPE.value,
    param_dtype=_PARAM_DTYPE.value,
    scope=_SCOPE.value,
    lora_rank=_LORA_RANK.value,
    num_microbatches=_MICROBATCHES.value,
    scan_layers=_SCAN_LAYERS.value,
    remat_policy=_REMAT.value,
  )
  report = plan_report.run(
    _CONFIG.value or plan_lib.QWEN2_AUDIO_7B,
    settings,
    programs=tuple(_PROGRAMS.value),
    device_memory_gib=_DEVICE_GIB.value,
    measure=_MEASURE.value,
    out=_OUT.value,
  )
  for line in report['lines']:
    print(line)


if __name__ == '__main__':
  cli.run(main)
