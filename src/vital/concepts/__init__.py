"""Concepts: what a class is made of at a layer, pictured with VITAL and weighed by relevance.

:func:`concepts` runs the whole analysis. The pieces, one job each: :mod:`.crops` (images and
random crops: a concept's possible examples), :mod:`.discovery` (NMF of the crops' activations
into concept directions; coefficients by non-negative least squares), :mod:`.shares` (the
class's relevance at the layer distributed over the concepts, with a residual), :mod:`.maps`
(where each concept sits on an image), :mod:`.pictures` (VITAL pictures of the directions) and
:mod:`.fidelity` (deletion and insertion curves against channels).
"""

import inspect
import sys
import types

from vital.concepts.atlas import AddedConcepts, add_concepts, import_concepts
from vital.concepts.crops import CropSet, class_images, sample_crops
from vital.concepts.discovery import ConceptBasis, discover, layer_features
from vital.concepts.fidelity import Curves, fidelity_curves
from vital.concepts.maps import grid_of, map_image
from vital.concepts.pipeline import ConceptEntry, ConceptReport, concepts
from vital.concepts.shares import ConceptShares, concept_shares

__all__ = [
    "AddedConcepts",
    "ConceptBasis",
    "ConceptEntry",
    "ConceptReport",
    "ConceptShares",
    "CropSet",
    "add_concepts",
    "Curves",
    "class_images",
    "concept_shares",
    "concepts",
    "discover",
    "fidelity_curves",
    "grid_of",
    "import_concepts",
    "layer_features",
    "map_image",
    "sample_crops",
]


class _CallableModule(types.ModuleType):
    """``vital.concepts(...)`` runs :func:`concepts`, while ``vital.concepts.X`` stays this package.

    The package and the public function share a name; making the package callable keeps both
    (binding the function over the package's name in ``vital`` would hide the submodules from
    tools that resolve dotted names attribute by attribute).
    """

    def __call__(self, *args, **kwargs) -> ConceptReport:
        return concepts(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
# ``inspect.signature(vital.concepts)`` and IDEs show the function's parameters, not
# ``(*args, **kwargs)`` of ``__call__``.
__signature__ = inspect.signature(concepts)
