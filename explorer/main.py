"""Entry point of ``panel serve explorer`` (a Bokeh directory app); runs once per session."""

import sys
from pathlib import Path

# Served from a checkout without ``pip install -e .``: make ``engine`` and ``explorer`` importable.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import panel as pn  # noqa: E402

from explorer.app import TITLE, create_app  # noqa: E402

pn.extension("tabulator")  # the Compare page's table
create_app().servable(title=TITLE)
