"""The delensing task end to end on small skies: data (rotation, noise, FITS), training through
the common engine, resume-stable pools, predict to FITS, evaluate's report."""

from __future__ import annotations

import json
import math

import healpy as hp
import numpy as np
import pytest
import torch
import xarray as xr

from engine.data.cmb import (
    CMBSkies,
    noise_sigma,
    random_euler,
    read_fits_qu,
    rotate_qu,
    white_noise,
    write_fits_qu,
)
from engine.params import ConfigError


def _eb_sky(nside, seed, e_amp=1.0, b_amp=0.3, band=None):
    """Q, U of Gaussian E and B with C_ell ∝ ell^-1.5 up to ``band`` (default 3 nside - 1)."""
    lmax = 3 * nside - 1
    rng = np.random.default_rng(seed)
    ell = np.arange(lmax + 1)
    cl = np.zeros(lmax + 1)
    cl[2:] = 1.0 / ell[2:] ** 1.5
    if band is not None:
        cl[band + 1 :] = 0.0
    alms = []
    for amp in (e_amp, b_amp):
        a = np.zeros(hp.Alm.getsize(lmax), complex)
        for m in range(lmax + 1):
            idx = hp.Alm.getidx(lmax, np.arange(m, lmax + 1), m)
            s = np.sqrt(amp * cl[m:] / (1 if m == 0 else 2))
            re = rng.standard_normal(idx.size)
            im = np.zeros(idx.size) if m == 0 else rng.standard_normal(idx.size)
            a[idx] = s * (re + 1j * im)
        alms.append(a)
    q, u = hp.alm2map_spin(alms, nside, 2, lmax)
    return q, u


def _spectra(q, u):
    lmax = 3 * hp.npix2nside(q.size) - 1
    _, e, b = hp.map2alm([0 * q, q, u], lmax=lmax, pol=True, iter=3)
    return hp.alm2cl(e), hp.alm2cl(b)


def test_rotation_keeps_e_and_b_apart():
    """Rotating on the harmonic coefficients (spin 2) keeps a pure-E sky pure E and preserves
    both spectra; moving Q/U pixel values would not."""
    nside = 32
    q, u = _eb_sky(nside, 0, b_amp=0.0, band=2 * nside)  # where the quadrature is accurate
    ee0, bb0 = _spectra(q, u)
    assert bb0[2:].sum() < 3e-5 * ee0[2:].sum()  # the analysis's own leakage
    rng = np.random.default_rng(1)
    for _ in range(3):
        q2, u2 = rotate_qu(q, u, random_euler(rng))
        ee, bb = _spectra(q2, u2)
        # power per multipole is rotation invariant, to the accuracy of HEALPix quadrature (with
        # one iteration: 1e-3 up to nside, a few 1e-3 at 1.5 nside at this small nside)
        np.testing.assert_allclose(ee[2:nside], ee0[2:nside], rtol=1e-3)
        np.testing.assert_allclose(ee[nside : 2 * nside], ee0[nside : 2 * nside], rtol=1e-2)
        assert bb[2:].sum() < 1e-4 * ee[2:].sum()
    # contrast: moving the pixel values of Q and U (a scalar rotation) makes B out of E
    rot = hp.Rotator(rot=(40.0, 30.0, 10.0))
    qs, us = rot.rotate_map_pixel(q), rot.rotate_map_pixel(u)
    _, bb_bad = _spectra(np.asarray(qs), np.asarray(us))
    assert bb_bad[2:].sum() > 1e-3 * ee0[2:].sum()


def test_random_euler_is_uniform():
    """cos θ of the random rotations is uniform in [-1, 1] (Haar measure)."""
    rng = np.random.default_rng(0)
    c = np.array([math.cos(random_euler(rng)[1]) for _ in range(4000)])
    assert abs(c.mean()) < 4 / math.sqrt(3 * 4000)
    assert abs(np.mean(c**2) - 1 / 3) < 0.02


