"""The prepared GPU check: 7B-shaped random bf16 weights, one GPU, under 10 minutes, one JSON file.

  python launch/gpu_check.py --out=gpu_check.json            # on a machine with one H100 / H200
  python launch/gpu_check.py --tiny --out=/tmp/check.json    # CPU smoke test, seconds

Measures, on Qwen2-Audio-7B-Instruct's shapes with random weights built on the device (no
download; needs JAX with CUDA, torch and transformers):

- votes/s of perax's sampler against Hugging Face ``generate(num_return_sequences=K)``;
- prefill MFU: XLA's FLOPs of one prefill over its time, as a fraction of a bf16 matmul peak
  measured on the same device;
- the decode step's time against its memory-bandwidth limit (its argument bytes, weights and KV
  cache, over the measured bandwidth);
- the LoRA training step's MFU.

Each section (perax.benchmarks.gpu_check.SECTIONS) runs in its own process with its own timeout
(gpu_check.SECTION_TIMEOUTS_S or --timeout_s; the whole run within --budget_s, later sections are
skipped once it is spent), so a crash, an out-of-memory or a hang costs one section, and the JSON
file is rewritten after every section: ``{'settings', 'sections': {name:
{'status': ok | error | timeout | skipped, 'seconds', 'figures' or 'error'}}, 'summary'}``.
--isolate=false runs the sections in this process instead (no timeouts; for the CPU smoke test).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from perax.core import cli, jsonio

_TINY = flags.DEFINE_bool('tiny', False, 'Tiny shapes on CPU: a smoke test of every section.')
_OUT = flags.DEFINE_string('out', 'gpu_check.json', 'The JSON file of results (rewritten per section).')
_CONFIG = flags.DEFINE_string('config', None, 'HF config.json of the model; default Qwen2-Audio-7B-Instruct.')
_SECTIONS = flags.DEFINE_list('sections', None, 'Sections to run, in order; default all.')
_TIMEOUT = flags.DEFINE_float(
  'timeout_s',
  0.0,
  'Wall-clock limit of each section; 0: per-section defaults (gpu_check.SECTION_TIMEOUTS_S).',
)
_BUDGET = flags.DEFINE_float('budget_s', 560.0, 'Wall-clock limit of the whole check.')
_ISOLATE = flags.DEFINE_bool('isolate', True, 'Run each section in its own process, with a timeout.')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Clips per batch.')
_VOTES = flags.DEFINE_integer('votes', 10, 'Votes per clip.')
_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 8, 'Tokens per vote (forced on both sides).')
_CLIP_SECONDS = flags.DEFINE_float('clip_seconds', 10.0, 'Clip duration.')
_TRAIN_BATCH = flags.DEFINE_integer('train_batch_size', 4, 'Examples per LoRA training step.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per measurement (best reported).')
# Internal: one section in a child process.
_SECTION = flags.DEFINE_string('section', None, 'Internal: run only this section.')
_SECTION_SETTINGS = flags.DEFINE_string('section_settings', None, 'Internal: the settings as JSON.')
_SECTION_OUT = flags.DEFINE_string('section_out', None, 'Internal: where the section writes its figures.')

STDERR_TAIL = 2000


def _settings():
  from perax.benchmarks import gpu_check, plan  # pylint: disable=import-outside-toplevel

  if _TINY.value:
    hf_config = gpu_check.TINY_HF_CONFIG
  else:
    with open(_CONFIG.value or plan.QWEN2_AUDIO_7B, encoding='utf-8') as f:
      hf_config = json.load(f)
  tiny = _TINY.value
  return gpu_check.CheckSettings(
    hf_config=hf_config,
    batch_size=2 if tiny else _BATCH.value,
    votes_per_clip=3 if tiny else _VOTES.value,
    new_tokens=3 if tiny else _NEW_TOKENS.value,
    clip_seconds=2.5 if tiny else _CLIP_SECONDS.value,
    train_batch_size=2 if tiny else _TRAIN_BATCH.value,
    dtype='bfloat16',
    tiny=tiny,
    repeats=1 if tiny else _REPEATS.value,
  )


def _run_child(name: str, settings, timeout: float) -> dict:
  """Runs one section in a child process; returns its entry (status, figures or error)."""
  with tempfile.TemporaryDirectory() as scratch:
    out = os.path.join(scratch, 'section.json')
    command = [
      sys.executable,
      os.path.abspath(__file__),
      f'--section={name}',
      f'--section_settings={json.dumps(settings.to_json())}',
      f'--section_out={out}',
    ]
    try:
      done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
      return {'status': 'timeout', 'error': f'no result within {timeout:.0f} s'}
    if done.returncode or not os.path.exists(out):
      return {'status': 'error', 'error': f'exit code {done.returncode}: {done.stderr[-STDERR_TAIL:]}'}
    return {'status': 'ok', 'figures': jsonio.read_json(out)}


def _run_here(name: str, settings) -> dict:
  from perax.benchmarks import gpu_check  # pylint: disable=import-outside-toplevel

  try:
    return {'status': 'ok', 'figures': gpu_check.SECTION_FUNCTIONS[name](settings)}
  except Exception as error:  # a failed section is recorded, and the others still run
    return {'status': 'error', 'error': f'{type(error).__name__}: {error}'}


def _section_line(name: str, entry: dict) -> str:
  head = f'{name}: {entry["status"]} in {entry["seconds"]:.1f} s'
  if entry['status'] != 'ok':
    return f'{head}: {entry.get("error", "")[-300:]}'
  shown = {k: v for k, v in entry['figures'].items() if isinstance(v, (int, float)) and v is not None}
  return head + ': ' + ', '.join(f'{k}={v:.4g}' for k, v in list(shown.items())[:8])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _TINY.value or (_SECTION_SETTINGS.value and json.loads(_SECTION_SETTINGS.value).get('tiny')):
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  from perax.benchmarks import gpu_check  # pylint: disable=import-outside-toplevel

  if _SECTION.value:  # child: one section, figures to --section_out
    settings = gpu_check.CheckSettings.from_json(json.loads(_SECTION_SETTINGS.value))
    jsonio.write_json(_SECTION_OUT.value, gpu_check.SECTION_FUNCTIONS[_SECTION.value](settings))
    return

  settings = _settings()
  names = _SECTIONS.value or list(gpu_check.SECTIONS)
  unknown = sorted(set(names) - set(gpu_check.SECTIONS))
  if unknown:
    raise app.UsageError(f'unknown sections {unknown}; choose from {list(gpu_check.SECTIONS)}')
  result = {'settings': settings.to_json(), 'sections': {}, 'summary': {}}
  started = time.perf_counter()
  for name in names:
    left = _BUDGET.value - (time.perf_counter() - started)
    section_start = time.perf_counter()
    if left < 5:
      entry = {'status': 'skipped', 'error': f'the {_BUDGET.value:.0f} s budget was spent'}
    elif _ISOLATE.value:
      limit = _TIMEOUT.value or gpu_check.SECTION_TIMEOUTS_S[name]
      entry = _run_child(name, settings, min(limit, left))
    else:
      entry = _run_here(name, settings)
    entry['seconds'] = time.perf_counter() - section_start
    result['sections'][name] = entry
    result['summary'] = gpu_check.summary(result['sections'])
    jsonio.write_json(_OUT.value, result)
    print(_section_line(name, entry), flush=True)
  for line in gpu_check.summary_lines(result):
    print(line)
  print(f'results in {_OUT.value} ({time.perf_counter() - started:.0f} s)')


if __name__ == '__main__':
  cli.run(main)
