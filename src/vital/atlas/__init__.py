"""The atlas: every selected unit visualised, recorded in one store, browsable as a static site."""

from vital.atlas.build import BuildReport, ModelSpec, build_atlas, plan_units
from vital.atlas.folder import Atlas
from vital.atlas.serve import make_server
from vital.atlas.site import render_site

__all__ = [
    "Atlas",
    "BuildReport",
    "ModelSpec",
    "build_atlas",
    "make_server",
    "plan_units",
    "render_site",
]
