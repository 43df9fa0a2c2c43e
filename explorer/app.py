"""The explorer application: the field lab, sky, training, generate, lensing, CMB and compare
pages in one layout.

:func:`create_app` builds a fresh layout for one browser session; ``explorer/main.py`` (the
entry point of ``panel serve explorer``) calls it and marks the result servable.
"""

from __future__ import annotations

from pathlib import Path

import panel as pn
from bokeh.core.validation import silence
from bokeh.core.validation.warnings import FIXED_SIZING_MODE

from explorer import browser_fixes
from explorer.cmb import CMBPage
from explorer.compare import ComparePage
from explorer.fieldlab import FieldLab
from explorer.generate import GeneratePage
from explorer.lensing import LensingPage
from explorer.sky import SkyPage
from explorer.training import TrainingController, default_examples_root

TITLE = "Cosmo map lab — explorer"

# HoloViews sizes figures by frame_width/frame_height, which Bokeh's validator flags as a fixed
# sizing mode without width/height on every redraw; the layout is intended.
silence(FIXED_SIZING_MODE, True)

#: Page-wide CSS: a compact header bar.
CSS = """
.explorer-header { background: #1f3b57; color: white; padding: 6px 16px; border-radius: 4px; }
.explorer-header h2 { margin: 4px 0; color: white; }
.explorer-header p { margin: 0 0 4px 0; color: #d0dbe6; }
"""


def header() -> pn.pane.HTML:
    """Title bar of the page."""
    return pn.pane.HTML(
        "<div class='explorer-header'><h2>Cosmo map lab</h2>"
        "<p>Matter density, 2LPT and weak-lensing maps and skies, their spectra against theory, "
        "networks that infer Ω<sub>m</sub> and σ<sub>8</sub> from them, and emulators that "
        "generate them.</p></div>",
        stylesheets=[CSS],
        sizing_mode="stretch_width",
    )


def create_app(
    runs_root: str | Path | None = None, examples_root: str | Path | None = None
) -> pn.viewable.Viewable:
    """Build the explorer for the current session: header plus Field lab / Sky / Training /
    Generate / Lensing / CMB / Compare tabs.

    In a served session the training page polls its run every 500 ms while its tab is shown
    (every 5 s while hidden) until the session ends,
    and field-lab updates are computed in worker threads and shown through the session's document.

    Parameters
    ----------
    runs_root : str or Path, optional
        Runs folder of the training page (default ``$EXPLORER_RUNS_DIR`` or ``runs/``).
    examples_root : str or Path, optional
        Read-only example runs listed on the training page, shipped generators listed on the
        generate page, the classifiers and lens generators of the lensing page and the
        delensing networks of the CMB page (default
        ``$EXPLORER_EXAMPLES_DIR`` or ``assets/models/``).
    """
    doc = (
        pn.state.curdoc if pn.state.curdoc is not None and pn.state.curdoc.session_context else None
    )
    if doc is not None:
        browser_fixes.install(doc)
    lab = FieldLab(doc=doc)
    examples = examples_root if examples_root is not None else default_examples_root()
    trainer = TrainingController(runs_root=runs_root, examples_root=str(examples))
    if doc is not None:
        trainer.start(shown=False)  # the field lab is the first tab shown
    tabs = pn.Tabs(dynamic=True)

    def open_in_lab(patch, source: str) -> None:  # the sky page hands a patch to the field lab
        lab.show_map(patch, source=source)
        tabs.active = 0

    sky = SkyPage(on_open=open_in_lab)
    # the Compare page reads its example maps and domain gap only once its tab is shown
    comparison = ComparePage(runs_root=runs_root, doc=doc, visible=False)
    if doc is not None:
        comparison.start(shown=False)
    # the Generate page loads its generator only once its tab is shown
    generate = GeneratePage(runs_root=runs_root, examples_root=examples, doc=doc, visible=False)
    # the Lensing page computes its first image and finds its classifier once its tab is shown
    lensing = LensingPage(runs_root=runs_root, examples_root=examples, doc=doc, visible=False)
    # the CMB page finds its delenser and computes its first sky once its tab is shown
    cmb = CMBPage(runs_root=runs_root, examples_root=examples, doc=doc, visible=False)
    pages = [
        ("Field lab", lab),
        ("Sky", sky),
        ("Training", trainer),
        ("Generate", generate),
        ("Lensing", lensing),
        ("CMB", cmb),
        ("Compare", comparison),
    ]
    tabs.extend(pages)
    index = {title: i for i, (title, _) in enumerate(pages)}

    def show_tab(event) -> None:
        # the pages that poll engine processes poll slowly while hidden (SessionPolling.shown)
        trainer.shown(event.new == index["Training"])
        comparison.shown(event.new == index["Compare"])
        if event.new == index["Compare"]:
            comparison.visible = True
        elif event.new == index["Generate"]:
            generate.refresh_generators()  # runs trained since the page was opened
            generate.visible = True
        elif event.new == index["Lensing"]:
            lensing.visible = True
        elif event.new == index["CMB"]:
            cmb.visible = True

    tabs.param.watch(show_tab, "active")
    return pn.Column(header(), tabs, sizing_mode="stretch_width")
