"""Issue 14 defects of the data layer, one test each: bad input is an InputError naming file and line
(or item), never a traceback and never silently accepted; ``lenient`` skips and counts it instead."""

import json
import pathlib
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile

from perax.core.errors import InputError, SkipCounter
from perax.data import audio, features, tables
from perax.data.corpora import audio_info, crema_d, emodb, manifest, prepare
from perax.data.corpora.csv_rows import read_csv_rows

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
LATIN1_E = b'\xe9'  # 'é' in Latin-1: never valid UTF-8 on its own


def _wav(path, seconds, sr=16000, subtype='PCM_16', samples=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  if samples is None:
    samples = 0.1 * np.sin(np.arange(int(seconds * sr)) * 0.05)
  soundfile.write(path, np.asarray(samples, dtype=np.float32), sr, subtype=subtype, format='WAV')
  return path


def _jsonl(path, rows):
  path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
  return path


# ----------------------------------------------------------------------------------------------
# Defect 5: tracebacks from JSONL manifests.


def test_jsonl_manifest_with_a_latin1_byte_names_file_and_line(tmp_path):
  path = tmp_path / 'utterances.jsonl'
  lines = [json.dumps({'utt_id': f'u{i}', 'transcript': 'cafe'}).encode() for i in range(5)]
  lines[2] = lines[2].replace(b'cafe', b'caf' + LATIN1_E)
  path.write_bytes(b'\n'.join(lines) + b'\n')
  with pytest.raises(InputError, match=r'utterances\.jsonl:3: not utf-8 text: byte 0xe9') as error:
    manifest.load(path)
  assert (error.value.path, error.value.line) == (str(path), 3)
  with pytest.raises(InputError, match=r'utterances\.jsonl:3: not utf-8'):
    tables.read_table(path)
  lenient = manifest.load(path, lenient=True)
  assert tables.column(lenient.utterances, 'utt_id').tolist() == ['u0', 'u1', 'u3', 'u4']
  assert lenient.skipped.total == 1 and 'utterances.jsonl:3' in lenient.skipped.summary()


def test_jsonl_manifest_column_mixing_int_and_str_names_file_and_line(tmp_path):
  path = _jsonl(
    tmp_path / 'utterances.jsonl',
    [
      {'utt_id': 'a', 'age': 30},
      {'utt_id': 'b'},
      {'utt_id': 'c', 'age': 'thirty'},
      {'utt_id': 'd', 'age': 41},
    ],
  )
  with pytest.raises(InputError, match=r"utterances\.jsonl:3: column 'age' holds str 'thirty'") as error:
    manifest.load(path)
  assert error.value.line == 3
  with pytest.raises(InputError, match=r"utterances\.jsonl:3: column 'age'"):
    tables.read_utterances(path)
  lenient = manifest.load(path, lenient=True)
  assert lenient.utterances.column('age').to_pylist() == [30, None, 41]
  assert lenient.skipped.total == 1


def test_votes_jsonl_column_mixing_types_names_the_line(tmp_path):
  utterances = _jsonl(tmp_path / 'utterances.jsonl', [{'utt_id': 'a'}])
  votes = _jsonl(
    tmp_path / 'votes.jsonl',
    [
      {'utt_id': 'a', 'rater': 'r1', 'label': 'sad', 'seen': [1]},
      {'utt_id': 'a', 'rater': 'r2', 'label': 'sad', 'seen': 'x'},
    ],
  )
  with pytest.raises(InputError, match=r"votes\.jsonl:2: column 'seen'"):
    manifest.load(utterances, votes=votes)


# ----------------------------------------------------------------------------------------------
# Defect 6: an undecodable byte is reported at its own line.


def _tabulated_votes(path, rows: int, bad_line: int | None = None):
  """A CREMA-D tabulatedVotes.csv in the real 27-column layout with ``rows`` voice rows."""
  header, first = (FIXTURES / 'crema_d' / 'tabulatedVotes.csv').read_bytes().split(b'\n')[:2]
  tail = first.split(b',', 9)[9]  # agreement, emoVote, means...: long lines, as in the release
  actors, sentences = range(1001, 1092), sorted(crema_d.SENTENCES)
  lines = [header]
  for i in range(rows):
    clip = f'{actors[i % len(actors)]}_{sentences[i // len(actors) % len(sentences)]}_NEU_XX'
    lines.append(f'"1{i:05d}",0,0,0,1,10,0,"{clip}",11,'.encode() + tail)
  if bad_line is not None:
    lines[bad_line - 1] = lines[bad_line - 1].replace(b'"N"', b'"N' + LATIN1_E + b'"')
    assert LATIN1_E in lines[bad_line - 1]
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b'\n'.join(lines) + b'\n')
  return path


