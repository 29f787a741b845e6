"""Emotion labels: the canonical vocabulary, corpus codes, free-text answers and label sets.

Every vote in perax carries one canonical label (:data:`CANONICAL`) or :data:`INVALID`; the original
text stays in the votes table's ``text`` column, so nothing is lost when a text is not understood.

Corpus codes (IEMOCAP ``neu``/``exc``, MSP-Podcast ``N``/``X``, CREMA-D ``A``, EmoDB ``W``) go through
:func:`from_code`, one code table per corpus; a code meaning "no agreement" becomes INVALID.

Free text (annotator labels, model answers) goes through :func:`parse_label`. Its rules, in order:

1. The text is NFKC-normalised and lower-cased, apostrophes are dropped (``isn't`` -> ``isnt``), and
   it is split into words of letters.
2. A text whose first word is ``other`` is ``'other'`` whatever follows: "Other: curious",
   "Other-Confused", "Other-Dissapointed" are raters who chose Other and described it.
3. Each word is looked up in a table of inflections and unambiguous synonyms of the canonical labels
   (anger/angry/mad, happiness/joy, sadness, ...; a trailing plural ``s`` is tolerated); other words
   are ignored, so "The speaker sounds angry." is angry and "Neutral state" is neutral.
4. Exactly one distinct label found: that label. No label, two different labels ("angry or sad",
   "Frustrated, angry"), or a label next to a negation ("not angry", "non-neutral") is INVALID.
5. A one-word answer that matches nothing but is one edit (insertion, deletion, substitution or swap
   of adjacent letters, same first letter) away from a table word of at least five letters is read
   as that word: "Angery", "Nuetral", "Supprised", "Frustated".

Emotion words outside the vocabulary ("Disappointed", "Confused", "Dissapointed") are INVALID on their
own: guessing a label the rater did not choose would invent evidence. A corpus whose protocol makes
every free-text answer an Other vote (MSP-Podcast's "Other (specify)") maps INVALID to ``'other'`` in
its own loader.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import unicodedata
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from perax.core.errors import InputError

INVALID = 'invalid'

CANONICAL = (
  'neutral',
  'happy',
  'sad',
  'angry',
  'fear',
  'disgust',
  'surprise',
  'contempt',
  'excited',
  'frustrated',
  'boredom',
  'other',
)

# Inflections and unambiguous synonyms of each canonical label (rule 3 of the module docstring).
_WORDS = {
  'neutral': (
    'neutral',
    'neutrality',
    'neutrally',
    'calm',
    'calmly',
    'calmness',
    'emotionless',
    'unemotional',
  ),
  'happy': (
    'happy',
    'happiness',
    'happily',
    'happier',
    'joy',
    'joyful',
    'joyous',
    'glad',
    'cheerful',
    'delighted',
    'pleased',
  ),
  'sad': ('sad', 'sadness', 'sadly', 'sadder', 'unhappy', 'sorrow', 'sorrowful', 'grief', 'melancholy'),
  'angry': ('angry', 'anger', 'angrily', 'angered', 'mad', 'furious', 'fury', 'rage', 'enraged', 'irate'),
  'fear': (
    'fear',
    'fearful',
    'fearfully',
    'afraid',
    'scared',
    'frightened',
    'terrified',
    'anxiety',
    'anxious',
  ),
  'disgust': ('disgust', 'disgusted', 'disgusting', 'disgustedly', 'revulsion', 'repulsed'),
  'surprise': (
    'surprise',
    'surprised',
    'surprising',
    'surprisingly',
    'astonished',
    'astonishment',
    'amazed',
    'amazement',
  ),
  'contempt': ('contempt', 'contemptuous', 'contemptuously', 'disdain', 'scorn', 'scornful'),
  'excited': ('excited', 'excitement', 'exciting', 'excitedly', 'enthusiastic', 'thrilled'),
  'frustrated': ('frustrated', 'frustration', 'frustrating'),
  'boredom': ('boredom', 'bored', 'boring'),
  'other': ('other',),
}
_WORD_TO_LABEL = {word: label for label, words in _WORDS.items() for word in words}
_NEGATIONS = frozenset(
  (
    'not',
    'no',
    'non',
    'never',
    'neither',
    'nor',
    'without',
    'isnt',
    'doesnt',
    'dont',
    'wasnt',
    'arent',
    'hardly',
  )
)
_MIN_FUZZY_LETTERS = 5

# One code table per corpus (the corpus's own emotion codes -> canonical label or INVALID).
CODE_TABLES: Mapping[str, Mapping[str, str]] = types.MappingProxyType(
  {
    'iemocap': types.MappingProxyType(
      {
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
      }
    ),
    'msp_podcast': types.MappingProxyType(
      {
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
      }
    ),
    'crema_d': types.MappingProxyType(
      {'A': 'angry', 'D': 'disgust', 'F': 'fear', 'H': 'happy', 'N': 'neutral', 'S': 'sad'}
    ),
    'emodb': types.MappingProxyType(
      {'W': 'angry', 'L': 'boredom', 'E': 'disgust', 'A': 'fear', 'F': 'happy', 'T': 'sad', 'N': 'neutral'}
    ),
  }
)


def from_code(corpus: str, code: str) -> str:
  """The canonical label of one of ``corpus``'s emotion codes (INVALID for "no agreement" codes).

  Args:
    corpus: a key of :data:`CODE_TABLES` (iemocap, msp_podcast, crema_d, emodb).
    code: the code as the corpus writes it; surrounding blanks and case are tolerated.

  Raises:
    InputError: unknown corpus or code (the caller adds file and line).
  """
  if corpus not in CODE_TABLES:
    raise InputError(f'no emotion code table for corpus {corpus!r}; known: {sorted(CODE_TABLES)}')
  table = CODE_TABLES[corpus]
  key = str(code).strip()
  key = key.lower() if corpus == 'iemocap' else key.upper()
  if key not in table:
    raise InputError(f'unknown {corpus} emotion code {code!r}; expected one of {sorted(table)}')
  return table[key]


def _one_edit_apart(a: str, b: str) -> bool:
  """Whether ``a`` becomes ``b`` by one insertion, deletion, substitution or adjacent swap."""
  if a == b or abs(len(a) - len(b)) > 1:
    return False
  if len(a) == len(b):
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    if len(diff) == 1:
      return True
    return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
  short, long_ = (a, b) if len(a) < len(b) else (b, a)
  i = 0
  while i < len(short) and short[i] == long_[i]:
    i += 1
  return short[i:] == long_[i + 1 :]


def _lookup(word: str) -> str | None:
  """The label of one word, tolerating a trailing plural ``s``; None where the word names none."""
  if word in _WORD_TO_LABEL:
    return _WORD_TO_LABEL[word]
  if word.endswith('s') and word[:-1] in _WORD_TO_LABEL:
    return _WORD_TO_LABEL[word[:-1]]
  return None


def _fuzzy_lookup(word: str) -> str | None:
  """The label of the table words one edit away from ``word`` (same first letter), if only one."""
  if len(word) < _MIN_FUZZY_LETTERS:
    return None
  labels = {
    label
    for known, label in _WORD_TO_LABEL.items()
    if len(known) >= _MIN_FUZZY_LETTERS and known[0] == word[0] and _one_edit_apart(word, known)
  }
  return labels.pop() if len(labels) == 1 else None


def parse_label(text: str) -> str:
  """The canonical label a free-text answer names, or INVALID (rules in the module docstring).

  Results are cached per distinct text, so parsing the votes of a large corpus costs one parse per
  distinct answer.

  Args:
    text: an annotator's label or a model's answer, e.g. "Sadness.", "Other: curious",
      "The speaker sounds angry."; None and non-strings are INVALID.

  Returns:
    One of :data:`CANONICAL`, or :data:`INVALID`. Idempotent: ``parse_label(label) == label``.
  """
  return _parse_text(text) if isinstance(text, str) else INVALID


@functools.lru_cache(maxsize=1 << 16)
def _parse_text(text: str) -> str:
  normalised = unicodedata.normalize('NFKC', text).lower().replace("'", '').replace('\u2019', '')
  words = re.findall(r'[a-z]+', normalised)
  if not words:
    return INVALID
  if words[0] == 'other' or words[0] == 'others':
    return 'other'
  found = {label for label in map(_lookup, words) if label is not None}
  if not found and len(words) == 1:
    fuzzy = _fuzzy_lookup(words[0])
    found = {fuzzy} if fuzzy else found
  if len(found) != 1 or _NEGATIONS.intersection(words):
    return INVALID
  return found.pop()


@dataclasses.dataclass(frozen=True)
class LabelSet:
  """An ordered set of canonical labels that distributions are taken over.

  Attributes:
    name: registry name ('iemocap4', ...) or the comma-joined labels of an ad hoc set.
    labels: canonical labels, distinct, at least two; distribution columns follow this order.
    merges: canonical labels outside the set counted as a label inside it (iemocap4: excited ->
      happy). Keys are outside ``labels``, values inside.
  """

  name: str
  labels: tuple[str, ...]
  merges: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    object.__setattr__(self, 'labels', tuple(self.labels))
    object.__setattr__(self, 'merges', types.MappingProxyType(dict(self.merges)))
    unknown = [label for label in (*self.labels, *self.merges) if label not in CANONICAL]
    if unknown:
      raise InputError(
        f'label set {self.name!r} has non-canonical labels {unknown}; canonical: {", ".join(CANONICAL)}'
      )
    if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
      raise InputError(f'label set {self.name!r} needs at least two distinct labels, got {list(self.labels)}')
    bad = {k: v for k, v in self.merges.items() if k in self.labels or v not in self.labels}
    if bad:
      raise InputError(
        f'label set {self.name!r}: merges {bad} must map a label outside the set to one inside it'
      )

  def __hash__(self):
    return hash((self.name, self.labels, tuple(sorted(self.merges.items()))))

  def __len__(self) -> int:
    return len(self.labels)

  @functools.cached_property
  def _positions(self) -> dict[str, int]:
    positions = {label: i for i, label in enumerate(self.labels)}
    positions.update({outside: positions[inside] for outside, inside in self.merges.items()})
    return positions

  def index(self, labels: Sequence[str] | np.ndarray | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Positions of canonical labels in the set, merges applied; -1 where not in the set.

    Vectorised: the labels are hash-encoded once (pyarrow) and each distinct value looked up once,
    so millions of votes cost one pass. Nulls, INVALID and labels outside the set give -1.

    Args:
      labels: canonical label strings, any shape (numpy), or a pyarrow string column.

    Returns:
      int32 array of the input's shape (1-D for pyarrow input), values in [-1, len(self)).
    """
    if isinstance(labels, (pa.Array, pa.ChunkedArray)):
      values, shape = labels, (len(labels),)
    else:
      array = np.asarray(labels, dtype=object)
      values, shape = pa.array(array.ravel(), type=pa.string(), from_pandas=True), array.shape
    if isinstance(values, pa.ChunkedArray):
      values = values.combine_chunks()
    encoded = pc.dictionary_encode(values.cast(pa.string()))
    lookup = np.array(
      [self._positions.get(label, -1) for label in encoded.dictionary.to_pylist()] + [-1], dtype=np.int32
    )
    codes = encoded.indices.fill_null(len(lookup) - 1).to_numpy(zero_copy_only=False)
    return lookup[codes].reshape(shape)


