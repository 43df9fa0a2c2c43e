"""Registry of map kinds: for each ``kind`` name, its settings, generator, theory, units and family.

One place that the CLI (``python -m engine fields --kind …``), files (the ``kind`` attr of every
written DataArray), training and the explorer use to go from a kind name to code, so that no
caller branches on kind names. Modules are imported lazily so that ``python -m engine --help``
stays fast.

===========  =======================================  ==========================================
kind         settings                                 output
===========  =======================================  ==========================================
grf          engine.params.FieldParams                Gaussian slab maps δ (sample, y, x), Mpc/h
lognormal    engine.params.FieldParams                lognormal slab maps δ (sample, y, x), Mpc/h
2lpt         engine.physics.lpt.LPTParams             1LPT/2LPT slabs (sample, y, x) or volumes
                                                      (sample, z, y, x), Mpc/h
pm           engine.physics.pm.PMParams               particle-mesh N-body slabs (sample, y, x) or
                                                      volumes (sample, z, y, x), Mpc/h; with
                                                      fields="delta,theta" a channel dim after
                                                      sample (δ and the velocity divergence θ);
                                                      slabs=S maps per simulation
kappa        engine.physics.lensing.KappaParams       flat-sky convergence κ (sample, y, x), arcmin
sky          engine.physics.sky.SkyParams             HEALPix convergence κ (sample, pixel), RING
strong_lens  engine.physics.strong_lens.              strong-lens images (sample, y, x), arcsec,
             StrongLensParams                         e⁻/s per pixel; coord substructure
===========  =======================================  ==========================================

Families: ``density`` (grf, lognormal, 2lpt, pm: lengths in Mpc/h, k in h/Mpc, 2D P(k) in
(Mpc/h)²), ``convergence`` (kappa, sky: angles in arcmin, k = ℓ, C_ℓ in sr) and
``strong_lens`` (images of lensed galaxies in e⁻/s per pixel, angles in arcsec; no spectrum).

Kinds of flat maps also name their torch hot path (:meth:`Kind.generate_batch`: ``(B, N, N)``
maps on the device from a ``torch.Generator``), their settings check, their fixed input
normalisation (:meth:`Kind.map_scale`) and their binned theory (:meth:`Kind.binned_theory`).
:meth:`Kind.generate` is the one generation loop of every flat kind
(:func:`engine.physics.generation.generate_samples`).

Kinds generated on the CPU sample by sample (``strong_lens``) name instead their chunked
generator (:meth:`Kind.generate_chunks`: each sample from its own seed, so chunks do not change
the samples), the bytes of one written sample and the samples a dataset keeps in one split:
the ``fields`` and ``dataset`` verbs write every kind of :data:`WRITE_KINDS` this way or
through the torch hot path, without branching on kind names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import param

from engine.params import ConfigError, user_settings


def _resolve(module: str, ref: str):
    """``ref`` as an object: a dotted path ``pkg.mod.name``, or a name in ``module``."""
    if "." in ref:
        module, _, ref = ref.rpartition(".")
    return getattr(importlib.import_module(module), ref)


@dataclass(frozen=True)
class Kind:
    """A map kind: its settings class, generator, theory, units and family.

    Functions are named by strings (a name in ``module``, or a dotted path) and imported lazily.
    Methods that a kind does not support raise :class:`ConfigError` naming the kind.

    Attributes
    ----------
    name : str
        Kind name (the ``kind`` attr of its DataArrays).
    module : str
        Module holding the settings class and the functions named below by plain names.
    params : str
        Name of the settings class (a ``param.Parameterized``) in ``module``.
    doc : str
        One-line description.
    batch : str
        ``(settings, omega_m, sigma8, generator, device) -> tensor`` (the torch hot path; "" when
        the kind has none).
    check : str
        ``(settings) -> None``, raising ConfigError for unusable settings ("": no check).
    scale : str
        ``(settings) -> float``: expected pixel std at the fiducial cosmology ("": none).
    family : str
        "density" (δ of matter), "convergence" (weak-lensing κ) or "strong_lens" (images).
    length_unit : str
        Unit of map coordinates and of :meth:`extent`: "Mpc/h", "arcmin", "arcsec"
        (strong_lens), or "" (HEALPix).
    map_units : str
        What the pixel values are, in words: "density contrast", "convergence" or
        "e-/s per pixel".
    k_unit, power_unit : str
        Units of the binned spectrum of a map: "h/Mpc" and "(Mpc/h)^2", or "" (ℓ) and "sr".
    extent_fn : str
        ``(settings) -> float``: side of a flat map in ``length_unit`` ("": not a flat map).
    box_fn : str
        ``(settings) -> float``: side of a flat map in the length whose inverse is k
        (Mpc/h, or radians so that k = ℓ): the ``box_size`` of :mod:`engine.physics.stats`.
    theory : str
        ``(settings, omega_m, sigma8, edges=None) -> PowerSpectrum`` ("": no flat theory).
    wrap : str
        ``(maps, settings, omega_m, sigma8) -> xarray.DataArray``.
    from_attrs : str
        ``(attrs) -> settings``.
    batch_size_fn : str
        ``(settings) -> int``: default samples per torch call ("": 64).
    mode_theory : str
        ``(settings, k, omega_m, sigma8) -> tensor``: expected spectrum per Fourier mode, in
        :attr:`power_unit`, smoothing and noise included (the P(k) likelihood's model).
    spectrum_check : str
        ``(settings) -> None``: ConfigError when maps made with ``settings`` do not have that
        spectrum (3D volumes, masked κ) or leave the theory tables.
    gaussian_fn : str
        ``(settings) -> bool``: the maps are a Gaussian field ("": never), so the Fisher
        information of their spectrum bounds every estimator.
    sigma8_exact : bool
        The mode spectrum is exactly σ8² S(Ω_m) + N (linear matter power: density kinds; κ only
        with ``matter_power="linear"``, see :meth:`sigma8_squared_exact`).
    max_cosmologies : str
        Name of the number of distinct cosmologies the theory caches for generation on the fly
        ("": no limit): the most fixed prior points training may draw maps from (κ: one pyccl
        C_ℓ each, :data:`engine.physics.limber.CL_CACHE_SIZE`).
    chunks : str
        ``(settings, chunk, progress) -> iterator of xarray.DataArray``: the ``settings.count``
        samples of a kind without torch hot path, in DataArrays of ``chunk`` samples, each
        sample from its own seed (the same samples for any ``chunk``) ("": none).
    sample_bytes_fn : str
        ``(settings) -> int``: bytes of one written sample, for the output checks ("": the
        flat-map estimate :func:`engine.data.store.sample_bytes`).
    split_group_fn : str
        ``(settings) -> int``: consecutive samples a dataset keeps in one split ("": 1).
    """

    name: str
    module: str
    params: str
    doc: str
    batch: str = ""
    check: str = ""
    scale: str = ""
    family: str = ""
    length_unit: str = ""
    map_units: str = ""
    k_unit: str = ""
    power_unit: str = ""
    extent_fn: str = ""
    box_fn: str = ""
    theory: str = ""
    wrap: str = "to_dataarray"
    from_attrs: str = "settings_from_attrs"
    batch_size_fn: str = ""
    mode_theory: str = ""
    spectrum_check: str = ""
    gaussian_fn: str = ""
    sigma8_exact: bool = False
    max_cosmologies: str = ""
    chunks: str = ""
    sample_bytes_fn: str = ""
    split_group_fn: str = ""

    def _fn(self, ref: str, what: str):
        if not ref:
            raise ConfigError(f"kind={self.name!r} has no {what}")
        return _resolve(self.module, ref)

    # -- settings ----------------------------------------------------------------------------

    def settings_class(self) -> type[param.Parameterized]:
        """The param class of this kind's settings."""
        return getattr(importlib.import_module(self.module), self.params)

    def new_settings(self) -> param.Parameterized:
        """Default settings of this kind (``kind`` set to this kind's name)."""
        cls = self.settings_class()
        if "kind" in user_settings(cls):
            return cls(kind=self.name)
        return cls()

    def settings_from_attrs(self, attrs: dict) -> param.Parameterized:
        """Rebuild the settings a DataArray of this kind was made with, from its attrs.

        Parameters
        ----------
        attrs : dict
            ``DataArray.attrs`` as written by :meth:`to_dataarray` (extra keys are ignored).

        Raises
        ------
        ConfigError
            Attr values outside the settings' bounds.
        """
        return self._fn(self.from_attrs, "settings reader")(attrs)

    def check_settings(self, settings) -> None:
        """Raise :class:`ConfigError` for settings this kind cannot generate (e.g. pixels finer
        than the theory tables); no-op for kinds without a check."""
        if self.check:
            self._fn(self.check, "check")(settings)

    # -- geometry and units ------------------------------------------------------------------

    def extent(self, settings) -> float:
        """Side of a flat map in :attr:`length_unit` (box_size Mpc/h, or fov·60 arcmin).

        Raises
        ------
        ConfigError
            The kind makes no flat maps (``sky``).
        """
        return float(self._fn(self.extent_fn, "flat extent (not a flat map)")(settings))

    def pixel_size(self, settings) -> float:
        """Side of one pixel (or mesh cell) in :attr:`length_unit`: ``extent / size``.

        Raises
        ------
        ConfigError
            As :meth:`extent`.
        """
        return self.extent(settings) / int(settings.size)

    def spectrum_box(self, settings) -> float:
        """The ``box_size`` argument of :func:`engine.physics.stats.power_spectrum` for maps of
        this kind: side in Mpc/h (k in h/Mpc), or in radians (k = ℓ) for κ maps.

        Raises
        ------
        ConfigError
            As :meth:`extent`.
        """
        return float(self._fn(self.box_fn, "flat extent (not a flat map)")(settings))

    # -- theory ------------------------------------------------------------------------------

    def binned_theory(self, settings, omega_m, sigma8, edges=None):
        """Expected binned spectrum of maps made with ``settings``, binned like the estimator.

        Dispatches to :func:`engine.physics.slabs.binned_theory` (density: k in h/Mpc, P in
        (Mpc/h)², the CIC window included for 2lpt; pm through
        :func:`engine.physics.pm.binned_theory`, the same linear theory) or
        :func:`engine.physics.lensing.binned_theory` (κ: k = ℓ, C_ℓ in sr, shape noise and
        smoothing included).

        Parameters
        ----------
        settings : the kind's settings
        omega_m, sigma8 : float or array_like (B,)
        edges : array_like (K+1,), optional
            Bin edges in :attr:`k_unit`; default bins of width k_f up to the Nyquist k.

        Returns
        -------
        engine.physics.stats.PowerSpectrum; ``power`` (K,) or (B, K) float64 in :attr:`power_unit`.

        Raises
        ------
        ConfigError
            No flat theory for this kind (``sky``), or parameters out of range.
        """
        fn = self._fn(self.theory, "binned flat-map theory")
        return fn(settings, omega_m, sigma8, edges)

    def mode_power(self, settings, k, omega_m, sigma8):
        """Expected spectrum at wavenumbers ``k`` (:attr:`k_unit`) for parameters (B,):
        tensor (B, ...) float64 in :attr:`power_unit` (smoothing and noise included).

        Raises
        ------
        ConfigError
            No flat theory for this kind, or parameters out of range.
        """
        return self._fn(self.mode_theory, "flat-map theory")(settings, k, omega_m, sigma8)

    def check_spectrum(self, settings) -> None:
        """Raise :class:`ConfigError` unless maps made with ``settings`` have the spectrum of
        :meth:`mode_power` (no 3D volumes, no masked κ; pixels inside the theory tables)."""
        self._fn(self.spectrum_check, "flat-map theory")(settings)

    def is_gaussian(self, settings) -> bool:
        """True when maps made with ``settings`` are a Gaussian random field."""
        return bool(self.gaussian_fn) and bool(self._fn(self.gaussian_fn, "")(settings))

    def sigma8_squared_exact(self, settings) -> bool:
        """True when the spectrum is exactly σ8² S(Ω_m) + N(Ω_m) (linear matter power)."""
        if self.sigma8_exact:
            return True
        return getattr(settings, "matter_power", "") == "linear"

    def cosmology_limit(self) -> int:
        """:attr:`max_cosmologies` resolved: the most cosmologies of maps on the fly (0: any)."""
        return int(self._fn(self.max_cosmologies, "")) if self.max_cosmologies else 0

    def map_scale(self, settings) -> float:
        """Expected standard deviation per pixel at the fiducial cosmology
        (:data:`engine.params.FIDUCIAL`, map units), the fixed input normalisation of networks.

        Raises
        ------
        ConfigError
            The kind defines no scale.
        """
        return float(self._fn(self.scale, "map scale")(settings))

    # -- generation --------------------------------------------------------------------------

    def generate_batch(self, settings, omega_m, sigma8, generator, device=None):
        """A batch of samples as a torch tensor, one per (omega_m, sigma8) pair.

        Parameters
        ----------
        settings : the kind's settings (:meth:`settings_class`)
        omega_m, sigma8 : torch.Tensor (B,)
        generator : torch.Generator
            On ``device``; same generator state ⇒ same batch on CPU.

        Returns
        -------
        torch.Tensor (B, N, N) float32 for flat maps ((B, N, N, N) for 2lpt and pm volumes, dim=3;
        pm with ``fields="delta,theta"``: (B, 2, N, N) or (B, 2, N, N, N), channels δ, θ).

        Raises
        ------
        ConfigError
            The kind has no torch hot path, or bad settings/parameters.
        """
        fn = self._fn(self.batch, "batched torch generator")
        return fn(settings, omega_m, sigma8, generator, device)

    def default_batch_size(self, settings) -> int:
        """Samples per torch call of :meth:`generate` (64 unless the kind bounds its memory)."""
        return (
            int(_resolve(self.module, self.batch_size_fn)(settings)) if self.batch_size_fn else 64
        )

    def to_dataarray(self, maps, settings, omega_m, sigma8):
        """Wrap samples (numpy, batch first) in this kind's boundary DataArray.

        Parameters
        ----------
        maps : numpy.ndarray (B, N, N) (or (B, N, N, N) 2lpt/pm volumes, (B, npix) HEALPix skies,
            (B, C, ...) pm with several ``fields``)
        settings : the kind's settings
        omega_m, sigma8 : array_like (B,)

        Returns
        -------
        xarray.DataArray with dims (sample, y, x) / (sample, z, y, x) / (sample, pixel) (or
        (sample, channel, …) for pm with several ``fields``), coords in :attr:`length_unit`,
        per-sample omega_m, sigma8 (and simulation, slab, slab_start for pm with ``slabs`` > 1)
        and every setting in attrs.
        """
        return self._fn(self.wrap, "DataArray wrapper")(maps, settings, omega_m, sigma8)

    def generate_chunks(self, settings, chunk: int, progress: bool | None = None):
        """The ``settings.count`` samples of a kind with :attr:`chunks` as consecutive
        DataArrays of ``chunk`` samples, generated lazily; concatenated they equal
        :meth:`generate`.

        Raises
        ------
        ConfigError
            The kind has no chunked generator, or bad settings (before any work).
        """
        return self._fn(self.chunks, "chunked generator")(settings, chunk, progress)

    def sample_bytes(self, settings) -> int | None:
        """Bytes of one written sample from :attr:`sample_bytes_fn`, or None when the kind
        leaves it to the flat-map estimate (:func:`engine.data.store.sample_bytes`)."""
        return int(self._fn(self.sample_bytes_fn, "")(settings)) if self.sample_bytes_fn else None

    def split_group(self, settings) -> int:
        """Consecutive samples a dataset keeps in one split (e.g. one image of each class)."""
        return int(self._fn(self.split_group_fn, "")(settings)) if self.split_group_fn else 1

    def generate(self, settings, device=None, **kwargs):
        """``settings.count`` samples from ``settings.seed`` as an xarray.DataArray.

        Flat kinds go through the one generation loop
        :func:`engine.physics.generation.generate_samples` (batches of :meth:`generate_batch`,
        then :meth:`to_dataarray`; bit-identical to the module's ``generate``); ``sky`` is
        synthesized by healpy on the CPU (:func:`engine.physics.sky.generate`), ``strong_lens``
        by lenstronomy in worker processes (:func:`engine.physics.strong_lens.generate`).

        Parameters
        ----------
        settings : the kind's settings
        device : str or torch.device, optional
            Default: CUDA when available, else CPU (ignored for ``sky``).
        **kwargs
            ``omega_m``, ``sigma8`` (scalar or (count,) arrays), ``batch_size``, ``progress``
            (only ``progress`` for ``strong_lens``).

        Raises
        ------
        ConfigError
            Bad settings or parameters.
        """
        if not self.batch:  # healpy synthesis and lenstronomy images run on the CPU
            return importlib.import_module(self.module).generate(settings, **kwargs)
        from engine.physics.generation import generate_samples

        kwargs.setdefault("batch_size", self.default_batch_size(settings))
        return generate_samples(
            settings,
            self.generate_batch,
            self.to_dataarray,
            check=self.check_settings,
            device=device,
            desc=self.name,
            **kwargs,
        )


_DENSITY = dict(
    family="density",
    length_unit="Mpc/h",
    map_units="density contrast",
    k_unit="h/Mpc",
    power_unit="(Mpc/h)^2",
    extent_fn="engine.physics.slabs.map_extent",
    box_fn="engine.physics.slabs.map_extent",
    theory="engine.physics.slabs.binned_theory",
    mode_theory="engine.physics.slabs.theory_power",
    spectrum_check="engine.physics.slabs.check_spectrum",
    gaussian_fn="engine.physics.slabs.is_gaussian",
    sigma8_exact=True,
    # The 2LPT scale is the linear-theory std of the same slab (engine.physics.slabs): a fixed
    # normalisation close to the LPT maps' own std, which is all a network input needs.
    scale="engine.physics.slabs.map_scale",
)
_CONVERGENCE = dict(family="convergence", map_units="convergence", power_unit="sr")

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "grf",
            "engine.physics.slabs",
            "FieldParams",
            "Gaussian random field of a projected slab",
            batch="generate_maps",
            check="check_resolution",
            **_DENSITY,
        ),
        Kind(
            "lognormal",
            "engine.physics.slabs",
            "FieldParams",
            "lognormal field of a projected slab",
            batch="generate_maps",
            check="check_resolution",
            **_DENSITY,
        ),
        Kind(
            "2lpt",
            "engine.physics.lpt",
            "LPTParams",
            "1LPT/2LPT particles on a mesh: volumes or slabs",
            batch="generate_batch",
            check="check_settings",
            batch_size_fn="default_batch_size",
            **_DENSITY,
        ),
        Kind(
            "pm",
            "engine.physics.pm",
            "PMParams",
            "particle-mesh N-body (FastPM) particles on a mesh: volumes or slabs",
            batch="generate_batch",
            check="check_settings",
            batch_size_fn="default_batch_size",
            **{
                **_DENSITY,
                # linear theory of the same N³ CIC mesh as 2lpt (engine.physics.pm.linear_twin)
                "theory": "binned_theory",
                "mode_theory": "theory_power",
                "scale": "map_scale",
            },
        ),
        Kind(
            "kappa",
            "engine.physics.lensing",
            "KappaParams",
            "flat-sky weak-lensing convergence",
            batch="generate_maps",
            check="check_resolution",
            scale="map_scale",
            length_unit="arcmin",
            extent_fn="map_extent",
            box_fn="fov_radians",
            theory="binned_theory",
            mode_theory="mode_power",
            spectrum_check="check_spectrum",
            gaussian_fn="is_gaussian",
            max_cosmologies="engine.physics.limber.CL_CACHE_SIZE",
            **_CONVERGENCE,
        ),
        Kind(
            "sky",
            "engine.physics.sky",
            "SkyParams",
            "full-sky HEALPix weak-lensing convergence",
            **_CONVERGENCE,
        ),
        Kind(
            "strong_lens",
            "engine.physics.strong_lens",
            "StrongLensParams",
            "galaxy-galaxy strong-lens images (lenstronomy) with dark-matter substructure",
            check="check_settings",
            family="strong_lens",
            length_unit="arcsec",
            map_units="e-/s per pixel",
            wrap="",
            chunks="generate_chunks",
            sample_bytes_fn="sample_bytes",
            split_group_fn="split_group",
        ),
    )
}


#: Kinds of flat maps and volumes with a torch hot path (the explorer's field lab, training on
#: the fly); ``sky`` has a verb of its own.
FIELD_KINDS = tuple(k for k, v in KINDS.items() if v.batch)
#: Kinds the ``fields`` and ``dataset`` verbs write: :data:`FIELD_KINDS` and the kinds with a
#: chunked CPU generator (:attr:`Kind.chunks`).
WRITE_KINDS = tuple(k for k, v in KINDS.items() if v.batch or v.chunks)


def get_kind(name: str, allowed=tuple(KINDS)) -> Kind:
    """The :class:`Kind` called ``name``, which must be one of ``allowed``.

    Raises
    ------
    ConfigError
        Unknown or not allowed kind (the message lists the allowed ones).
    """
    if name not in allowed:
        raise ConfigError(
            f"kind={name!r} is not allowed: kind must be one of {', '.join(map(repr, allowed))}"
        )
    return KINDS[name]