@pytest.mark.parametrize('bad_line', [2, 3, 4, 5, 6, 7, 200])
def test_crema_d_bad_byte_is_reported_at_its_line(tmp_path, bad_line):
  _tabulated_votes(tmp_path / 'crema' / crema_d.VOTES_FILE, 260, bad_line)
  with pytest.raises(InputError, match=r'tabulatedVotes\.csv:(\d+): not utf-8-sig text') as error:
    crema_d.load(tmp_path / 'crema')
  assert error.value.line == bad_line
  lenient = crema_d.load(tmp_path / 'crema', lenient=True)
  assert lenient.utterances.num_rows == 259 and lenient.skipped.total == 1
  assert f'tabulatedVotes.csv:{bad_line}:' in lenient.skipped.summary()


def test_csv_rows_line_numbers_survive_quoted_newlines_and_cr_endings(tmp_path):
  path = tmp_path / 'x.csv'
  path.write_bytes(b'a,b\r\n1,"two\r\nlines"\r\n3,4\r5,' + LATIN1_E + b'\n7,8\n')
  with pytest.raises(InputError) as error:
    list(read_csv_rows(path, ('a', 'b'), multiline=True))
  assert error.value.line == 5


@pytest.mark.parametrize(
  'text,multiline,reason,second',
  [
    ('a,b\n1,"oops\n2,x\n3,y\n', True, 'malformed CSV: unexpected end of data', 'x'),
    ('a,b\n1,"oops\n2,x"\n3,y\n', False, 'a quoted field holds a line break', 'x"'),
  ],
)
def test_an_unclosed_quote_costs_one_line_when_lenient(tmp_path, text, multiline, reason, second):
  path = tmp_path / 'x.csv'
  path.write_text(text)
  with pytest.raises(InputError, match=rf'x\.csv:2: {reason}'):
    list(read_csv_rows(path, ('a', 'b'), multiline=multiline))
  skipped = SkipCounter()
  rows = list(read_csv_rows(path, ('a', 'b'), lenient=True, skipped=skipped, multiline=multiline))
  assert rows == [(3, {'a': '2', 'b': second}), (4, {'a': '3', 'b': 'y'})] and skipped.total == 1


def test_quoted_line_breaks_are_kept_where_allowed(tmp_path):
  path = tmp_path / 'x.csv'
  path.write_text('a,b\n1,"two\nlines"\n3,"a ""quote"""\n')
  rows = list(read_csv_rows(path, ('a', 'b'), multiline=True))
  assert rows == [(2, {'a': '1', 'b': 'two\nlines'}), (4, {'a': '3', 'b': 'a "quote"'})]
  with pytest.raises(InputError, match=r'x\.csv:2: a quoted field holds a line break'):
    list(read_csv_rows(path, ('a', 'b')))


# ----------------------------------------------------------------------------------------------
# Defect 8: bad values accepted silently.


@pytest.mark.parametrize(
  'start,end,reason',
  [
    ('2.0', '1.0', 'end_s 1.0 is not after start_s 2.0'),
    ('1.0', '1.0', 'end_s 1.0 is not after start_s 1.0'),
    ('-1.0', '1.0', 'start_s -1.0 is negative'),
  ],
)
def test_manifest_refuses_segments_without_positive_duration(tmp_path, start, end, reason):
  path = tmp_path / 'utterances.csv'
  path.write_text(f'utt_id,start_s,end_s\nok,0.0,1.0\nbad,{start},{end}\n')
  with pytest.raises(InputError, match=re.escape(reason)) as error:
    manifest.load(path)
  assert error.value.line == 3
  lenient = manifest.load(path, lenient=True)
  assert tables.column(lenient.utterances, 'utt_id').tolist() == ['ok'] and lenient.skipped.total == 1


