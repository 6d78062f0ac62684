"""Explaining a prediction: the channels of a layer that carried it, each with its VITAL picture.

``explain`` (:mod:`.pipeline`) runs the steps: relevance of every channel from the class logit
and conditional heatmaps (:mod:`.attribution`), dataset examples from a mining pass, pictures
reused or computed (:mod:`.pictures`), the record (:mod:`.record`) and its page in the atlas.
"""

from vital.explanation.attribution import ChannelRelevance, attributor
from vital.explanation.pipeline import explain, load_image
from vital.record import ChannelEvidence, Explanation

__all__ = [
    "ChannelEvidence",
    "ChannelRelevance",
    "Explanation",
    "attributor",
    "explain",
    "load_image",
]
