"""Small EmoDB tables for pipeline and DiME-Aug tests: real audio, one-hot intended-emotion targets."""

import numpy as np
import pyarrow as pa

from perax.data.tables import utterances_table

LABELS = ('neutral', 'happy', 'sad', 'angry')
_LETTERS = {'W': 'angry', 'F': 'happy', 'T': 'sad', 'N': 'neutral'}  # EmoDB's emotion letters


def emodb_tables(emodb_dir, max_files: int) -> tuple[pa.Table, pa.Table]:
  """(utterances, distributions) of the first ``max_files`` EmoDB wavs whose emotion is in LABELS.

  All rows are in the train split; speaker is the file name's first two digits.
  """
  wavs = sorted((emodb_dir / 'wav').glob('*.wav'))[:max_files]
  chosen = [w for w in wavs if w.stem[5] in _LETTERS]
  utterances = utterances_table(
    [
      dict(utt_id=w.stem, audio_path=str(w), speaker=w.stem[:2], split='train', corpus='emodb')
      for w in chosen
    ]
  )
  p = np.asarray([[float(_LETTERS[w.stem[5]] == c) for c in LABELS] for w in chosen])
  distributions = pa.table(
    {'utt_id': [w.stem for w in chosen], **{f'p_{c}': p[:, k] for k, c in enumerate(LABELS)}}
  )
  return utterances, distributions