def test_manifest_refuses_a_nan_vote_weight_and_keeps_missing_as_one(tmp_path):
  utterances = _jsonl(tmp_path / 'utterances.jsonl', [{'utt_id': 'a'}])
  votes = tmp_path / 'votes.csv'
  votes.write_text('utt_id,rater,label,weight\na,r1,sad,\na,r2,sad,nan\n')
  with pytest.raises(InputError, match=r'votes\.csv:3: weight nan is outside \(0, 1\]'):
    manifest.load(utterances, votes=votes)
  jsonl = tmp_path / 'votes.jsonl'
  jsonl.write_text('{"utt_id": "a", "rater": "r1", "label": "sad", "weight": NaN}\n')
  with pytest.raises(InputError, match=r'votes\.jsonl:1: weight nan'):
    manifest.load(utterances, votes=jsonl)
  lenient = manifest.load(utterances, votes=votes, lenient=True)
  assert tables.column(lenient.votes, 'weight').tolist() == [1.0] and lenient.skipped.total == 1


def test_votes_table_refuses_nan_weights_and_fills_missing_ones(tmp_path):
  with pytest.raises(InputError, match=r"item 'b'.*vote weight nan"):
    tables.votes_table(
      {
        'utt_id': ['a', 'b'],
        'rater': ['r', 'r'],
        'source': ['human'] * 2,
        'label': ['sad'] * 2,
        'weight': [1.0, np.nan],
      }
    )
  filled = tables.votes_table(
    {
      'utt_id': ['a', 'b'],
      'rater': ['r', 'r'],
      'source': ['human'] * 2,
      'label': ['sad'] * 2,
      'weight': [None, 0.5],
    }
  )
  assert tables.column(filled, 'weight').tolist() == [1.0, 0.5]
  no_column = tables.votes_table({'utt_id': ['a'], 'rater': ['r'], 'source': ['human'], 'label': ['sad']})
  assert tables.column(no_column, 'weight').tolist() == [1.0]
  path = tmp_path / 'votes.csv'
  path.write_text('utt_id,rater,source,label,weight\na,r,human,sad,nan\n')
  with pytest.raises(InputError, match=r'votes\.csv.*vote weight nan'):
    tables.read_votes(path)


def test_a_repeated_human_vote_is_refused(tmp_path):
  utterances = _jsonl(tmp_path / 'utterances.jsonl', [{'utt_id': 'a'}])
  votes = tmp_path / 'votes.csv'
  votes.write_text(
    'utt_id,rater,label,weight,source\na,r1,sad,0.5,\na,r1,happy,0.5,\na,r1,sad,,\na,q,sad,,synthetic\na,q,sad,,synthetic\n'
  )
  with pytest.raises(
    InputError, match=r"votes\.csv:4: human rater 'r1' votes again for 'a': weights sum to 2"
  ):
    manifest.load(utterances, votes=votes)
  lenient = manifest.load(utterances, votes=votes, lenient=True)
  assert lenient.votes.num_rows == 4 and lenient.skipped.total == 1


@pytest.mark.parametrize('typo', ['tain', 'Tarin', 'trian', 'tset'])
def test_split_typos_are_refused_with_a_suggestion(tmp_path, typo):
  path = tmp_path / 'utterances.csv'
  path.write_text(f'utt_id,split\na,train\nb,{typo}\nc,test\n')
  expected = 'test' if typo == 'tset' else 'train'
  with pytest.raises(
    InputError, match=rf"utterances\.csv:3: unknown split '{typo}' .*did you mean '{expected}'"
  ):
    manifest.load(path)
  with pytest.raises(InputError, match=rf"item 'b': unknown split '{typo}'"):
    tables.utterances_table([{'utt_id': 'a', 'split': 'train'}, {'utt_id': 'b', 'split': typo}])
  lenient = manifest.load(path, lenient=True)
  assert (
    tables.column(lenient.utterances, 'split').tolist() == ['train', 'test'] and lenient.skipped.total == 1
  )


def test_split_names_of_corpora_map_to_perax_names():
  assert [tables.canonical_split(s) for s in ('Train', 'Development', 'Test1', 'test3', 'dev')] == [
    'train',
    'dev',
    'test1',
    'test3',
    'dev',
  ]
  assert set(tables.KNOWN_SPLITS) >= {'train', 'dev', 'test', 'test1', 'test2', 'test3'}


