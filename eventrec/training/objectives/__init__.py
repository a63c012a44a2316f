"""Training objectives as typed config entries, summed with their weights by the trainer.

``TrainConfig.objectives`` takes :data:`Objective` entries (``bce``, ``request_softmax``);
``TrainConfig.experimental.objectives`` takes :data:`ExperimentalObjective` ones (the research
objectives against the whole catalogue). ``kind`` picks the class (a pydantic discriminated union).
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from eventrec.training.objectives.base import ObjectiveConfig, StepContext, forward, total_loss
from eventrec.training.objectives.catalogue import Catalogue, CatalogueSoftmaxObjective, SampledCatalogueLogitObjective
from eventrec.training.objectives.standard import BceObjective, RequestSoftmaxObjective

Objective = Annotated[Union[BceObjective, RequestSoftmaxObjective], Field(discriminator="kind")]
ExperimentalObjective = Annotated[Union[CatalogueSoftmaxObjective, SampledCatalogueLogitObjective], Field(discriminator="kind")]

__all__ = [
    "BceObjective", "Catalogue", "CatalogueSoftmaxObjective", "ExperimentalObjective", "Objective", "ObjectiveConfig",
    "RequestSoftmaxObjective", "SampledCatalogueLogitObjective", "StepContext", "forward", "total_loss",
]
