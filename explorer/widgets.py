"""Widget keywords that work across Panel versions.

Panel 1.9 renamed the widget ``name`` to ``label`` and the button ``button_type`` /
``button_style`` to ``color`` / ``variant`` (the old names warn); ``pyproject.toml`` allows
Panel ≥ 1.4, which only knows the old ones.
"""

from __future__ import annotations

import panel as pn

_NEW_NAMES = "label" in pn.widgets.Widget.param


def label(text: str) -> dict:
    """Keyword argument setting a widget's visible label."""
    return {"label": text} if _NEW_NAMES else {"name": text}


def look(color: str, variant: str | None = None) -> dict:
    """Keyword arguments of a button's colour ('primary', 'warning', …) and variant ('outline')."""
    if _NEW_NAMES:
        return {"color": color, **({"variant": variant} if variant else {})}
    return {"button_type": color, **({"button_style": variant} if variant else {})}


class LiveFloatSlider(pn.widgets.FloatSlider):
    """A ``FloatSlider`` whose moves reach the Python side at once (for live views).

    Panel runs the Python side of a browser change 50 ms after it arrives
    (``Syncable._debounce``), to batch bursts of changes; it skips that wait for the properties
    named in ``_priority_changes``. The field lab coalesces bursts itself (only the latest
    update is computed), so the wait only added 50 ms to every slider step, measured with
    ``benchmarks/browser.py``. Its value changes do not toggle Panel's global busy state either.
    """

    _priority_changes = ["value", "value_throttled"]
    # Panel raises and lowers its process-wide busy state around every browser event (~1 ms of
    # the event loop per event, two events per key press); the explorer shows its own
    # "updating…" and no global busy indicator.
    _busy__ignore = ["value", "value_throttled"]
