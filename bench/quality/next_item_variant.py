"""How a ``next_item.py`` run is named, from one table of the options that change what it trains.

A variant's tag (``request_softmax-n32-uniform-e4-selndcg-cat0.3-a64-exact``) names its run folder
(``eventrec_<tag>``) and its row in ``docs/results.md``; the command printed beside the table must
reproduce it. Both come from :data:`TAGGED_OPTIONS`, in the same order, so that a new option is
written once. The tags of earlier runs must not change: their folders and rows are read back
(tested against tags of the runs in ``docs/results.md``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class TaggedOption:
    """An option shown in the tag and the command when it differs from its parser default.

    ``tag``: the tag text before the value (``-cat``); ``value``: the value's format (``{:g}``), or
    None for a switch (``store_true``: the tag alone, the flag alone); ``needs``: the option is
    shown only while this other option is on (its tag then joins that option's, e.g. ``-clw1d24``)."""

    dest: str
    tag: str
    value: str | None = "{}"
    needs: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.dest.replace("_", "-")


TAGGED_OPTIONS: tuple[TaggedOption, ...] = (
    TaggedOption("in_batch_weight", "-dot", "{:g}"),
    TaggedOption("catalogue_weight", "-cat", "{:g}"),
    TaggedOption("catalogue_logit_weight", "-clw", "{:g}"),
    TaggedOption("catalogue_logit_draws", "d", needs="catalogue_logit_weight"),
    TaggedOption("negative_rounds", "-r"),
    TaggedOption("attribute_dim", "-a"),
    TaggedOption("dropout", "-d", "{:g}"),
    TaggedOption("identity_match", "-ident", None),
    TaggedOption("transition_match", "-trans", None),
    TaggedOption("weight_average", "-wa", "{:g}"),
    TaggedOption("cross_rank", "-cr"),
    TaggedOption("validations_per_epoch", "-v"),
    TaggedOption("history_negatives", "-h"),
    TaggedOption("batch_size", "-b"),
    TaggedOption("learning_rate", "-lr", "{:g}"),
    TaggedOption("logq", "-logq", None),
)


def _shown(option: TaggedOption, args: argparse.Namespace, parser: argparse.ArgumentParser) -> bool:
    value = getattr(args, option.dest)
    if option.needs is not None and not getattr(args, option.needs):
        return False
    return value != parser.get_default(option.dest)


def variant_tag(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The run's tag: loss, negatives, sampling, epochs, selection, then every shown option, then the item ids."""
    tag = f"{args.loss}-n{args.negatives}-{args.sampling}-e{args.epochs}" + ("" if args.select == "auc" else f"-sel{args.select}")
    for option in TAGGED_OPTIONS:
        if _shown(option, args, parser):
            tag += option.tag + ("" if option.value is None else option.value.format(getattr(args, option.dest)))
    return tag + ("-exact" if args.item_ids == "exact" else "")


def option_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The shown options as command-line flags (`` --catalogue-weight 0.3 --identity-match``), in the tag's order."""
    text = ""
    for option in TAGGED_OPTIONS:
        if _shown(option, args, parser):
            text += f" {option.flag}" + ("" if option.value is None else " " + option.value.format(getattr(args, option.dest)))
    return text + (" --item-ids hashed" if args.item_ids == "hashed" else "")
