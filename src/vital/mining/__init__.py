"""Reference mining: one pass over a dataset → top images and patches for every unit of a layer.

``mine`` runs the two stages of METHOD.md section 3 into a resumable SQLite index;
``mined_references`` turns a mined list into a :class:`~vital.references.ReferenceSet` for the
neuron visualisations; ``contact_sheet`` shows it.

Modules: ``datasets`` (listing and decoding), ``units`` (channels and directions), ``topk``
(bounded running top-k), ``index`` (the SQLite file), ``shards`` (one shard of a stage, run
wherever the engine puts it), ``scan`` (the driver: both stages, shard by shard, on an engine),
``results`` (reading lists back).
"""

from vital.mining.datasets import ImageList, list_images
from vital.mining.index import DATABASE_NAME, MiningIndex, Ranked
from vital.mining.results import (
    contact_sheet,
    is_mining_database,
    mined,
    mined_reference_sets,
    mined_references,
    open_patch,
)
from vital.mining.scan import MiningPlan, MiningReport, default_workers, mine, plan_mining
from vital.mining.shards import Patches
from vital.mining.units import unit_key

__all__ = [
    "is_mining_database",
    "mined_reference_sets",
    "DATABASE_NAME",
    "ImageList",
    "MiningIndex",
    "MiningPlan",
    "MiningReport",
    "Patches",
    "Ranked",
    "contact_sheet",
    "default_workers",
    "list_images",
    "mine",
    "mined",
    "mined_references",
    "open_patch",
    "plan_mining",
    "unit_key",
]
