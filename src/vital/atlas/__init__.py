"""The atlas: every selected unit visualised, recorded in one store, browsable as a static site."""

from vital.atlas.build import BuildReport, ModelSpec, build_atlas, plan_units
from vital.atlas.folder import Atlas
from vital.atlas.serve import make_server
from vital.atlas.site import render_site

__all__ = [
    "AddedConcepts",
    "Atlas",
    "BuildReport",
    "ModelSpec",
    "add_concepts",
    "build_atlas",
    "make_server",
    "plan_units",
    "render_site",
]


def __getattr__(name: str):
    # vital.atlas.concepts runs vital.concepts, whose package imports the explanation pipeline,
    # which imports this package: loading it on first use keeps the import order free.
    if name in ("AddedConcepts", "add_concepts"):
        from vital.atlas import concepts

        return getattr(concepts, name)
    raise AttributeError(f"module 'vital.atlas' has no attribute {name!r}")