def test_zero_frame_wav_is_refused_at_prepare(tmp_path):
  _wav(tmp_path / 'audio' / 'ok.wav', 0.5)
  _wav(tmp_path / 'audio' / 'empty.wav', 0.0)
  path = tmp_path / 'utterances.csv'
  path.write_text('utt_id,audio_path\nok,audio/ok.wav\nempty,audio/empty.wav\n')
  with pytest.raises(InputError, match=r'utterances\.csv:3: audio file .*empty\.wav: audio has no samples'):
    prepare('manifest', path, tmp_path / 'out', echo=lambda line: None)
  paths = prepare('manifest', path, tmp_path / 'out', lenient=True, echo=lambda line: None)
  assert tables.column(tables.read_utterances(paths['utterances']), 'utt_id').tolist() == ['ok']
  with pytest.raises(InputError, match='audio has no samples'):
    audio_info.audio_duration(tmp_path / 'audio' / 'empty.wav')


def test_zero_frame_wav_in_emodb_is_skipped_and_counted_when_lenient(tmp_path):
  root = tmp_path / 'emodb'
  root.mkdir()
  shutil.copy(FIXTURES / 'emodb' / 'perception.csv', root)
  names = [line.split(',')[0] for line in (root / 'perception.csv').read_text().splitlines()[1:] if line]
  for name in names:
    _wav(root / 'wav' / name, 0.0 if name == names[0] else 0.3)
  with pytest.raises(InputError, match='audio has no samples'):
    emodb.load(root)
  lenient = emodb.load(root, lenient=True)
  assert lenient.utterances.num_rows == len(names) - 1 and lenient.skipped.total == 1


def test_prepare_warns_about_clips_over_30_seconds(tmp_path, capsys):
  over = features.MAX_SECONDS + 15
  _wav(tmp_path / 'audio' / 'long.wav', over, sr=1000)
  _wav(tmp_path / 'audio' / 'short.wav', 2.0, sr=1000)
  path = tmp_path / 'utterances.csv'
  path.write_text('utt_id,audio_path\nlong,audio/long.wav\nshort,audio/short.wav\n')
  prepare('manifest', path, tmp_path / 'out', echo=lambda line: None)
  err = capsys.readouterr().err
  assert f'warning: 1 of 2 utterances are longer than 30 s (longest: long, {over:.1f} s)' in err
  assert audio_info.long_clips_warning(tables.utterances_table([{'utt_id': 'a', 'duration_s': 30.0}])) is None


# ----------------------------------------------------------------------------------------------
# Defect 9: consistent lenient handling.


def test_crema_d_corrupt_audio_wav_is_skipped_and_counted_when_lenient(tmp_path):
  root = tmp_path / 'crema'
  root.mkdir()
  shutil.copy(FIXTURES / 'crema_d' / 'tabulatedVotes.csv', root)
  _wav(root / 'AudioWAV' / '1001_IEO_NEU_XX.wav', 0.5)
  (root / 'AudioWAV' / '1001_IEO_ANG_MD.wav').write_bytes(b'RIFF\x00\x00not a wav at all')
  with pytest.raises(InputError, match=r'1001_IEO_ANG_MD\.wav: cannot read audio header'):
    crema_d.load(root)
  lenient = crema_d.load(root, lenient=True)
  audio_of = dict(
    zip(tables.column(lenient.utterances, 'utt_id'), tables.column(lenient.utterances, 'audio_path'))
  )
  assert audio_of['1001_IEO_NEU_XX'].endswith('1001_IEO_NEU_XX.wav') and audio_of['1001_IEO_ANG_MD'] is None
  assert lenient.skipped.total == 1 and '1001_IEO_ANG_MD.wav' in lenient.skipped.summary()


