"""DiME-Aug planning: which pairs of utterances to mix so that emotions (or emotion x ambiguity
cells) are balanced, and a balanced evaluation set from the test split alone.

Our design (field notes, section 2; the paper names DiME-Aug but its details were not available):

* A *cell* is (dominant emotion, ambiguity level): the argmax of the target distribution, and
  low | medium | high by the run's one level definition (perax.distributions.levels.LevelDefinition,
  usually the tertiles of the training split's human entropy, :func:`levels_from_split`). An original
  utterance's level is that of its human entropy (``entropy_human``; its target's entropy where the
  table has no human entropy), a mixed example's level that of its mixed target's normalised entropy.
* The *target histogram* is balanced over dominant emotions (``balance='classes'``; the ambiguity
  level of each added example is drawn from the split's own level shares) or over all cells
  (``balance='cells'``).  By default every class (cell) is brought up to the largest one; ``size``
  asks for that many examples in all instead (originals included), spread evenly.
* To add an example to cell (c, a): draw an anchor i of dominant emotion c with probability
  proportional to p_i[c], then up to ``max_tries`` partners j from the same split (for level low
  from the anchor's class, for high from the other classes, for medium from all); the first whose
  mixed target lands in (c, a) is taken (bounded rejection sampling).  When none lands,
  ``max_anchors`` anchors are tried, and then the nearest candidate is taken (a different dominant
  emotion counts more than any level difference) and marked ``fallback``.  A partner of the anchor's
  own class always exists as the last resort where the class has two utterances, and keeps the
  dominant emotion (a convex mix of two distributions with the same argmax has that argmax).
* concat: target = w p_i + (1 - w) p_j with w = dur_i / (dur_i + dur_j), audio = anchor, a uniform
  ``gap_s`` silence, loudness-matched partner.  mixup: w ~ Beta(alpha, alpha) is the anchor's share
  of both the overlaid audio and the target.  The mixed example lasts at most ``max_duration_s``.
* Everything is drawn from one ``numpy`` generator seeded by ``seed``: same inputs, same plan.

A plan is a table, one row per example (``utt_id`` is the new example's id; see
:data:`PLAN_COLUMNS`), with ``p_<label>`` targets (non-negative, summing to 1) and the provenance
(anchor, partner, weight, variant, gap).  :func:`perax.augment.audio_mix.render` turns a row into audio.

This module is the public face of DiME-Aug: the parts live in their own modules and are
re-exported here, so ``dime_aug.<name>`` keeps working:

* :mod:`perax.augment.dime_targets`: targets, ambiguity levels and pools (target_matrix, levels_from_split,
  read_levels, ...).
* :mod:`perax.augment.dime_mixing`: MixConfig and the anchor-partner draw for one wanted cell.
* :mod:`perax.augment.dime_plan`: training-set planning (plan_augmentation, original_rows, plan_summary,
  PLAN_COLUMNS).
* :mod:`perax.augment.dime_eval`: the balanced evaluation set (build_eval_set, speaker_leaks).
"""

from __future__ import annotations

from perax.augment.audio_mix import AUGMENTED, CONCAT, MIXUP, ORIGINAL  # noqa: F401 (re-exported)
from perax.augment.dime_eval import build_eval_set, speaker_leaks  # noqa: F401 (re-exported)
from perax.augment.dime_mixing import HIGH, LOW, MEDIUM, VARIANTS, MixConfig  # noqa: F401 (re-exported)
from perax.augment.dime_plan import (  # noqa: F401 (re-exported: the planning API)
  BALANCES,
  PLAN_COLUMNS,
  original_rows,
  plan_augmentation,
  plan_summary,
)
from perax.augment.dime_targets import (  # noqa: F401 (re-exported: targets and levels)
  human_entropy,
  level_index,
  levels_from_split,
  read_levels,
  target_matrix,
)
from perax.distributions.levels import LEVELS, LevelDefinition  # noqa: F401 (re-exported)
