"""Real studies end to end through launch/pipeline.py on the tiny checkpoint, as a researcher runs them.

IEMOCAP (all five sessions, every consensus code) runs the 4-class protocol with leave-one-session-out
folds; MSP-Podcast (Train / Development / Test1 / Test2 / Test3, Unknown speakers) runs on its own
splits. Both corpora are written in their real on-disk layouts by tests/real_corpora.py, and what the
runs train on and score is checked against the corpus files read independently here.
"""

import csv
import os
import pathlib
import subprocess
import sys

import pytest
from real_corpora import write_iemocap, write_msp_podcast

from perax.data import tables

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL_FLAGS = [
  '--votes_per_utterance=2',
  '--max_new_tokens=2',
  '--train_steps=3',
  '--bootstrap=20',
  '--sparse_k=1',
  '--repeats=1',
]
FOUR_CLASS_CODES = {'neu', 'hap', 'exc', 'sad', 'ang'}


def _launch(*flags):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  done = subprocess.run(
    [sys.executable, str(ROOT / 'launch' / 'pipeline.py'), *flags, *SMALL_FLAGS],
    capture_output=True,
    text=True,
    env=env,
    timeout=1200,
  )
  assert done.returncode == 0, done.stderr[-4000:]
  return done


def _scored_ids(out_dir: pathlib.Path) -> set[str]:
  """utt_ids of every plain (not balanced) evaluation set the run scored, over folds and references."""
  ids = set()
  for path in out_dir.rglob('predictions_*.parquet'):
    if not path.stem.endswith('_balanced'):
      ids |= set(tables.column(tables.read_table(str(path)), 'utt_id'))
  return ids


def _iemocap_four_class(root: pathlib.Path) -> dict[str, str]:
  """turn -> session of every utterance whose consensus code is in the 4-class protocol."""
  turns = {}
  for path in root.glob('Session*/dialog/EmoEvaluation/*.txt'):
    for line in path.read_text(encoding='latin-1').splitlines():
      if line.startswith('['):
        _, turn, code, _ = line.split('\t')
        if code in FOUR_CLASS_CODES:
          turns[turn] = path.parts[-4]
  return turns


@pytest.fixture(scope='module')
def iemocap(tmp_path_factory):
  root = write_iemocap(tmp_path_factory.mktemp('iemocap') / 'IEMOCAP_full_release').root
  out = tmp_path_factory.mktemp('iemocap_run')
  _launch('--corpus=iemocap', f'--corpus_path={root}', '--folds=Session1,Session5', f'--out_dir={out}')
  return root, out


def test_iemocap_trains_and_scores_protocol_utterances_only(iemocap):
  root, out = iemocap
  protocol = _iemocap_four_class(root)
  kept = set(tables.column(tables.read_utterances(str(out / 'data' / 'utterances.parquet')), 'utt_id'))
  assert kept and kept <= set(protocol)  # xxx, fru, oth, sur, ... never enter the study
  scored = _scored_ids(out)
  assert scored and scored <= kept
  for fold in ('Session1', 'Session5'):  # each fold tests on its own session
    fold_scored = _scored_ids(out / 'folds' / fold)
    assert fold_scored and {protocol[u] for u in fold_scored} == {fold}


def test_iemocap_folds_share_one_proxy_run_and_report_mean_and_std(iemocap):
  _, out = iemocap
  assert (out / 'proxies' / 'score' / 'scores.parquet').is_file()
  assert not list((out / 'folds').rglob('scores.parquet'))  # proxies are generated once, not per fold
  report = (out / 'report.md').read_text(encoding='utf-8')
  assert 'mean ± std' in report
  assert 'against the dense reference' not in report  # IEMOCAP has none


@pytest.fixture(scope='module')
def msp(tmp_path_factory):
  build = write_msp_podcast(tmp_path_factory.mktemp('msp') / 'MSP-Podcast')
  out = tmp_path_factory.mktemp('msp_run')
  _launch('--corpus=msp_podcast', f'--corpus_path={build.root}', f'--out_dir={out}')
  return build.root, out


def test_msp_podcast_scores_test1_without_x_and_o(msp):
  root, out = msp
  with open(root / 'Labels' / 'labels_consensus.csv', newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  test1 = {r['FileName'] for r in rows if r['Split_Set'] == 'Test1' and r['EmoClass'] not in ('X', 'O', '')}
  scored = _scored_ids(out)
  assert scored and scored <= test1
  assert {p.parent.name for p in out.rglob('predictions_*.parquet')} == {'test1'}