@pytest.mark.parametrize('suffix', ['csv', 'jsonl'])
def test_a_utf8_bom_is_accepted_in_csv_and_jsonl_alike(tmp_path, suffix):
  plain, marked = tmp_path / f'plain.{suffix}', tmp_path / f'marked.{suffix}'
  if suffix == 'csv':
    text = 'utt_id,speaker,split\na,s1,train\nb,s2,test\n'
  else:
    text = '{"utt_id": "a", "speaker": "s1", "split": "train"}\n{"utt_id": "b", "speaker": "s2", "split": "test"}\n'
  plain.write_text(text)
  marked.write_bytes(b'\xef\xbb\xbf' + text.encode())
  assert repr(manifest.load(marked).utterances.to_pylist()) == repr(
    manifest.load(plain).utterances.to_pylist()
  )
  assert tables.read_table(marked).equals(tables.read_table(plain))


# ----------------------------------------------------------------------------------------------
# Defect 3 (loading side): NaN, Inf and empty audio.


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_load_audio_refuses_non_finite_samples_naming_the_file(tmp_path, bad):
  samples = np.zeros(1600, np.float32)
  samples[700] = bad
  path = _wav(tmp_path / 'bad.wav', 0, subtype='FLOAT', samples=samples)
  with pytest.raises(
    InputError, match=r'bad\.wav: audio has \d NaN and \d infinite samples \(first at frame 700\)'
  ):
    audio.load_audio(path)
  with pytest.raises(InputError, match='first at frame 700'):
    audio.load_audio(path, start_s=0.0, end_s=0.05)
  assert audio.load_audio(path, start_s=0.05).shape == (800,)  # the segment after it is clean


def test_load_audio_refuses_empty_audio(tmp_path):
  path = _wav(tmp_path / 'empty.wav', 0.0)
  with pytest.raises(InputError, match=r'empty\.wav: audio has no samples \(0 frames\)'):
    audio.load_audio(path)


def test_check_finite():
  wave = np.ones((4, 2), np.float32)
  assert audio.check_finite(wave, 'x.wav') is wave
  wave[2, 1] = np.nan
  with pytest.raises(
    InputError, match=r'x\.wav: audio has 1 NaN and 0 infinite samples \(first at frame 2\)'
  ):
    audio.check_finite(wave, 'x.wav')
  with pytest.raises(InputError, match='no samples'):
    audio.check_finite(np.zeros(0), 'x.wav')


# ----------------------------------------------------------------------------------------------
# Issue 11: one home for the sample rate.


def test_sample_rate_has_one_home():
  from perax.augment import audio_mix
  from perax.data.corpora import demo

  assert features.SAMPLE_RATE is audio.SAMPLE_RATE and demo.SAMPLE_RATE is audio.SAMPLE_RATE
  assert audio_mix.SAMPLE_RATE is audio.SAMPLE_RATE
  package = pathlib.Path(audio.__file__).parents[1]
  homes = [p for p in package.rglob('*.py') if re.search(r'^SAMPLE_RATE\s*=\s*\d', p.read_text(), re.M)]
  assert homes == [pathlib.Path(audio.__file__)]


def test_parquet_manifest_with_nan_weight_names_the_row(tmp_path):
  utterances = _jsonl(tmp_path / 'utterances.jsonl', [{'utt_id': 'a'}])
  pq.write_table(
    pa.table(
      {'utt_id': ['a', 'a'], 'rater': ['r1', 'r2'], 'label': ['sad', 'sad'], 'weight': [1.0, float('nan')]}
    ),
    tmp_path / 'votes.parquet',
  )
  with pytest.raises(InputError, match=r"votes\.parquet, item 'row 1': weight nan"):
    manifest.load(utterances, votes=tmp_path / 'votes.parquet')


def test_manifest_duration_stops_at_the_end_of_the_audio(tmp_path):
  _wav(tmp_path / 'audio' / 'a.wav', 2.0)
  path = tmp_path / 'utterances.csv'
  path.write_text(
    'utt_id,audio_path,start_s,end_s\nfull,audio/a.wav,,\nover,audio/a.wav,0.5,9.0\ntail,audio/a.wav,1.5,\n'
  )
  durations = tables.column(manifest.load(path).utterances, 'duration_s').tolist()
  np.testing.assert_allclose(durations, [2.0, 1.5, 0.5])
  assert (
    audio.load_audio(tmp_path / 'audio' / 'a.wav', start_s=0.5, end_s=9.0).size == 1.5 * audio.SAMPLE_RATE
  )
