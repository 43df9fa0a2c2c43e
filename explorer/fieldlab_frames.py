"""Field lab, the frames: the columns the figures of :mod:`explorer.fieldlab_views` show.

Pure numpy and thread-safe, computed in a worker thread next to the map: :func:`frame_data`
(map coloured on the server as packed RGBA, its float32 values for the hover apart, spectrum
against theory with its cosmic-variance band), :func:`secondary_data` (pixel PDF with a
Gaussian of the same σ, peak counts, and the axis ranges of both figures) that a served page
sends once the updates pause, the colour range rounded by :func:`nice_ceil` so that a slider
step keeps the scale, and :func:`same_columns`, which decides what is sent again.
"""

from __future__ import annotations

import math

import numpy as np
from holoviews.plotting.util import process_cmap

from explorer.fieldlab_measure import FieldLabResult

#: Colour map of the map (the palette HoloViews draws for "RdBu_r").
MAP_PALETTE = tuple(process_cmap("RdBu_r", 256))
#: The palette as packed RGBA (uint32, little-endian bytes R, G, B, A: Bokeh's ``image_rgba``).
MAP_RGBA = np.array(
    [
        int(c[1:3], 16) | int(c[3:5], 16) << 8 | int(c[5:7], 16) << 16 | 255 << 24
        for c in MAP_PALETTE
    ],
    dtype=np.uint32,
)


#: Mantissas of :func:`nice_ceil`.
NICE = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 10.0)


def nice_ceil(value: float) -> float:
    """The smallest of 1, 1.5, 2, 3, 5, 7 × 10ⁿ that is ≥ ``value`` (same units; 1.0 for 0,
    negative or non-finite values, never raises): a colour range that stays put while a map
    changes by a few per cent."""
    if not (math.isfinite(value) and value > 0):
        return 1.0
    decade = 10.0 ** math.floor(math.log10(value))
    for m in NICE:
        if m * decade >= value * (1 - 1e-12):
            return m * decade
    return 10.0 * decade