def test_white_noise_level():
    nside = 32
    n = white_noise(2.0, nside, np.random.default_rng(0), n=2)
    assert n.shape == (2, 12 * nside**2) and n.dtype == np.float32
    sigma = noise_sigma(2.0, nside)
    assert abs(n.std() / sigma - 1) < 0.03
    # N_ell = (noise in µK-rad)^2 for white noise
    cl = hp.anafast(n[0].astype(float))
    assert abs(cl[10:].mean() / (2.0 * math.pi / 10800) ** 2 - 1) < 0.05


def test_fits_round_trip_and_refusals(tmp_path):
    q, u = _eb_sky(16, 3)
    path = tmp_path / "sky.fits"
    write_fits_qu(path, q, u, {"noise": 2.0})
    q2, u2, header = read_fits_qu(path, nside=16)
    np.testing.assert_allclose(q2, q.astype(np.float32))
    np.testing.assert_allclose(u2, u.astype(np.float32))
    assert header["NOISE"] == 2.0
    with pytest.raises(ConfigError, match="nside 16; the delenser works at nside 32"):
        read_fits_qu(path, nside=32)
    with pytest.raises(ConfigError, match="does not exist"):
        read_fits_qu(tmp_path / "missing.fits")
    (tmp_path / "junk.fits").write_text("not fits")
    with pytest.raises(ConfigError, match="not a HEALPix FITS map"):
        read_fits_qu(tmp_path / "junk.fits")


def toy_skies(path, nside=32, n=10, seed=0):
    """A small file of the sky-file layout: E/B skies, a lensing-like perturbation and noise."""
    rng = np.random.default_rng(seed)
    v = {k: [] for k in ("Q_unlensed", "U_unlensed", "Q_lensed", "U_lensed", "Q", "U", "phi")}
    for i in range(n):
        qu, uu = _eb_sky(nside, seed * 1000 + i)
        dq, du = _eb_sky(nside, seed * 1000 + i + 500, e_amp=0.01, b_amp=0.01)
        v["Q_unlensed"].append(qu)
        v["U_unlensed"].append(uu)
        v["Q_lensed"].append(qu + dq)
        v["U_lensed"].append(uu + du)
        noise = white_noise(2.0, nside, rng)
        v["Q"].append(qu + dq + noise[0])
        v["U"].append(uu + du + noise[1])
        v["phi"].append(np.zeros_like(qu))
    ds = xr.Dataset(
        {k: (("sample", "pixel"), np.asarray(a, np.float32)) for k, a in v.items()},
        attrs={"nside": nside, "noise": 2.0, "beam": 30.0, "r": 0.0, "kind": "cmb"},
    )
    ds["mask"] = ("pixel", np.ones(12 * nside**2, np.float32))
    ds.to_zarr(path, mode="w")
    return path


@pytest.fixture(scope="module")
def skies(tmp_path_factory):
    return toy_skies(tmp_path_factory.mktemp("cmb") / "toy.zarr")


def test_sky_file_splits_and_refusals(skies, tmp_path):
    src = CMBSkies(skies)
    assert src.nside == 32 and len(src) == 10
    train, val, test = (CMBSkies(f"{skies}?split={s}").indices for s in ("train", "val", "test"))
    assert len(train) == 8 and len(val) == 1 and len(test) == 1
    assert not set(train) & set(val) and not set(train) & set(test)
    assert len(CMBSkies(f"{skies}?split=train&count=3")) == 3
    with pytest.raises(ConfigError, match="unknown option 'bogus'"):
        CMBSkies(f"{skies}?bogus=1")
    with pytest.raises(ConfigError, match="no such file"):
        CMBSkies(tmp_path / "none.zarr")
    xr.Dataset({"x": ("pixel", np.zeros(12))}).to_zarr(tmp_path / "other.zarr")
    with pytest.raises(ConfigError, match="not a CMB sky file"):
        CMBSkies(tmp_path / "other.zarr")


def _task(skies, **over):
    from engine.tasks.delensing import Delensing
    from engine.train.presets import PRESETS
    from engine.train.settings import train_params_class

    cls = train_params_class("delensing")
    values = {k: v for k, v in PRESETS["delens_smoke"].items() if k != "task"}
    values.update(dataset=str(skies), **over)
    s = cls(**values)
    return Delensing(s, torch.device("cpu"))


