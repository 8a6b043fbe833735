"""``tlsearch init DATA``: a first study file, written for the data at hand.

A newcomer has a folder of images or a table of texts, not a study file. :mod:`.survey` reads the
data with the readers a run uses (so whatever would stop a run stops here, naming the file), and
measures what the recipe depends on: modality, classes and their counts, image sizes or text
lengths. :mod:`.recipe` turns those measurements into choices, each with the reason it was made,
and times the result on this machine with the cost estimate to set a budget. :mod:`.render`
writes the choices as a YAML study file whose comments carry those reasons.
"""

from __future__ import annotations

from tlsearch.starter.recipe import Recipe, make_recipe
from tlsearch.starter.render import render
from tlsearch.starter.survey import DataSurvey, survey

__all__ = ["DataSurvey", "survey", "Recipe", "make_recipe", "render"]
