"""Views and pure helpers of the sky page (:mod:`explorer.sky`).

The Mollweide projection (:func:`mollweide_inverse`, :func:`mollweide_forward`,
:func:`graticule`), the screen-resolution sampling of a HEALPix map (:func:`sample_mollweide`) and
the HoloViews views of the page: the map with its graticule and tap marker (:func:`sky_view`), the
patch (:func:`patch_view`) and the C_ℓ (:func:`cl_view`). Everything here works on plain data
(a :class:`explorer.sky.SkyResult`, a patch ``xarray.DataArray``) and the page's
``hv.streams.Pipe`` streams; the engine calls (making or loading the sky, cutting patches) and
the page state stay in :mod:`explorer.sky`.

Rendering. The Mollweide view is drawn at screen resolution for the visible range: an
``hv.DynamicMap`` driven by an ``hv.streams.RangeXY`` computes, for a regular grid of image pixels
over the visible part of the Mollweide plane, their (lon, lat) with the inverse projection
(:func:`mollweide_inverse`) and looks the HEALPix pixel up with ``healpy.ang2pix``. This is
datashader's rasterize-to-the-screen idea done exactly (every screen pixel samples one HEALPix
pixel), so it stays responsive at any nside and shows full detail when zoomed in.

Conventions: longitude increases to the left (the sky seen from inside, as ``healpy.mollview``),
lon = 0 at the centre; angles in degrees; C_ℓ plotted as D_ℓ = ℓ(ℓ+1)C_ℓ/2π (dimensionless for
κ, μK² for WMAP).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import healpy as hp
import holoviews as hv
import numpy as np

hv.extension("bokeh", logo=False)  # registers hv.opts for the Bokeh backend (idempotent)

#: Half axes of the Mollweide ellipse: x ∈ [−2√2, 2√2], y ∈ [−√2, √2].
X_MAX, Y_MAX = 2 * math.sqrt(2), math.sqrt(2)
#: Screen size of the Mollweide frame in pixels (also the sampling of the image).
FRAME = (720, 360)
#: WMAP temperatures are plotted in μK (file unit mK).
MK_TO_UK = 1e3


# ---------------------------------------------------------------------------------------------
# Mollweide projection (pure numpy)
# ---------------------------------------------------------------------------------------------


def mollweide_inverse(x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lon, lat) in degrees of Mollweide plane points, longitude increasing to the left.

    x = −(2√2/π) λ cos θ, y = √2 sin θ, 2θ + sin 2θ = π sin φ (λ = lon wrapped to (−180°, 180°],
    φ = lat). Returns lon in [0, 360), lat in [−90, 90] and a boolean ``inside`` (points outside
    the ellipse x²/8 + y²/2 ≤ 1 get lon = lat = nan).
    """
    x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    inside = (x / X_MAX) ** 2 + (y / Y_MAX) ** 2 <= 1.0
    theta = np.arcsin(np.clip(y / Y_MAX, -1.0, 1.0))
    lat = np.degrees(np.arcsin(np.clip((2 * theta + np.sin(2 * theta)) / math.pi, -1.0, 1.0)))
    cos_t = np.cos(theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(cos_t > 1e-12, -math.pi * x / (X_MAX * cos_t), 0.0)
    lon = np.mod(np.degrees(lam), 360.0)
    return np.where(inside, lon, np.nan), np.where(inside, lat, np.nan), inside


def mollweide_forward(lon, lat) -> tuple[np.ndarray, np.ndarray]:
    """Mollweide plane (x, y) of (lon, lat) in degrees; inverse of :func:`mollweide_inverse`.

    θ from 2θ + sin 2θ = π sin φ by Newton iterations (converged to 1e-10 rad in ≤ 30 steps,
    exact at the poles).
    """
    lon, lat = np.broadcast_arrays(np.asarray(lon, np.float64), np.asarray(lat, np.float64))
    phi = np.radians(lat)
    lam = np.radians((lon + 180.0) % 360.0 - 180.0)
    theta = phi.copy()
    target = math.pi * np.sin(phi)
    for _ in range(30):
        f = 2 * theta + np.sin(2 * theta) - target
        df = 2 + 2 * np.cos(2 * theta)
        step = np.where(df > 1e-12, f / np.where(df > 1e-12, df, 1.0), 0.0)
        theta = theta - step
        if np.all(np.abs(step) < 1e-10):
            break
    theta = np.where(np.abs(lat) >= 90, np.sign(phi) * math.pi / 2, theta)
    return -X_MAX / math.pi * lam * np.cos(theta), Y_MAX * np.sin(theta)


def sample_mollweide(
    sky_map: np.ndarray, x_range=None, y_range=None, shape: tuple[int, int] = FRAME
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Sample a HEALPix map (RING) on a regular grid of the Mollweide plane.

    Parameters
    ----------
    sky_map : ndarray (12 nside²,)
        Values; UNSEEN (and non-finite) pixels become nan, as do points outside the ellipse.
    x_range, y_range : (float, float), optional
        Visible part of the plane (default the whole ellipse).
    shape : (width, height)
        Image pixels.

    Returns
    -------
    image : ndarray (height, width) float64, first row at the top (largest y)
    bounds : (x0, y0, x1, y1) of the image in the Mollweide plane
    """
    x0, x1 = x_range if x_range is not None else (-X_MAX, X_MAX)
    y0, y1 = y_range if y_range is not None else (-Y_MAX, Y_MAX)
    w, h = shape
    xs = x0 + (np.arange(w) + 0.5) * (x1 - x0) / w
    ys = y1 - (np.arange(h) + 0.5) * (y1 - y0) / h
    lon, lat, inside = mollweide_inverse(xs[None, :], ys[:, None])
    nside = hp.npix2nside(sky_map.size)
    out = np.full(inside.shape, np.nan)
    pix = hp.ang2pix(nside, lon[inside], lat[inside], lonlat=True)
    vals = sky_map[pix]
    vals = np.where(np.isfinite(vals) & (vals != hp.UNSEEN), vals, np.nan)
    out[inside] = vals
    return out, (x0, y0, x1, y1)


def graticule(step_lon: float = 60.0, step_lat: float = 30.0) -> list[np.ndarray]:
    """Meridians and parallels (and the outline) as Mollweide-plane paths, (M, 2) arrays."""
    paths = []
    t = np.linspace(-90, 90, 91)
    for lon in np.arange(-180 + step_lon, 180, step_lon):
        x, y = mollweide_forward(np.full_like(t, lon), t)
        paths.append(np.column_stack([x, y]))
    s = np.linspace(-179.999, 179.999, 181)
    for lat in np.arange(-90 + step_lat, 90, step_lat):
        x, y = mollweide_forward(s, np.full_like(s, lat))
        paths.append(np.column_stack([x, y]))
    a = np.linspace(0, 2 * math.pi, 361)
    paths.append(np.column_stack([X_MAX * np.cos(a), Y_MAX * np.sin(a)]))
    return paths


# ---------------------------------------------------------------------------------------------
# Views (HoloViews, fed by the page's Pipe streams)
# ---------------------------------------------------------------------------------------------


def sky_image(result, x_range=None, y_range=None) -> hv.Image:
    """The Mollweide map of a :class:`explorer.sky.SkyResult` for the visible range.

    Parameters
    ----------
    result : SkyResult
        The sky shown (its ``values``, ``unit``, ``source`` and ``clim``).
    x_range, y_range : (float, float), optional
        Visible part of the Mollweide plane (default the whole ellipse).

    Returns
    -------
    hv.Image
        kdims (mx, my), one value dimension (κ or T, ranged ``result.clim``), :data:`FRAME` pixels.
    """
    img, bounds = sample_mollweide(result.values, x_range, y_range)
    unit = f" ({result.unit})" if result.unit else ""
    name = "kappa" if result.source == "kappa" else "T"
    value = hv.Dimension(name, label=("κ" if name == "kappa" else "T") + unit)
    return hv.Image(img, bounds=bounds, kdims=["mx", "my"], vdims=[value.clone(range=result.clim)])


def sky_view(
    sky_pipe: hv.streams.Pipe,
    marker_pipe: hv.streams.Pipe,
    current: Callable,
    on_tap: Callable,
) -> hv.Overlay:
    """Mollweide map (resampled for the visible range), graticule, tap marker; Tap stream.

    Parameters
    ----------
    sky_pipe : hv.streams.Pipe
        Sends the :class:`explorer.sky.SkyResult` to show (None: ``current()``).
    marker_pipe : hv.streams.Pipe
        Sends the tap marker's ([x], [y]) in the Mollweide plane.
    current : callable () -> SkyResult
        The sky shown while ``sky_pipe`` has sent nothing.
    on_tap : callable (x, y)
        What a click at (x, y) of the Mollweide plane does.

    Returns
    -------
    hv.Overlay
        Grey disc (masked pixels), the map, the graticule and the marker.
    """

    def image(data=None, x_range=None, y_range=None) -> hv.Image:
        return sky_image(data or current(), x_range, y_range)

    dmap = hv.DynamicMap(image, streams=[sky_pipe, hv.streams.RangeXY()])
    dmap = dmap.opts(
        hv.opts.Image(
            cmap="RdBu_r",
            colorbar=True,
            frame_width=FRAME[0],
            frame_height=FRAME[1],
            xaxis=None,
            yaxis=None,
            framewise=False,
            title="Click the sky to cut a patch",
            active_tools=["wheel_zoom"],
            tools=["hover"],
        )
    )
    tap = hv.streams.Tap(source=dmap)
    tap.add_subscriber(lambda x=None, y=None: on_tap(x, y))
    # masked pixels (nan) show this grey ellipse; outside the ellipse stays white
    a = np.linspace(0, 2 * math.pi, 361)
    disc = hv.Polygons([{"mx": X_MAX * np.cos(a), "my": Y_MAX * np.sin(a)}], kdims=["mx", "my"])
    disc = disc.opts(color="#d9d9d9", line_alpha=0)
    grid = hv.Path(graticule(), kdims=["mx", "my"]).opts(
        color="#525252", alpha=0.35, line_width=0.8
    )
    marker = hv.DynamicMap(
        lambda data: hv.Points(data, kdims=["mx", "my"]), streams=[marker_pipe]
    ).opts(hv.opts.Points(color="black", marker="x", size=14, line_width=3))
    return (disc * dmap * grid * marker).opts(hv.opts.Overlay(toolbar="above"))


def patch_image(data=None, value_label: str = "value", fov: float = 10.0) -> hv.Image:
    """A patch as an image, x/y in arcmin, north up, unobserved pixels nan.

    Parameters
    ----------
    data : xarray.DataArray (y, x), optional
        The patch (:func:`explorer.sky.extract`); None: an empty placeholder.
    value_label : str
        Label of the value axis.
    fov : float
        Field of view (deg) of the placeholder.
    """
    arcmin = hv.Dimension("x", label="x", unit="arcmin")
    kdims = [arcmin, arcmin.clone("y", label="y")]
    if data is None:
        ext = fov * 60
        value = hv.Dimension("value", label=value_label, range=(-1, 1))
        img = hv.Image(np.zeros((2, 2)), bounds=(0, 0, ext, ext), kdims=kdims, vdims=[value])
        return img.opts(title="No patch yet: click the sky")
    scale = MK_TO_UK if data.attrs.get("units") == "mK" else 1.0
    ext = float(data.attrs["fov"]) * 60.0
    v = np.asarray(data.values, dtype=np.float64) * scale
    if "mask" in data.coords:  # unobserved pixels (0 in the patch) show grey
        v = np.where(np.asarray(data.mask) > 0, v, np.nan)
    v = np.flipud(v)  # row 0 is the southern edge: north up
    a = float(np.nanpercentile(np.abs(v), 99.5)) if np.isfinite(v).any() else 1.0
    value = hv.Dimension("value", label=value_label, range=(-(a or 1.0), a or 1.0))
    lon, lat = float(data.lon), float(data.lat)
    return hv.Image(v, bounds=(0, 0, ext, ext), kdims=kdims, vdims=[value]).opts(
        title=f"Patch at lon {lon:.1f}°, lat {lat:.1f}°"
    )


def patch_view(patch_pipe: hv.streams.Pipe, source: str, fov: Callable) -> hv.DynamicMap:
    """The last patch, x/y in arcmin, north up, unobserved pixels grey.

    Parameters
    ----------
    patch_pipe : hv.streams.Pipe
        Sends the patch (None: placeholder).
    source : {"kappa", "wmap"}
        Sets the value label.
    fov : callable () -> float
        The patch field of view (deg), read when the placeholder is drawn.
    """
    value_label = "T (μK)" if source == "wmap" else "κ"
    return hv.DynamicMap(
        lambda data: patch_image(data, value_label, fov()), streams=[patch_pipe]
    ).opts(
        hv.opts.Image(
            cmap="RdBu_r",
            frame_width=300,
            frame_height=300,
            data_aspect=1,
            framewise=True,
            colorbar=True,
            clipping_colors={"NaN": "#d9d9d9"},
            tools=["hover"],
        )
    )


def cl_view(sky_pipe: hv.streams.Pipe, source: str, current: Callable) -> hv.DynamicMap:
    """Measured D_ℓ of the shown sky against its theory (axes follow the data).

    Parameters
    ----------
    sky_pipe : hv.streams.Pipe
        Sends the :class:`explorer.sky.SkyResult` to show (None: ``current()``).
    source : {"kappa", "wmap"}
        Sets the unit (μK² for WMAP).
    current : callable () -> SkyResult
        The sky shown while ``sky_pipe`` has sent nothing.
    """
    unit = "μK²" if source == "wmap" else None
    ell = hv.Dimension("ell", label="ℓ")
    dl = hv.Dimension("dl", label="ℓ(ℓ+1)C_ℓ/2π", unit=unit)

    def overlay(data=None):
        r = data or current()
        measured = hv.Curve((r.ell, positive(r.dl)), ell, dl, label="measured (anafast)")
        theory = hv.Curve((r.ell, positive(r.dl_theory)), ell, dl, label=r.theory_label or "theory")
        return measured.opts(color="#d62728") * theory.opts(color="#08519c", line_dash="dashed")

    return hv.DynamicMap(overlay, streams=[sky_pipe]).opts(
        hv.opts.Overlay(
            logx=True,
            logy=True,
            framewise=True,
            frame_width=420,
            frame_height=220,
            legend_position="bottom_right",
            title="Angular power spectrum of the sky",
        ),
        hv.opts.Curve(line_width=2, framewise=True, tools=["hover"]),
    )


def positive(a) -> np.ndarray:
    """``a`` as float64 with the values ≤ 0 (and nan) set to nan, for log axes."""
    a = np.asarray(a, dtype=np.float64)
    return np.where(a > 0, a, np.nan)


#: The page's explanation, shown under the plots (Markdown).
ABOUT = """
### What you are looking at

**Map.** A HEALPix sky in Mollweide projection (longitude increasing to the left, grid every
60° × 30°; grey: unobserved). The synthesized κ sky is a Gaussian realisation of the
pyccl Limber C<sub>ℓ</sub> of the field lab's κ maps, with shape noise and smoothing, on the
full sky or a DES-like footprint. The WMAP map is the 7-year W-band (94 GHz) temperature at
nside 32 (≈ 1.8° pixels): the CMB plus, without the analysis mask, the Galaxy's emission along
the equator.

**C<sub>ℓ</sub>.** healpy's anafast of the observed pixels (monopole removed; a pseudo-C<sub>ℓ</sub>,
≈ f<sub>sky</sub> C<sub>ℓ</sub> on a cut sky), as ℓ(ℓ+1)C<sub>ℓ</sub>/2π.

**Patches.** A click cuts a gnomonic (tangent-plane) patch centred there, bilinearly
interpolated from the HEALPix pixels, north up; "Open patch in field lab" measures it there.
"""