def test_pool_depends_on_the_step_only(skies):
    """A resumed run rebuilds the same pool: the batch of step s is the same whether the task
    went through the earlier steps or not."""
    a, b = _task(skies, rotate_every=2, pool=2), _task(skies, rotate_every=2, pool=2)
    for step in range(7):
        a.shard(step, 0)
    xa, ya = a.shard(7, 0)
    xb, yb = b.shard(7, 0)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # and the pool did change: rotated skies with fresh noise
    assert a._slot_ids != [0, 1]
    # targets: Q, U, the noise Q, U, then the window's Q/U basis (face_pol_basis)
    assert xa.shape == (4, 2, 16 + 2 * 16, 16 + 2 * 16) and ya.shape == (4, 7, 16, 16)
    np.testing.assert_allclose(ya[:, 4] ** 2 + ya[:, 5] ** 2, 1.0, atol=1e-5)


def test_b_weight_adds_the_b_power_of_the_error(skies):
    """loss = Q/U MSE + b_weight × B power of the error against unlensed + noise; the
    identity's B error is then the lensing B alone, above zero; b_weight = 0 is the plain MSE;
    keep_noise takes the MSE against unlensed + noise too. The stored noise is the observed
    sky minus the lensed one."""
    from engine.nn.healpix_pol import b_power

    t = _task(skies, b_weight=10.0)
    x, yb = t.shard(0, 0)
    m = t._margin()
    ident = x[:, :, m:-m, m:-m]
    loss, parts = t._objective(ident, yb)
    mse = (ident - yb[:, :2]).pow(2).mean()
    # the B term is against the unlensed sky plus the input's own noise: the noise is free
    b = b_power(ident - yb[:, :2] - yb[:, 2:4], yb[:, 4:7])
    assert float(parts["loss_b"]) == pytest.approx(float(b)) and float(b) > 0
    assert float(loss) == pytest.approx(float(mse + 10.0 * b), rel=1e-6)
    # the stored noise is observed − lensed (stored skies) or the drawn noise (rotated ones)
    from engine.tasks.delensing import _faces

    sky = t.source.sky(int(t.train_rows[0]))
    obs = np.stack([sky["Q"], sky["U"]])
    noise = _faces((obs - np.stack([sky["Q_lensed"], sky["U_lensed"]])) / t.scale)
    _, targets = t._content(0)
    assert torch.allclose(targets[:, 2:4], noise, atol=1e-6)
    _, rotated = t._content(t.settings.pool)
    sigma = float(rotated[:, 2:4].std()) * t.scale  # µK per pixel
    assert sigma == pytest.approx(
        float(np.std(obs - np.stack([sky["Q_lensed"], sky["U_lensed"]]))), rel=0.1
    )
    plain, none = _task(skies)._objective(ident, yb)
    assert none == {} and float(plain) == pytest.approx(float(mse), rel=1e-6)
    # keep_noise: the target is unlensed + the input's noise, so the input's error is the
    # lensing alone (observed - noise - unlensed = lensed - unlensed), below the plain MSE
    kept, _ = _task(skies, keep_noise=True)._objective(ident, yb)
    lensing = (ident - yb[:, :2] - yb[:, 2:4]).pow(2).mean()
    assert float(kept) == pytest.approx(float(lensing), rel=1e-6) and float(kept) < float(mse)
    kept_b, parts_b = _task(skies, keep_noise=True, b_weight=10.0)._objective(ident, yb)
    assert float(parts_b["loss_b"]) == pytest.approx(float(b))  # the same B term


def test_task_refuses_bad_settings(skies):
    with pytest.raises(ConfigError, match="task delensing trains on CMB skies"):
        _task("")
    with pytest.raises(ConfigError, match="crop=18 must be a multiple of 2\\*\\*levels=4"):
        _task(skies, crop=18)
    with pytest.raises(ConfigError, match="at most nside=32"):
        _task(skies, crop=64)


