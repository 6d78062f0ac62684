"""The record of one explanation: every number its page shows, schema-versioned JSON.

An :class:`Explanation` says which image, model, layer, class and relevance backend were used,
what the model predicted, the relevance of every channel of the layer, and for the top channels
(:class:`ChannelEvidence`) their relevance and share, their conditional heatmap, their mined
dataset examples (with scores and boxes) and their VITAL picture (the atlas record it links to,
and whether it was reused or computed). Files are paths relative to the atlas folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vital.errors import VitalError
from vital.record import Document, finite, now

SCHEMA_VERSION = 1


@dataclass
class ChannelEvidence:
    """One of the channels that carried the prediction.

    Attributes
    ----------
    channel, rank
        Channel index in the layer; 0 for the most relevant.
    relevance
        The channel's relevance for the class, summed over the layer's positions (signed).
    share
        ``relevance`` divided by the sum of the absolute relevances of all channels.
    activation_mean, activation_max
        The channel's mean and largest activation on the image.
    heatmap
        File of the conditional heatmap (relevance through this channel only).
    heatmap_total
        The conditional heatmap's sum over the input pixels.
    layer_map
        File of the channel's relevance at the layer itself (its positions, scaled up to the
        image): where in the layer's map the channel was relevant; ``None`` for token layers.
    examples
        Mined dataset examples, best first: ``image`` (path), ``label``, ``score`` (the best
        patch's mean activation), ``image_score`` (the crop's largest activation), ``box``
        ([left, top, side] on the centre crop), ``crop`` (its side), ``thumbnail`` and
        ``patch`` (files).
    picture
        The channel's VITAL picture: ``unit``, ``record``/``png``/``rgba`` (files),
        ``source`` (``atlas``, ``store …`` or ``computed``), ``key``; ``None`` when there
        is none.
    """

    channel: int
    rank: int
    relevance: float
    share: float
    activation_mean: float
    activation_max: float
    heatmap: str
    heatmap_total: float
    layer_map: str | None = None
    examples: list[dict] = field(default_factory=list)
    picture: dict | None = None


@dataclass
class Explanation(Document):
    """Why a model gave an image its class, in terms of one layer's channels.

    Attributes
    ----------
    slug
        File-name stem of the explanation inside the atlas.
    model
        :func:`vital.record.model_info` of the model.
    image
        ``source`` (path or description), ``identity``, ``crop`` (side of the centre crop the
        model saw), ``file`` (that crop, in the atlas).
    layer, relevance
        The explained layer and the relevance backend.
    prediction
        The top class: ``index``, ``name``, ``probability``, ``logit``.
    top5
        The five most probable classes, each like ``prediction``.
    explained
        The explained class (the prediction unless one was given): like ``prediction``, with
        ``rank`` and ``given``.
    channels
        Every channel's relevance, summed over positions, in channel order.
    total, absolute_total
        Sum of ``channels`` and of their absolute values.
    heatmap
        ``file`` of the input heatmap and its ``total``.
    top
        The most relevant channels, best first.
    mining
        Where the dataset examples came from: ``database``, ``data``, ``settings``,
        ``scanned`` (``None`` without data).
    pictures
        How pictures are made: ``method``, ``setting``, ``overrides``, ``seed``,
        ``references`` (count and mode).
    notes
        Caveats.
    files
        ``json`` (this record) and ``page``.
    """

    slug: str
    model: dict
    image: dict
    layer: str
    relevance: str
    prediction: dict
    top5: list[dict]
    explained: dict
    channels: list[float]
    total: float
    absolute_total: float
    heatmap: dict
    top: list[ChannelEvidence]
    mining: dict | None = None
    pictures: dict | None = None
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    vital_version: str = ""
    created: str = field(default_factory=now)
    schema: int = SCHEMA_VERSION

    kind: ClassVar[str] = "explanation"
    version: ClassVar[int] = SCHEMA_VERSION

    def to_dict(self) -> dict:
        """Plain data, with non-finite numbers as ``None``."""
        return finite(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Any) -> Explanation:
        """Read :meth:`to_dict` output."""
        known = cls.known_fields(data)
        try:
            evidence = {f.name for f in dataclasses.fields(ChannelEvidence)}
            known["top"] = [
                ChannelEvidence(**{k: v for k, v in item.items() if k in evidence})
                for item in known.get("top", [])
            ]
            return cls(**known)
        except TypeError as error:
            raise VitalError(f"not a vital explanation record: {error}") from error
