"""perax.core: logging's one look, strict JSON, run-directory locks, settings records."""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from perax.core import jsonio, locks, log, settings_record
from perax.core.errors import InputError


def test_log_lines_have_one_look(capsys):
  log.info('hello', stage='proxies')
  log.warning('skipped 2 clips')
  err = capsys.readouterr().err.splitlines()
  assert err[0].endswith(' [proxies] hello') and len(err[0].split()[0]) == 8
  assert err[1].endswith(' warning: skipped 2 clips')


def test_jsonable_turns_nan_and_numpy_into_json():
  value = {
    'a': np.float32(1.5),
    'b': float('nan'),
    'c': (1, np.int64(2)),
    'd': np.array([np.inf, 0.0]),
    3: 'x',
  }
  assert jsonio.jsonable(value) == {'a': 1.5, 'b': None, 'c': [1, 2], 'd': [None, 0.0], '3': 'x'}
  text = jsonio.dumps({'x': math.inf})
  assert json.loads(text) == {'x': None}


def test_read_json_names_file_and_line(tmp_path):
  path = tmp_path / 'bad.json'
  path.write_text('{\n "a": 1,\n oops\n}')
  with pytest.raises(InputError, match=r'bad\.json:3'):
    jsonio.read_json(path)


def test_settings_claim_names_every_difference(tmp_path):
  path = tmp_path / 'settings.json'
  settings_record.claim(path, {'k': 3, 'seed': (1, 2)}, 'use a new out_dir')
  settings_record.claim(path, {'k': 3, 'seed': [1, 2]}, 'use a new out_dir')  # tuples equal lists
  with pytest.raises(InputError, match=r'k: recorded 3, now 4.*use a new out_dir'):
    settings_record.claim(path, {'k': 4, 'seed': (1, 2)}, 'use a new out_dir')


def test_lock_refuses_a_second_process_and_is_taken_over_after_death(tmp_path):
  holder = textwrap.dedent(f"""
      import sys, time
      from perax.core.locks import RunLock
      lock = RunLock({str(tmp_path)!r}).acquire()
      print('held', flush=True)
      sys.stdin.readline()
  """)
  proc = subprocess.Popen(
    [sys.executable, '-c', holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
  )
  try:
    assert proc.stdout.readline().strip() == 'held'
    with pytest.raises(InputError, match=rf'in use by another perax process \(pid {proc.pid}\)'):
      locks.RunLock(tmp_path).acquire()
  finally:
    proc.kill()  # dies holding the lock, as kill -9 would
    proc.wait()
  with locks.RunLock(tmp_path) as lock:  # taken over
    with locks.RunLock(tmp_path):  # re-entrant in one process
      pass
    with open(lock.path) as f:
      assert f.read().strip() == str(os.getpid())
