"""The shared table schemas and their readers."""

import json

import numpy as np
import pytest

from perax.core.errors import InputError, SkipCounter, handle
from perax.data import tables


def test_utterances_fill_defaults_and_keep_extra_columns():
  table = tables.utterances_table(
    [
      dict(utt_id='a', speaker='s1', split='train', corpus='x', gender='F'),
      dict(utt_id='b', speaker='s2', split='test', corpus='x', duration_s=1.5),
    ]
  )
  assert table.column_names[: len(tables.UTTERANCE_SCHEMA)] == tables.UTTERANCE_SCHEMA.names
  rows = table.to_pylist()
  assert np.isnan(rows[0]['duration_s']) and rows[1]['duration_s'] == 1.5
  assert rows[0]['gender'] == 'F' and rows[1]['gender'] is None
  assert rows[0]['transcript'] is None


def test_repeated_utt_id_is_named():
  with pytest.raises(InputError, match="repeat utt_id 'a'"):
    tables.utterances_table([dict(utt_id='a'), dict(utt_id='a')])


def test_votes_default_weight_and_reject_unknown_source():
  votes = tables.votes_table(
    [
      dict(utt_id='a', rater='r', source='human', label='sad'),
      dict(utt_id='a', rater='q', source='synthetic', label='sad', weight=0.5),
    ]
  )
  assert tables.column(votes, 'weight').tolist() == [1.0, 0.5]
  with pytest.raises(InputError, match="source \\['bot'\\]"):
    tables.votes_table([dict(utt_id='a', rater='r', source='bot', label='sad')])


def test_parquet_roundtrip_and_comma_separated_votes(tmp_path):
  votes = tables.votes_table([dict(utt_id='a', rater='r', source='human', label='sad')])
  first = tables.write_table(votes, tmp_path / 'v1.parquet')
  second = tables.write_table(votes, tmp_path / 'v2.parquet')
  both = tables.read_votes(f'{first},{second}')
  assert both.num_rows == 2 and not list(tmp_path.glob('*.tmp-*'))


def test_jsonl_keeps_columns_missing_from_the_first_row(tmp_path):
  path = tmp_path / 'u.jsonl'
  path.write_text(json.dumps({'utt_id': 'a'}) + '\n\n' + json.dumps({'utt_id': 'b', 'speaker': 's'}) + '\n')
  table = tables.read_utterances(path)
  assert table.column('speaker').to_pylist() == [None, 's']


def test_bad_jsonl_line_is_named(tmp_path):
  path = tmp_path / 'u.jsonl'
  path.write_text('{"utt_id": "a"}\n{oops\n')
  with pytest.raises(InputError, match=r'u\.jsonl:2: invalid JSON'):
    tables.read_table(path)


def test_missing_file_and_unknown_format_are_named(tmp_path):
  with pytest.raises(InputError, match='no such file'):
    tables.read_table(tmp_path / 'absent.parquet')
  (tmp_path / 'x.xlsx').write_text('')
  with pytest.raises(InputError, match='unknown table format'):
    tables.read_table(tmp_path / 'x.xlsx')


def test_label_columns_roundtrip():
  labels = ['neutral', 'happy']
  assert tables.labels_from_columns(['utt_id'] + tables.label_columns(labels)) == labels


def test_lenient_handling_counts_and_strict_raises():
  error = InputError('bad label', path='f.csv', line=3)
  with pytest.raises(InputError, match='f.csv:3: bad label'):
    handle(error, lenient=False, skipped=None)
  skipped = SkipCounter()
  handle(error, lenient=True, skipped=skipped)
  handle(error, lenient=True, skipped=skipped)
  assert skipped.total == 2 and 'f.csv:3' in skipped.summary()


def test_input_error_is_one_line():
  error = InputError(
    "cannot read Parquet: Couldn't deserialize thrift\nDeserializing page header failed.\n", 'x.pq'
  )
  assert (
    str(error) == "x.pq: cannot read Parquet: Couldn't deserialize thrift / Deserializing page header failed."
  )
