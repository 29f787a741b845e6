"""What every corpus loader returns."""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow as pa

from perax.core.errors import SkipCounter


@dataclasses.dataclass
class Corpus:
  """A corpus as perax sees it.

  Attributes:
    name: the corpus name (iemocap, msp_podcast, crema_d, emodb, manifest, demo).
    utterances: table in perax.data.tables.UTTERANCE_SCHEMA; utt_id unique.
    votes: table in perax.data.tables.VOTE_SCHEMA; every utt_id appears in ``utterances``.
    skipped: what a lenient load skipped, by reason (empty when strict).
    reference_votes: a dense reference kept apart from ``votes`` for analysis (the demo's 30-vote
      reference, or another rater pool), or None.
    protocol: what a corpus protocol kept and dropped (perax.data.corpora.protocols.ProtocolReport),
      or None for loaders without protocols.
  """

  name: str
  utterances: pa.Table
  votes: pa.Table
  skipped: SkipCounter = dataclasses.field(default_factory=SkipCounter)
  reference_votes: pa.Table | None = None
  protocol: Any = None
