"""Evaluates a training run's checkpoint on its test split(s) and their DiME-Aug balanced sets.

  python launch/evaluate.py --config=configs/demo.py --workdir=runs/demo_train
  python launch/evaluate.py --config=configs/demo.py --workdir=runs/demo_train --checkpoint=latest

Writes predictions_<set>.parquet (utt_id, p_<label>, ambiguity), metrics_<set>.json (overall and per
ambiguity level) and metrics_<set>.md under --out_dir (default <workdir>/eval_<step>), and prints
the tables. The test splits are --config.data.test_splits (e.g. "('test1', 'test2')" for
MSP-Podcast); --config.data.eval_set_dirs reads the balanced sets launch/augment.py --eval_set wrote
(one per test split) instead of building them. Targets without a human vote are left out (counted)
unless --config.data.proxy_only_targets. Runs as several processes like launch/train.py. The work is
perax.train.evaluate.evaluate_checkpoint.
"""

from absl import app, flags
from ml_collections import config_flags

from perax.core import cli
from perax.train import evaluate

_CONFIG = config_flags.DEFINE_config_file('config', None, "The run's training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, "The training run's directory.", required=True)
_CHECKPOINT = flags.DEFINE_string(
  'checkpoint', 'best', "'best' (by the dev metric), 'latest', or a step number."
)
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Output directory (default <workdir>/eval_<step>).')
_BALANCED = flags.DEFINE_bool('balanced', True, 'Also evaluate the DiME-Aug balanced set of each test split.')
flags.mark_flag_as_required('config')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  which = _CHECKPOINT.value
  evaluate.evaluate_checkpoint(
    _CONFIG.value,
    _WORKDIR.value,
    which=int(which) if which.isdigit() else which,
    out_dir=_OUT_DIR.value,
    balanced=_BALANCED.value,
  )


if __name__ == '__main__':
  cli.run(main)