def colour_map(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """``image`` coloured with :data:`MAP_PALETTE` over [low, high], as Bokeh ``image_rgba`` data.

    Parameters
    ----------
    image : ndarray (ny, nx), float
    low, high : float
        Values mapped to the first and last colour (values outside are clipped), high > low.

    Returns
    -------
    ndarray (ny, nx), uint32
        Packed RGBA, the same bins as Bokeh's ``LinearColorMapper`` with this palette;
        non-finite values transparent.
    """
    n = len(MAP_RGBA)
    scaled = (np.asarray(image, dtype=np.float64) - low) * (n / (high - low))
    rgba = MAP_RGBA[np.clip(np.nan_to_num(scaled, nan=0.0), 0, n - 1).astype(np.intp)]
    rgba[~np.isfinite(scaled)] = 0  # transparent, as Bokeh draws NaN
    return rgba


def _padded(lo: float, hi: float, pad: float = 0.05) -> tuple[float, float]:
    """(lo, hi) widened by ``pad`` of the span on each side (a point range gets ±0.5)."""
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    if hi <= lo:
        return lo - 0.5, hi + 0.5
    d = pad * (hi - lo)
    return lo - d, hi + d


def nice_span(lo: float, hi: float, steps: int = 8) -> tuple[float, float]:
    """(lo, hi) widened outwards to multiples of a round step (:func:`nice_ceil` of the span /
    ``steps``; same units): an axis range that stays put while a slider moves the data a little
    (a new range re-lays out the axis and repaints the figure's overlays). Non-finite: (0, 1);
    a point: ±0.5."""
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    if hi <= lo:
        return lo - 0.5, hi + 0.5
    step = nice_ceil((hi - lo) / steps)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step


def frame_data(result: FieldLabResult, with_map: bool = True, secondary: bool = True) -> dict:
    """Columns of every data source of :class:`explorer.fieldlab_views.FieldFigures` for ``result`` (pure, thread-safe).

    Parameters
    ----------
    result : FieldLabResult
    with_map : bool
        Include the map (``False`` when a rasterized HoloViews view draws it).
    secondary : bool
        Include the PDF and peak-count columns (:func:`secondary_data`); a served page sends
        them only once the updates pause, and adds them then.

    Returns
    -------
    dict
        Source name → columns; ``"clim"``: the symmetric colour range (−a, a) of the map, ``a``
        the 99.5 % quantile of |value| rounded up to 1, 1.5, 2, 3, 5 or 7 × 10ⁿ
        (:func:`nice_ceil`; map units): a step of a slider keeps the scale, so the map's
        contrast shows the change of amplitude (and the colour bar is not redrawn). The map goes
        as RGBA coloured over ``clim`` (source ``"map"``, column ``image``) and as float32 values
        for the hover (source ``"hover"``, column ``value``), row 0 at y = ½ pixel (Bokeh draws row 0 at the bottom). With
        ``secondary``, also the items of :func:`secondary_data`.
    """
    st = result.style
    k = st.k
    lower = np.maximum(result.pk_expected - result.pk_sigma, 1e-3 * result.pk_expected)
    xs = np.array([x for x, _ in result.markers], dtype=np.float64)
    frame = {
        "band": {k: result.k, "lower": lower, "upper": result.pk_expected + result.pk_sigma},
        "theory": {k: result.k_theory, "P": result.pk_theory},
        "noise": {k: result.k_theory, "P": result.noise_theory},
        "measured": {k: result.k, "P": result.pk},
        "markers": {
            k: xs,
            "x_text": xs * 1.08,
            "P": np.full(xs.shape, st.p_range[1] / 3),
            "text": [t for _, t in result.markers],
        },
    }
    if secondary:
        frame.update(secondary_data(result))
    if with_map:
        a = nice_ceil(float(np.percentile(np.abs(result.map), 99.5)))
        values = np.ascontiguousarray(result.map, dtype=np.float32)
        frame["map"] = {
            "image": [colour_map(values, -a, a)],
            "x": [0.0],
            "y": [0.0],
            "dw": [st.extent],
            "dh": [st.extent],
        }
        frame["hover"] = {"value": [values]}
        frame["clim"] = (-a, a)
    return frame


def secondary_data(result: FieldLabResult) -> dict:
    """Columns of the PDF and peak-count sources of :class:`explorer.fieldlab_views.FieldFigures` (pure, thread-safe;
    computes the result's pixel statistics on first use).

    Returns
    -------
    dict
        ``"pdf"``, ``"gauss"`` (a Gaussian of the map's σ and PDF mean), ``"peaks"`` columns,
        and ``"ranges"``: (x, y) axis ranges of the PDF and peak-count figures, rounded out
        (:func:`nice_span`, :func:`nice_ceil`) so that a slider step keeps them.
    """
    st = result.style
    x = result.pdf_x
    half = 0.5 * (x[1] - x[0]) if len(x) > 1 else 0.5
    sigma = result.sigma or 1.0
    mean = float(np.sum(x * result.pdf_density) / max(np.sum(result.pdf_density), 1e-300))
    gauss = np.exp(-0.5 * ((x - mean) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    out = {
        "pdf": {"left": x - half, "right": x + half, "top": result.pdf_density},
        "gauss": {st.value: x, "pdf": gauss},
        "peaks": {"nu": result.peak_nu, "peaks": result.peak_counts},
    }
    top = np.nanmax(result.pdf_density, initial=0.0)
    counts = np.asarray(result.peak_counts, dtype=np.float64)
    out["ranges"] = {
        "pdf": (nice_span(x[0] - half, x[-1] + half) if len(x) else (0.0, 1.0),
                (0.0, nice_ceil(1.05 * max(top, float(np.nanmax(gauss, initial=0.0)))))),
        "peaks": (_padded(np.min(result.peak_nu, initial=0.0), np.max(result.peak_nu, initial=1.0), 0.02),
                  (0.0, nice_ceil(1.05 * np.nanmax(counts, initial=0.0)))),
    }  # fmt: skip
    return out


def complete_frame(frame: dict, result: FieldLabResult) -> dict:
    """``frame`` (of :func:`frame_data` for ``result``) with the secondary columns added in
    place if it lacks them; returns it."""
    if "pdf" not in frame:
        frame.update(secondary_data(result))
    return frame


#: Sources of the main views (map, spectrum against theory) and of those that follow once the
#: updates pause: PDF, peaks and the map's float32 values, read only by the hover tool, in a
#: source of their own that no glyph draws. Sent with the map's colours, the 256² values cost the
#: page ~15 ms of renderer CPU per step (``benchmarks/browser.py`` ablation); as a column of the
#: drawn image they made the settled update redraw the map too (Bokeh re-makes an image's
#: canvases whenever any column of its source changes). The hover shows the previous map's
#: values until the updates pause (0.25 s).
PRIMARY = ("map", "band", "theory", "noise", "measured", "markers")
SECONDARY = ("pdf", "gauss", "peaks", "hover")


def same_columns(old: dict | None, new: dict) -> bool:
    """Whether two column dicts (name → array, list of arrays or scalar) hold equal columns:
    arrays compared by value, NaN equal to NaN; ``old`` None (nothing shown yet) is never
    equal. Never raises for mismatched shapes or dtypes (not equal)."""
    if old is None or old.keys() != new.keys():
        return False
    for key, a in new.items():
        b = old[key]
        if a is b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b) or not all(_same_values(x, y) for x, y in zip(a, b, strict=True)):
                return False
        elif not _same_values(a, b):
            return False
    return True


def _same_values(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        nan = a.dtype.kind in "fc"  # equal_nan only for numbers
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=nan)
    return a == b
