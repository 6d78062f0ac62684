"""vital: VITAL feature visualisation for any image classifier.

>>> import vital
>>> results = vital.visualize("mobilenet_v2", ["espresso"], settings={"steps": 2}, progress=False)
>>> results[0].target.name, results[0].record.settings["parametrization"]  # setting "fast"
('espresso', 'fourier')

``setting=1`` runs the authors' own setting (2000 steps); ``out="vital-out"`` writes PNG + JSON.
"""

# ruff: noqa: E402  (the imports below come after the environment's check, on purpose)
from vital.environment import set_aside_unreadable_tqdm_settings

set_aside_unreadable_tqdm_settings()  # before torch imports tqdm, which would fail on them

from vital import concepts  # callable: vital.concepts(model, class, data, layer=...)
from vital.api import class_references, classify, visualize
from vital.errors import VitalError
from vital.explanation import Explanation, explain
from vital.methods import METHODS
from vital.mining import contact_sheet, mine, mined_references
from vital.optimize import Settings, learning_rate, transparency
from vital.presets import PRESETS, Tap
from vital.record import Record
from vital.references import ReferenceSet, from_folder, from_imagenet_class, from_samples
from vital.store import Result, ResultStore
from vital.taps import list_layers
from vital.targets import Channel, ClassTarget, Direction
from vital.version import __version__
from vital.zoo import MissingWeightsError, Model, Preprocessing, available_models, load_model

__all__ = [
    "PRESETS",
    "Channel",
    "ClassTarget",
    "Direction",
    "Explanation",
    "METHODS",
    "MissingWeightsError",
    "Model",
    "Preprocessing",
    "Record",
    "ReferenceSet",
    "Result",
    "ResultStore",
    "Settings",
    "Tap",
    "VitalError",
    "__version__",
    "available_models",
    "class_references",
    "classify",
    "concepts",
    "contact_sheet",
    "explain",
    "from_folder",
    "from_imagenet_class",
    "from_samples",
    "learning_rate",
    "list_layers",
    "load_model",
    "mine",
    "mined_references",
    "transparency",
    "visualize",
]
