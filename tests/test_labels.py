"""Tests for perax.data.labels: free-text parsing, corpus codes, label sets and their vectorised index."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perax.core.errors import InputError
from perax.data import labels

INVALID = labels.INVALID

# Hand-written expectations, independent of the module's tables.
PARSED = {
  'Neutral': 'neutral',
  'Neutral state': 'neutral',
  'neutral.': 'neutral',
  'calm': 'neutral',
  'Happiness': 'happy',
  'joy': 'happy',
  'Happy!': 'happy',
  'HAPPY': 'happy',
  'Sadness.': 'sad',
  'sad': 'sad',
  'Unhappy': 'sad',
  'Anger': 'angry',
  'angry': 'angry',
  'mad': 'angry',
  'Furious': 'angry',
  'The speaker sounds angry.': 'angry',
  'I think the speaker is happy.': 'happy',
  'Fear': 'fear',
  'afraid': 'fear',
  'scared': 'fear',
  'Fears': 'fear',
  'Disgust': 'disgust',
  'disgusted': 'disgust',
  'Surprise': 'surprise',
  'Surprised': 'surprise',
  'surprises': 'surprise',
  'Contempt': 'contempt',
  'Excited': 'excited',
  'excitement': 'excited',
  'Frustration': 'frustrated',
  'frustrated': 'frustrated',
  'Boredom': 'boredom',
  'bored': 'boredom',
  'Other': 'other',
  'Other: curious': 'other',
  'Other-Confused': 'other',
  'Other-Dissapointed': 'other',
  'Others': 'other',
  'other:angry': 'other',
  'Angery': 'angry',
  'Nuetral': 'neutral',
  'Supprised': 'surprise',
  'Frustated': 'frustrated',
  'Digust': 'disgust',
  '  \tSad \n': 'sad',
  'ＳＡＤ': 'sad',
  'Dissapointed': INVALID,
  'Disappointed': INVALID,
  'Confused': INVALID,
  'curious': INVALID,
  'angry or sad': INVALID,
  'Frustration, anger': INVALID,
  'Angry; Sad': INVALID,
  'not angry': INVALID,
  "The speaker isn't happy": INVALID,
  'non-neutral': INVALID,
  'no agreement': INVALID,
  'X': INVALID,
  '': INVALID,
  '...': INVALID,
  'danger': INVALID,
  'invalid': INVALID,
  'positive': INVALID,
  None: INVALID,
  3: INVALID,
}


@pytest.mark.parametrize('text,expected', PARSED.items(), ids=repr)
def test_parse_label_examples(text, expected):
  assert labels.parse_label(text) == expected


def test_canonical_labels_parse_to_themselves():
  assert len(labels.CANONICAL) == 12 and INVALID not in labels.CANONICAL
  assert labels.parse_label(['angry']) == INVALID
  for label in labels.CANONICAL:
    assert labels.parse_label(label) == label
    assert labels.parse_label(label.upper() + '.') == label


_LABEL_WORDS = {  # one hand-picked word per label (the label itself is covered above)
  'neutral': 'neutrality',
  'happy': 'joyful',
  'sad': 'sorrow',
  'angry': 'rage',
  'fear': 'frightened',
  'disgust': 'disgusting',
  'surprise': 'astonished',
  'contempt': 'contemptuous',
  'excited': 'thrilled',
  'frustrated': 'frustrating',
  'boredom': 'boring',
  'other': 'other',
}
_TEMPLATES = (
  '{}',
  '{}.',
  '{}!',
  ' {} ',
  '"{}"',
  'The speaker sounds {}.',
  'Emotion: {}',
  'Answer: {}',
  'I would say {}',
  '{}, clearly.',
)


@settings(max_examples=200, deadline=None)
@given(
  label=st.sampled_from(sorted(_LABEL_WORDS)),
  use_word=st.booleans(),
  template=st.sampled_from(_TEMPLATES[:5]),
  upper=st.booleans(),
)
def test_parse_label_decorations(label, use_word, template, upper):
  word = _LABEL_WORDS[label] if use_word else label
  text = template.format(word.upper() if upper else word.capitalize())
  assert labels.parse_label(text) == label


@settings(max_examples=200, deadline=None)
@given(
  label=st.sampled_from([l for l in labels.CANONICAL if l != 'other']), template=st.sampled_from(_TEMPLATES)
)
def test_parse_label_in_sentences(label, template):
  assert labels.parse_label(template.format(label)) == label


@settings(max_examples=200, deadline=None)
@given(
  pair=st.lists(
    st.sampled_from([l for l in labels.CANONICAL if l != 'other']), min_size=2, max_size=2, unique=True
  ),
  joiner=st.sampled_from((' or ', ', ', '; ', ' and ', '/', ' mixed with ')),
)
def test_two_labels_are_invalid(pair, joiner):
  assert labels.parse_label(joiner.join(pair)) == INVALID


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40))
def test_parse_label_total_and_idempotent(text):
  parsed = labels.parse_label(text)
  assert parsed in labels.CANONICAL or parsed == INVALID
  assert labels.parse_label(parsed) == parsed


CODES = {
  'iemocap': {
    'neu': 'neutral',
    'hap': 'happy',
    'exc': 'excited',
    'sad': 'sad',
    'ang': 'angry',
    'fru': 'frustrated',
    'sur': 'surprise',
    'fea': 'fear',
    'dis': 'disgust',
    'oth': 'other',
    'xxx': INVALID,
  },
  'msp_podcast': {
    'N': 'neutral',
    'H': 'happy',
    'S': 'sad',
    'A': 'angry',
    'C': 'contempt',
    'U': 'surprise',
    'D': 'disgust',
    'F': 'fear',
    'O': 'other',
    'X': INVALID,
  },
  'crema_d': {'A': 'angry', 'D': 'disgust', 'F': 'fear', 'H': 'happy', 'N': 'neutral', 'S': 'sad'},
  'emodb': {
    'W': 'angry',
    'L': 'boredom',
    'E': 'disgust',
    'A': 'fear',
    'F': 'happy',
    'T': 'sad',
    'N': 'neutral',
  },
}


@pytest.mark.parametrize('corpus', sorted(CODES))
def test_from_code_tables(corpus):
  assert dict(labels.CODE_TABLES[corpus]) == CODES[corpus]
  for code, label in CODES[corpus].items():
    assert labels.from_code(corpus, code) == label
    assert labels.from_code(corpus, f' {code.swapcase()} ') == label


def test_from_code_errors():
  with pytest.raises(InputError, match="unknown msp_podcast emotion code 'Q'"):
    labels.from_code('msp_podcast', 'Q')
  with pytest.raises(InputError, match='no emotion code table'):
    labels.from_code('ravdess', 'A')


def test_registered_label_sets():
  expected = {
    'iemocap4': ('neutral', 'happy', 'sad', 'angry'),
    'iemocap': (
      'neutral',
      'happy',
      'excited',
      'sad',
      'angry',
      'frustrated',
      'surprise',
      'fear',
      'disgust',
      'other',
    ),
    'msp_podcast': ('neutral', 'happy', 'sad', 'angry', 'contempt', 'surprise', 'disgust', 'fear'),
    'iemocap4_other': ('neutral', 'happy', 'sad', 'angry', 'other'),
    'msp_podcast_other': (
      'neutral',
      'happy',
      'sad',
      'angry',
      'contempt',
      'surprise',
      'disgust',
      'fear',
      'other',
    ),
    'crema_d': ('angry', 'disgust', 'fear', 'happy', 'neutral', 'sad'),
    'emodb': ('angry', 'boredom', 'disgust', 'fear', 'happy', 'sad', 'neutral'),
  }
  for name, ordered in expected.items():
    label_set = labels.get_label_set(name)
    assert label_set.name == name and label_set.labels == ordered and len(label_set) == len(ordered)
  assert dict(labels.get_label_set('iemocap4').merges) == {'excited': 'happy'}
  assert dict(labels.get_label_set('iemocap4_other').merges) == {'excited': 'happy'}
  assert labels.get_label_set('demo') == labels.get_label_set('iemocap4')
  assert not labels.get_label_set('msp_podcast').merges
  assert len({labels.get_label_set(n) for n in expected}) == len(expected)  # hashable


def test_ad_hoc_label_sets():
  label_set = labels.get_label_set('Anger, neutral,Sadness')
  assert label_set.labels == ('angry', 'neutral', 'sad') and label_set.name == 'angry,neutral,sad'
  with pytest.raises(InputError, match='name no canonical label'):
    labels.get_label_set('angry,positive')
  with pytest.raises(InputError, match='unknown label set'):
    labels.get_label_set('ravdess')
  with pytest.raises(InputError, match='two distinct labels'):
    labels.get_label_set('angry,anger')
  with pytest.raises(InputError, match='non-canonical'):
    labels.LabelSet('x', ('angry', 'positive'))
  with pytest.raises(InputError, match='merges'):
    labels.LabelSet('x', ('angry', 'sad'), {'happy': 'excited'})


_INDEX_VALUES = list(labels.CANONICAL) + [INVALID, None, 'Angry', '']


def _naive_index(label_set, values):
  positions = {label: i for i, label in enumerate(label_set.labels)}
  positions.update({k: positions[v] for k, v in label_set.merges.items()})
  return [positions.get(v, -1) for v in values]


@settings(max_examples=100, deadline=None)
@given(
  values=st.lists(st.sampled_from(_INDEX_VALUES), max_size=60),
  name=st.sampled_from(['iemocap4', 'iemocap', 'msp_podcast', 'crema_d', 'emodb']),
)
def test_index_matches_naive_lookup(values, name):
  label_set = labels.get_label_set(name)
  index = label_set.index(values)
  assert index.dtype == np.int32 and index.shape == (len(values),)
  np.testing.assert_array_equal(index, _naive_index(label_set, values))
  chunked = pa.chunked_array([pa.array(values[:7], pa.string()), pa.array(values[7:], pa.string())])
  np.testing.assert_array_equal(label_set.index(chunked), index)


def test_index_shapes_and_merges():
  label_set = labels.get_label_set('iemocap4')
  index = label_set.index(np.array([['excited', 'sad'], ['frustrated', 'neutral']]))
  np.testing.assert_array_equal(index, [[1, 2], [-1, 0]])
  assert label_set.index([]).shape == (0,)
  many = np.array(['angry', 'excited', INVALID, None] * 50_000, dtype=object)
  np.testing.assert_array_equal(label_set.index(many)[:4], [3, 1, -1, -1])
