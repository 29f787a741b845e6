"""Ctrl-C and SIGTERM in launchers: one line naming what was saved and how to resume, exit 130 / 143.

Real processes receive real signals: a minimal launcher on perax.core.cli.run, then the pipeline and
the training launchers at a moment chosen by what they have logged.
"""

import os
import pathlib
import signal
import subprocess
import sys
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 300

MINIMAL = """
import sys, time
from absl import flags
from perax.core import cli
flags.DEFINE_string('out_dir', None, 'where')

def main(argv):
  print('ready', file=sys.stderr, flush=True)
  while True:
    time.sleep(0.05)

cli.run(main)
"""


def start(args, cwd=ROOT):
  env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED='1')
  process = subprocess.Popen(
    [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
  )
  watchdog = threading.Timer(TIMEOUT_S, process.kill)
  watchdog.start()
  return process, watchdog


def signal_after(process, watchdog, marker: str, signum: int) -> tuple[int, list[str]]:
  """Sends ``signum`` once an output line contains ``marker``; returns (exit code, output lines)."""
  lines = []
  for line in process.stdout:
    lines.append(line.rstrip('\n'))
    if marker in line:
      process.send_signal(signum)
      break
  lines += process.stdout.read().splitlines()
  code = process.wait()
  watchdog.cancel()
  return code, lines


@pytest.mark.parametrize(
  ('signum', 'code', 'name'), [(signal.SIGINT, 130, 'Ctrl-C'), (signal.SIGTERM, 143, 'SIGTERM')]
)
def test_a_launcher_interrupted_prints_one_line_and_exits_128_plus_the_signal(tmp_path, signum, code, name):
  script = tmp_path / 'launcher.py'
  script.write_text(MINIMAL)
  process, watchdog = start([str(script), f'--out_dir={tmp_path / "out"}'])
  exit_code, lines = signal_after(process, watchdog, 'ready', signum)
  assert exit_code == code
  assert lines[1:] == [
    f'interrupted ({name}): everything finished in --out_dir={tmp_path / "out"} is kept (files are written '
    f'atomically); to resume, rerun the same command: python {script} --out_dir={tmp_path / "out"}'
  ]


def test_the_pipeline_interrupted_names_its_finished_stages(tmp_path):
  out = tmp_path / 'run'
  process, watchdog = start([str(ROOT / 'launch' / 'pipeline.py'), f'--out_dir={out}', '--train_steps=2'])
  exit_code, lines = signal_after(process, watchdog, '[checkpoint] running', signal.SIGINT)
  assert exit_code == 130
  assert not any('Traceback' in line for line in lines)
  last = lines[-1]
  assert last.startswith(
    f'interrupted (Ctrl-C): finished stages kept in {out}: prepare; interrupted: checkpoint'
  )
  assert last.endswith(
    f'to resume, rerun the same command: python {ROOT / "launch" / "pipeline.py"} --out_dir={out} --train_steps=2'
  )
  assert (out / 'stages' / 'prepare.json').is_file()


def test_training_terminated_says_how_to_resume(tmp_path):
  workdir = tmp_path / 'train'
  args = [
    str(ROOT / 'launch' / 'train.py'),
    f'--config={ROOT / "perax" / "configs" / "demo.py"}',
    f'--workdir={workdir}',
  ]
  process, watchdog = start(args)
  exit_code, lines = signal_after(process, watchdog, 'mesh', signal.SIGTERM)
  assert exit_code == 143
  assert not any('Traceback' in line for line in lines)
  assert lines[-1].startswith(f'interrupted (SIGTERM): everything finished in --workdir={workdir} is kept')
  assert 'to resume, rerun the same command: python ' in lines[-1]