@pytest.fixture(scope="module")
def run(skies, tmp_path_factory):
    from engine.cli import main

    run_dir = tmp_path_factory.mktemp("runs") / "delens"
    code = main(
        ["train", "--preset", "delens_smoke", "--set", f"dataset={skies}", "--set",
         "eval_maps=0", "--run-dir", str(run_dir)]
    )  # fmt: skip
    assert code == 0
    return run_dir


def test_training_runs_through_the_engine(run):
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "completed"
    names = {json.loads(line)["name"] for line in (run / "metrics.jsonl").read_text().splitlines()}
    assert {"loss", "loss_identity", "loss_ratio"} <= names


def test_predict_writes_fits(run, skies, tmp_path, capsys):
    from engine.cli import main

    out = tmp_path / "delensed.fits"
    assert (
        main(["predict", "--checkpoint", str(run), "--maps", f"{skies}?count=1", "--out", str(out)])
        == 0
    )
    q, u, _ = read_fits_qu(out, nside=32)
    assert q.shape == (12 * 32**2,) and np.all(np.isfinite(q)) and np.all(np.isfinite(u))
    # the input FITS map itself delenses the same way
    out2 = tmp_path / "again.fits"
    assert main(["predict", "--checkpoint", str(run), "--maps", str(out), "--out", str(out2)]) == 0
    # never replaced without --overwrite; another nside refused in one line
    assert main(["predict", "--checkpoint", str(run), "--maps", str(out), "--out", str(out2)]) == 2
    small = tmp_path / "small.fits"
    write_fits_qu(small, *_eb_sky(16, 0))
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run),
                "--maps",
                str(small),
                "--out",
                str(tmp_path / "x.fits"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "already exists" in err and "nside 16" in err


def test_evaluate_writes_the_report(run, skies, tmp_path, capsys):
    """evaluate on sky files: A_res of the network beside the baselines and the QE forecast,
    the r fit, figures; skies of another nside are refused in one line."""
    from engine.cli import main

    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run),
                "--dataset",
                f"{skies}?count=2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert set(report["a_res"]) == {"none", "template", "qe", "network"}
    assert {"eb", "mv", "pol"} <= set(report["qe_forecast"])
    assert report["fit_r"]["qe"]["transfer"]["n_skies"] == 2  # measured, like the network's
    assert report["n_skies"] == {"0": 2}
    for name in report["figures"].values():
        assert (out / name).stat().st_size > 1000
    text = capsys.readouterr().out
    assert "A_res" in text and "network" in text
    assert "transfer function on primordial B" in text  # the r fit uses it
    tr = report["fit_r"]["network"]["transfer"]
    assert tr["n_skies"] == 2 and len(tr["per_bin"]) == len(report["ell"])
    quick = tmp_path / "quick"  # --no-template --no-qe: the network and no delensing only
    argv = ["evaluate", "--checkpoint", str(run), "--dataset", f"{skies}?count=2"]
    assert main([*argv, "--out", str(quick), "--no-template", "--no-qe"]) == 0
    assert set(json.loads((quick / "report.json").read_text())["a_res"]) == {"none", "network"}
    other = toy_skies(tmp_path / "other.zarr", nside=16, n=2)
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run),
                "--dataset",
                str(other),
                "--out",
                str(tmp_path / "e2"),
            ]
        )
        == 2
    )
    assert "trained at nside 32" in capsys.readouterr().err


