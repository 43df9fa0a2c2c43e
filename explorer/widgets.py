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