_LABEL_SETS = {
  label_set.name: label_set
  for label_set in (
    LabelSet('iemocap4', ('neutral', 'happy', 'sad', 'angry'), {'excited': 'happy'}),
    # The 4-class protocol with its out-of-set votes kept as an explicit class (--outside_votes=other).
    LabelSet('iemocap4_other', ('neutral', 'happy', 'sad', 'angry', 'other'), {'excited': 'happy'}),
    LabelSet(
      'iemocap',
      ('neutral', 'happy', 'excited', 'sad', 'angry', 'frustrated', 'surprise', 'fear', 'disgust', 'other'),
    ),
    LabelSet('msp_podcast', ('neutral', 'happy', 'sad', 'angry', 'contempt', 'surprise', 'disgust', 'fear')),
    LabelSet(
      'msp_podcast_other',
      ('neutral', 'happy', 'sad', 'angry', 'contempt', 'surprise', 'disgust', 'fear', 'other'),
    ),
    LabelSet('crema_d', ('angry', 'disgust', 'fear', 'happy', 'neutral', 'sad')),
    LabelSet('emodb', ('angry', 'boredom', 'disgust', 'fear', 'happy', 'sad', 'neutral')),
  )
}
_ALIASES = {'demo': 'iemocap4'}
LABEL_SET_NAMES = tuple(_LABEL_SETS) + tuple(_ALIASES)


def get_label_set(name_or_csv: str) -> LabelSet:
  """A registered label set by name, or an ad hoc one from comma-separated labels.

  Args:
    name_or_csv: one of :data:`LABEL_SET_NAMES` ('demo' is the iemocap4 set), or labels such as
      'neutral,happy,sad'; ad hoc labels are canonicalised with :func:`parse_label` ('Anger' ->
      angry) and have no merges.

  Raises:
    InputError: an unknown name, or an ad hoc label that names no canonical label.
  """
  key = name_or_csv.strip()
  key = _ALIASES.get(key, key)
  if key in _LABEL_SETS:
    return _LABEL_SETS[key]
  if ',' not in key:
    raise InputError(
      f'unknown label set {name_or_csv!r}; known: {", ".join(LABEL_SET_NAMES)}, or comma-separated labels'
    )
  texts = [t.strip() for t in key.split(',') if t.strip()]
  labels = tuple(parse_label(t) for t in texts)
  invalid = [t for t, label in zip(texts, labels) if label == INVALID]
  if invalid:
    raise InputError(
      f'label set {name_or_csv!r}: {invalid} name no canonical label; canonical: {", ".join(CANONICAL)}'
    )
  return LabelSet(','.join(labels), labels)
