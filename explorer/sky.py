"""Sky page: a HEALPix map in Mollweide projection, its C_ℓ, and patches cut where you click.

Sources: a synthesized full-sky κ map (:func:`engine.physics.sky.generate`; nside 64/128/256, footprint
full or DES-like) or the real WMAP 7-year W-band temperature map (nside 32, in mK; optionally with
its temperature analysis mask), found through :mod:`explorer.data`.

Two modules:

* :mod:`explorer.sky_views`: the Mollweide projection, the screen-resolution sampling of a HEALPix
  map and the HoloViews views (map, patch, C_ℓ), all on plain data and the page's
  ``hv.streams.Pipe`` streams;
* this module: the sky sources (:func:`compute_sky`, :class:`SkyResult`, :func:`extract`: the
  engine calls) and the page state :class:`SkyPage`. The projection helpers and constants of
  :mod:`explorer.sky_views` stay importable from here.

Rendering. The Mollweide view is drawn at screen resolution for the visible range: an
``hv.DynamicMap`` driven by an ``hv.streams.RangeXY`` samples the HEALPix map on a regular grid
of image pixels of the visible part of the Mollweide plane (:func:`explorer.sky_views.sky_view`).

Click-to-extract. An ``hv.streams.Tap`` on the map gives (x, y) in the Mollweide plane →
(lon, lat) → :func:`engine.physics.sky.extract_patches` cuts a gnomonic patch (field of view and size
from :class:`engine.physics.lensing.KappaParams`' ``fov`` and ``size`` definitions) shown next to the
sky; "Open in field lab" hands it to :meth:`explorer.fieldlab.FieldLab.show_map`.

Conventions: longitude increases to the left (the sky seen from inside, as ``healpy.mollview``),
lon = 0 at the centre; angles in degrees; C_ℓ plotted as D_ℓ = ℓ(ℓ+1)C_ℓ/2π (dimensionless for
κ, μK² for WMAP).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import healpy as hp
import holoviews as hv
import numpy as np
import panel as pn
import param
import xarray as xr

from engine.params import ConfigError, to_dict
from engine.physics import sky as esky
from engine.physics.lensing import KappaParams
from explorer import data as realdata
from explorer import sky_views as views
from explorer.fieldlab_kinds import Control
from explorer.fieldlab_views import labelled, setting_widget
from explorer.sky_views import (
    ABOUT,
    FRAME,
    MK_TO_UK,
    X_MAX,
    Y_MAX,
    graticule,
    mollweide_forward,
    mollweide_inverse,
    sample_mollweide,
)
from explorer.widgets import label, look

hv.extension("bokeh", logo=False)

#: HEALPix resolutions offered for synthesized skies.
NSIDES = (64, 128, 256)
#: Patch sizes offered (pixels per side).
PATCH_SIZES = (64, 128, 256)


# ---------------------------------------------------------------------------------------------
# Sky sources (pure)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class SkyResult:
    """One sky ready to draw and cut.

    Attributes
    ----------
    source : str
        "kappa" or "wmap".
    sky : xarray.DataArray (sample=1, pixel) for κ, (pixel,) for WMAP
        The map (RING, UNSEEN where unobserved), attrs units and (κ) the settings and coords
        omega_m, sigma8; the input of :func:`engine.physics.sky.extract_patches`.
    values : ndarray (npix,) float64
        Plotted values (κ, or T in μK), nan where unobserved.
    nside : int
    unit : str
        Unit of ``values`` ("" for κ, "μK").
    title : str
    clim : (float, float)
        Symmetric colour range (99.5 % of |value| over observed pixels).
    ell, dl : ndarray (L,)
        ℓ = 2…lmax and the measured D_ℓ = ℓ(ℓ+1)Ĉ_ℓ/2π (pseudo-C_ℓ of the observed pixels),
        in ``unit``².
    dl_theory : ndarray (L,)
        Expected D_ℓ: f_sky × the κ sky's theory (engine.physics.sky.sky_cl), or for masked WMAP
        healpy's reference spectrum (nan beyond it); nan where none.
    theory_label : str
    fsky : float
        Observed fraction of the sky.
    seconds : float
    """

    source: str
    sky: xr.DataArray
    values: np.ndarray
    nside: int
    unit: str
    title: str
    clim: tuple
    ell: np.ndarray
    dl: np.ndarray
    dl_theory: np.ndarray
    theory_label: str
    fsky: float
    seconds: float = field(default=0.0, compare=False)

    def __repr__(self) -> str:
        return f"SkyResult(source={self.source!r}, nside={self.nside}, fsky={self.fsky:.3f})"


@functools.lru_cache(maxsize=4)
def load_wmap(mask: bool = True) -> xr.DataArray:
    """WMAP 7-yr W-band temperature (field I) in mK, RING nside 32; UNSEEN where masked.

    Raises
    ------
    ConfigError
        The files are not in the real-data folder (:mod:`explorer.data`).
    """
    path = realdata.real_file(realdata.WMAP_MAP)
    mask_path = realdata.real_file(realdata.WMAP_MASK) if mask else None
    if not realdata.wmap_available():
        raise ConfigError(
            f"WMAP files not found under {realdata.real_data_dir()} (set ${realdata.REAL_DATA_ENV})"
        )
    m = esky.read_healpix(path, field=0, mask=mask_path)
    return xr.DataArray(
        m,
        dims=("pixel",),
        name="temperature",
        attrs=dict(
            units="mK",
            long_name="WMAP 7-year W-band temperature (I)",
            ordering="RING",
            source=path.name,
        ),
    )


@functools.lru_cache(maxsize=4)
def _kappa_sky(key: tuple) -> xr.DataArray:
    # (sample=1, pixel): extract_patches takes Ω_m, σ8 from the sample coords
    return esky.generate(esky.SkyParams(**dict(key)))


def _dl(ell: np.ndarray, cl: np.ndarray) -> np.ndarray:
    return ell * (ell + 1) * cl / (2 * math.pi)


def compute_sky(source: str, settings: esky.SkyParams, wmap_mask: bool = True) -> SkyResult:
    """Make (or load) the sky of ``source`` and measure its C_ℓ.

    Parameters
    ----------
    source : {"kappa", "wmap"}
    settings : SkyParams
        Settings of the synthesized κ sky (one sample; ``count`` ignored).
    wmap_mask : bool
        Apply the WMAP temperature analysis mask.

    Raises
    ------
    ConfigError
        Unknown source, bad settings, missing WMAP files.
    """
    t0 = time.perf_counter()
    if source == "kappa":
        key = tuple(sorted({**to_dict(settings), "count": 1}.items()))
        sky = _kappa_sky(key)
        scale, unit, title = 1.0, "", f"Synthesized κ sky (nside {settings.nside})"
    elif source == "wmap":
        sky = load_wmap(bool(wmap_mask))
        scale, unit = MK_TO_UK, "μK"
        title = "WMAP 7-yr W band" + (" (analysis mask)" if wmap_mask else "")
    else:
        raise ConfigError(f"source={source!r} is not allowed: one of 'kappa', 'wmap'")
    raw = np.asarray(sky.values, dtype=np.float64).reshape(-1)
    observed = np.isfinite(raw) & ~np.isclose(raw, hp.UNSEEN, rtol=1e-5, atol=0.0)
    values = np.where(observed, raw * scale, np.nan)
    fsky = float(observed.mean())
    a = float(np.nanpercentile(np.abs(values - np.nanmedian(values)), 99.5)) or 1.0
    cl = esky.measure_cl(raw) * scale**2
    ell = np.arange(cl.size, dtype=np.float64)
    theory = np.full(cl.size, np.nan)
    theory_label = ""
    if source == "kappa":
        s = esky.SkyParams(**dict(key))
        theory = esky.sky_cl(s, s.omega_m, s.sigma8, lmax=cl.size - 1) * fsky
        theory_label = "theory × f_sky (pyccl Limber + noise, smoothed)"
    elif wmap_mask and realdata.real_file(realdata.WMAP_CL).is_file():
        ref = hp.read_cl(str(realdata.real_file(realdata.WMAP_CL))) * scale**2
        n = min(ref.size, theory.size)
        theory[:n] = ref[:n]
        theory_label = "healpy reference (same mask, lmax 64)"
    keep = ell >= 2
    return SkyResult(
        source=source,
        sky=sky,
        values=values,
        nside=hp.npix2nside(raw.size),
        unit=unit,
        title=title,
        clim=(-a, a),
        ell=ell[keep],
        dl=_dl(ell[keep], cl[keep]),
        dl_theory=_dl(ell[keep], theory[keep]),
        theory_label=theory_label,
        fsky=fsky,
        seconds=time.perf_counter() - t0,
    )


def extract(result: SkyResult, lon: float, lat: float, fov: float, size: int) -> xr.DataArray:
    """Gnomonic patch (y, x) in the sky's units, centred on (lon, lat) degrees, side ``fov`` deg.

    :func:`engine.physics.sky.extract_patches` with bilinear interpolation; coords x, y in arcmin, lon,
    lat, mask; unobserved pixels are 0.
    """
    return esky.extract_patches(result.sky, [(lon, lat)], fov=fov, size=size).isel(sample=0)


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------

#: Source selector labels.
SOURCES = {"κ sky (synthesized)": "kappa", "WMAP W band (real)": "wmap"}


class SkyPage(pn.viewable.Viewer):
    """Sky page: source widgets, the Mollweide view, its C_ℓ, and the patch cut at a click.

    State: ``source``, ``wmap_mask``, the synthesized sky's :class:`engine.physics.sky.SkyParams`
    (``sky_settings``) and the patch's :class:`engine.physics.lensing.KappaParams` (``patch_settings``:
    its ``fov`` and ``size``). :meth:`tap` is what a click does.
    """

    source = param.Selector(
        default="wmap", objects=SOURCES, doc="Which sky: synthesized κ or the WMAP map."
    )
    wmap_mask = param.Boolean(True, doc="Apply the WMAP temperature analysis mask.")
    sky_settings = param.ClassSelector(class_=esky.SkyParams, doc="Synthesized κ sky settings.")
    patch_settings = param.ClassSelector(class_=KappaParams, doc="Patch fov (deg) and size.")
    result = param.ClassSelector(class_=SkyResult, allow_None=True, doc="The sky shown.")
    center = param.Tuple(None, length=2, allow_None=True, doc="Patch centre (lon, lat), deg.")
    patch = param.ClassSelector(class_=xr.DataArray, allow_None=True, doc="The patch (y, x).")
    message = param.String("", doc="Last error or hint ('' when none).")

    def __init__(self, on_open: Callable | None = None, **params):
        params.setdefault("sky_settings", esky.SkyParams(nside=128, count=1))
        params.setdefault("patch_settings", KappaParams(fov=10.0, size=128))
        if not realdata.wmap_available():
            params.setdefault("source", "kappa")
        super().__init__(**params)
        self.on_open = on_open
        self._sky_pipe = hv.streams.Pipe(data=None)
        self._marker_pipe = hv.streams.Pipe(data=([], []))
        self._patch_pipe = hv.streams.Pipe(data=None)
        self.sky_settings.param.watch(self._refresh, ["nside", "footprint", "seed"])
        self.patch_settings.param.watch(self._recut, ["fov", "size"])
        self.param.watch(self._refresh, ["source", "wmap_mask"])
        # The page is built once (__panel__); its button follows the patch through one watcher.
        self._view = None
        self._open_button: pn.widgets.Button | None = None
        self.param.watch(self._show_open_button, "patch")
        self._refresh()

    # -- state -------------------------------------------------------------------------------

    def _refresh(self, *_events) -> None:
        try:
            result = compute_sky(self.source, self.sky_settings, self.wmap_mask)
        except ConfigError as exc:
            self.message = str(exc)
            return
        self.param.update(result=result, message="")
        self._sky_pipe.send(result)
        self._recut()

    def _recut(self, *_events) -> None:
        if self.center is not None:
            self.cut(*self.center)

    def cut(self, lon: float, lat: float) -> xr.DataArray:
        """Cut the patch centred on (lon, lat) degrees from the shown sky and show it."""
        p = self.patch_settings
        patch = extract(self.result, lon, lat, p.fov, p.size)
        self.param.update(center=(float(lon), float(lat)), patch=patch, message="")
        x, y = mollweide_forward(lon, lat)
        self._marker_pipe.send(([float(x)], [float(y)]))
        self._patch_pipe.send(patch)
        return patch

    def tap(self, x=None, y=None) -> xr.DataArray | None:
        """A click at (x, y) of the Mollweide plane: cut a patch there (None outside the sky)."""
        if x is None or y is None or self.result is None:
            return None
        lon, lat, inside = mollweide_inverse(x, y)
        if not bool(inside):
            self.message = "Click inside the sky to cut a patch."
            return None
        return self.cut(float(lon), float(lat))

    def _show_open_button(self, event) -> None:
        """Enable "Open patch in field lab" once there is a patch (watcher of ``patch``)."""
        if self._open_button is not None:
            self._open_button.disabled = event.new is None

    def open_in_field_lab(self, *_events) -> None:
        """Hand the patch to the field lab (the ``on_open(patch, source)`` callback)."""
        if self.patch is not None and self.on_open is not None:
            self.on_open(self.patch, self.result.title)

    # -- views -------------------------------------------------------------------------------
    def sky_view(self) -> hv.Overlay:
        """Mollweide map (resampled for the visible range), graticule, tap marker; Tap stream.

        :func:`explorer.sky_views.sky_view` on the page's pipes; a click calls :meth:`tap`.
        """
        return views.sky_view(
            self._sky_pipe, self._marker_pipe, lambda: self.result, lambda x, y: self.tap(x, y)
        )

    def patch_view(self, source: str) -> hv.DynamicMap:
        """The last patch, x/y in arcmin, north up, unobserved pixels grey
        (:func:`explorer.sky_views.patch_view`)."""
        return views.patch_view(self._patch_pipe, source, lambda: self.patch_settings.fov)

    def cl_view(self, source: str) -> hv.DynamicMap:
        """Measured D_ℓ of the shown sky against its theory, axes following the data
        (:func:`explorer.sky_views.cl_view`)."""
        return views.cl_view(self._sky_pipe, source, lambda: self.result)

    def widgets(self) -> dict[str, pn.widgets.Widget]:
        """Source, sky and patch widgets (generated from the param definitions)."""
        buttons = dict(**look("primary", "outline"), sizing_mode="stretch_width")
        return {
            "source": pn.widgets.RadioButtonGroup.from_param(
                self.param.source, **label("Source"), **buttons
            ),
            "wmap_mask": pn.widgets.Checkbox.from_param(
                self.param.wmap_mask, **label("WMAP analysis mask")
            ),
            "nside": setting_widget(
                self.sky_settings, Control("nside", "HEALPix nside", "nside", options=NSIDES)
            ),
            "footprint": setting_widget(
                self.sky_settings, Control("footprint", "Footprint", "footprint")
            ),
            "fov": setting_widget(
                self.patch_settings, Control("fov", "Patch field of view (deg)", "fov", "deg", 1)
            ),
            "size": setting_widget(
                self.patch_settings,
                Control("size", "Patch size N (pixels)", "size", options=PATCH_SIZES),
            ),
        }

    @param.depends("result", "center", "message")
    def _readout(self):
        r = self.result
        lines = []
        if self.message:
            lines.append(f"**⚠ {self.message}**")
        if r is not None:
            unit = r.unit or "κ"
            lines.append(
                f"**{r.title}**: nside {r.nside}, f<sub>sky</sub> = {r.fsky:.3f}, "
                f"colour range ±{r.clim[1]:.3g} {unit}, {1e3 * r.seconds:.0f} ms"
            )
        if self.center is not None:
            lon, lat = self.center
            lines.append(f"Patch centre: lon = {lon:.2f}°, lat = {lat:.2f}°")
        return pn.pane.Markdown("\n\n".join(lines), sizing_mode="stretch_width", margin=(0, 5))

    def _controls(self, source):
        w = self._widget_cache
        per_source = ("nside", "footprint") if source == "kappa" else ("wmap_mask",)
        names = ("source", *per_source, "fov", "size")
        return pn.Column(*(labelled(w[n]) for n in names), sizing_mode="stretch_width")

    def __panel__(self):
        """The page, built once: rendering it again (another root, a notebook cell) adds no
        widgets, watchers or callbacks."""
        if self._view is None:
            self._view = self._build_view()
        return self._view

    def _build_view(self) -> pn.Row:
        self._widget_cache = self.widgets()
        button = pn.widgets.Button(
            **label("Open patch in field lab"), **look("primary"), sizing_mode="stretch_width"
        )
        button.on_click(self.open_in_field_lab)
        button.disabled = self.patch is None
        self._open_button = button
        controls = pn.Column(
            "### Sky",
            pn.bind(self._controls, self.param.source),
            button,
            pn.layout.Divider(),
            self._readout,
            width=290,
        )

        def plots(source):  # rebuilt per source: units and labels change
            return pn.Column(
                pn.pane.HoloViews(self.sky_view(), linked_axes=False),
                pn.Row(
                    pn.pane.HoloViews(self.patch_view(source), linked_axes=False),
                    pn.pane.HoloViews(self.cl_view(source), linked_axes=False),
                ),
            )

        return pn.Row(
            controls,
            pn.Column(
                pn.bind(plots, self.param.source),
                pn.pane.Markdown(ABOUT, sizing_mode="stretch_width", max_width=1050),
            ),
        )


__all__ = [
    "ABOUT",
    "FRAME",
    "MK_TO_UK",
    "NSIDES",
    "PATCH_SIZES",
    "SOURCES",
    "X_MAX",
    "Y_MAX",
    "SkyPage",
    "SkyResult",
    "compute_sky",
    "extract",
    "graticule",
    "load_wmap",
    "mollweide_forward",
    "mollweide_inverse",
    "sample_mollweide",
]
