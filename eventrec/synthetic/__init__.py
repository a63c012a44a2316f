"""eventrec's synthetic ads world: the embedded default data of the demo and of many tests.

Users with drifting interests view content and like pages; ad requests show ads; clicks and
conversions are drawn from true probabilities that depend on the order and co-occurrence of the
user's recent events (so windowed count aggregates lose real information), and become events of the
same logs. ``preset="long"`` gives the long-history world (``long_world.py``): histories of ~2k events
with a tail to 100k, whose truth reads weeks-old events. See ``docs/synthetic_world.md``.

>>> from eventrec.synthetic import generate_world, true_probabilities
>>> summary = generate_world("runs/world", num_users=10_000, days=30, seed=0)   # doctest: +SKIP
>>> scored = true_probabilities("runs/world", queries)  # user_id, timestamp, ad_id, placement  # doctest: +SKIP
"""

from eventrec.synthetic.generate import PRESETS, generate_world, load_world, policy_weights
from eventrec.synthetic.long_world import LongConfig, LongWorld
from eventrec.synthetic.model import History, true_probabilities
from eventrec.synthetic.world import EVENT_TYPES, PLACEMENTS, World, WorldConfig

__all__ = ["EVENT_TYPES", "PLACEMENTS", "PRESETS", "History", "LongConfig", "LongWorld", "World", "WorldConfig",
           "generate_world", "load_world", "policy_weights", "true_probabilities"]