def test_qe_assisted_network_starts_as_qe_delensing(skies, tmp_path):
    """qe_input: 4 input channels (QE-delensed Q/U and the template); the untrained residual
    network returns the QE-delensed sky exactly; a run trains and its checkpoint predicts with
    the template computed from the sky given."""
    import torch

    from engine.cli import main
    from engine.evaluation.predict import load_task_network
    from engine.physics.cmb_qe import qe_delens
    from engine.tasks.delensing import QE_INPUTS

    task = _task(skies, qe_input=True, rotate_every=1)
    model = task.build_networks()["model"].eval()
    assert model.in_channels == 4 and task.state()["inputs"] == list(QE_INPUTS)
    sky = task.source.sky(int(task.train_rows[0]), ("Q", "U"))
    q, u = task.predict(model, sky["Q"], sky["U"])
    qd, ud = qe_delens(sky["Q"], sky["U"], task.sky_attrs)
    np.testing.assert_allclose(q, qd, atol=1e-4 * np.abs(qd).max())
    np.testing.assert_allclose(u, ud, atol=1e-4 * np.abs(ud).max())
    # a rotated pool sky carries its template rotated alike: input = (obs − T, T)
    x, y = task.shard(3, 0)
    assert x.shape[1] == 4 and y.shape[1] == 7 and torch.isfinite(x).all()
    run_dir = tmp_path / "qe_run"
    code = main(
        ["train", "--preset", "delens_smoke", "--set", f"dataset={skies}", "--set",
         "eval_maps=0", "--set", "qe_input=true", "--run-dir", str(run_dir)]
    )  # fmt: skip
    assert code == 0
    net, loaded, _ = load_task_network(run_dir, "cpu", "delensing")
    assert loaded.qe_input and net.in_channels == 4
    q2, _ = loaded.predict(net, sky["Q"], sky["U"])
    assert q2.shape == sky["Q"].shape and np.isfinite(q2).all()


def test_network_fed_the_iterated_qe_template(skies, tmp_path):
    """qe_template=qe_it: the untrained network returns the iterated-QE-delensed sky of the
    task's calibration; a run stores that calibration in its checkpoint and predicts with it;
    no calibration at the skies' settings, or one of other settings, is refused in one line."""
    import json

    from engine.cli import main
    from engine.evaluation.predict import load_task_network
    from engine.physics.cmb_qe_iter import qe_delens_iterated

    cal = {"nside": 32, "noise": 2.0, "beam": 30.0, "lmax": 95, "edges": [0, 40, 96],
           "a": [1.1, 0.9], "b": [0.5, 0.3]}  # fmt: skip
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(cal))
    task = _task(skies, qe_input=True, qe_template="qe_it", qe_calibration=str(path))
    assert task.calibration["a"] == [1.1, 0.9]
    model = task.build_networks()["model"].eval()
    sky = task.source.sky(int(task.train_rows[0]), ("Q", "U"))
    q, u = task.predict(model, sky["Q"], sky["U"])
    qd, ud = qe_delens_iterated(sky["Q"], sky["U"], task.sky_attrs, cal)
    np.testing.assert_allclose(q, qd, atol=1e-4 * np.abs(qd).max())
    np.testing.assert_allclose(u, ud, atol=1e-4 * np.abs(ud).max())
    with pytest.raises(ConfigError, match="set qe_input=true"):
        _task(skies, qe_template="qe_it", qe_calibration=str(path))
    with pytest.raises(ConfigError, match="no calibration of the iterated QE at nside 32"):
        _task(skies, qe_input=True, qe_template="qe_it")
    path.write_text(json.dumps({**cal, "noise": 5.0}))
    with pytest.raises(ConfigError, match="measured at other settings: noise 5.0"):
        _task(skies, qe_input=True, qe_template="qe_it", qe_calibration=str(path))
    path.write_text(json.dumps(cal))
    run_dir = tmp_path / "qe_it_run"
    code = main(
        ["train", "--preset", "delens_smoke", "--set", f"dataset={skies}", "--set",
         "eval_maps=0", "--set", "qe_input=true", "--set", "qe_template=qe_it", "--set",
         f"qe_calibration={path}", "--run-dir", str(run_dir)]
    )  # fmt: skip
    assert code == 0
    path.unlink()  # the checkpoint carries the calibration
    net, loaded, _ = load_task_network(run_dir, "cpu", "delensing")
    assert loaded.calibration["b"] == [0.5, 0.3]
    q2, _ = loaded.predict(net, sky["Q"], sky["U"])
    assert q2.shape == sky["Q"].shape and np.isfinite(q2).all()
