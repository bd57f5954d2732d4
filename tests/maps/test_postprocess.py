"""RELION-style post-processing against ground truth.

Synthetic truth: Gaussian blobs in a 48-voxel box at 4 Å/px with a B-factor-like decay; half maps
are truth + independent noise whose power rises with frequency. Checks:

* the reported resolution (masked, noise-substitution-corrected FSC = 0.143, RELION's shell rule)
  lies within one shell of where the FSC of the half-map average against the truth crosses 0.5
  (Rosenthal & Henderson 2003: FSC_half = 0.143 ⇔ FSC_avg,truth = 0.5);
* with a mask too tight (binary, cutting through the density) the masked FSC is inflated past the
  resolution the data can hold, the phase-randomised masked FSC shows it, and the corrected FSC
  and resolution are not inflated;
* a known B-factor applied to a flat-spectrum map is recovered by the Guinier fit;
* ``postprocess.star`` carries RELION's labels (compared with a real RELION file) and the command
  writes every output or fails with exit status 2 and one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from subtomo.commands import postprocess as postprocess_command
from subtomo.errors import InputError
from subtomo.fourier.fsc import fsc, resolution_shell
from subtomo.fourier.grid import shell_radius_px
from subtomo.io.fsc_star import write_fsc_star
from subtomo.maps.postprocess import postprocess

D, PX = 48, 4.0
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RADIUS = shell_radius_px(D, "cpu", torch.float64).numpy()  # |k|·D on the rfftn grid
_AX = np.arange(D) - D // 2
Z, Y, X = np.meshgrid(_AX, _AX, _AX, indexing="ij")
R_REAL = np.sqrt(X**2 + Y**2 + Z**2)


def _filter(vol: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.fft.irfftn(np.fft.rfftn(vol) * weights, s=vol.shape, axes=(0, 1, 2))


def _truth(rng: np.random.Generator, b_factor: float = 150.0, cutoff_shell: int | None = None
           ) -> np.ndarray:
    vol = np.zeros((D, D, D))
    for _ in range(40):
        c = rng.uniform(-9, 9, 3)
        s = rng.uniform(1.0, 2.0)
        vol += rng.uniform(0.5, 1.5) * np.exp(
            -((X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2) / (2 * s**2))
    weights = np.exp(-b_factor / 4 * (RADIUS / (D * PX)) ** 2)
    if cutoff_shell is not None:
        weights = weights * (RADIUS <= cutoff_shell)
    return _filter(vol, weights)


def _noise(rng: np.random.Generator, level: float) -> np.ndarray:
    """Gaussian noise whose amplitude grows as exp((k/14)²) up to Nyquist, flat beyond."""
    growth = np.exp((np.minimum(RADIUS, D / 2) / 14.0) ** 2)
    return _filter(rng.standard_normal((D, D, D)), level * growth)


def _soft_sphere(radius: float, edge: float) -> np.ndarray:
    ramp = 0.5 + 0.5 * np.cos(np.pi * (R_REAL - radius) / edge)
    return np.where(R_REAL < radius, 1.0, np.where(R_REAL > radius + edge, 0.0, ramp))


PROPER_MASK = _soft_sphere(16, 5)  # blobs lie within 9·√3 + 2σ ≈ 16 px of the centre


# --------------------------------------------------------------------------- resolution
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resolution_within_one_shell_of_truth(seed: int, device: str) -> None:
    rng = np.random.default_rng(seed)
    truth = _truth(rng)
    h1, h2 = truth + _noise(rng, 0.05), truth + _noise(rng, 0.05)
    to = {"device": device, "dtype": torch.float64}
    result = postprocess(torch.tensor(h1, **to), torch.tensor(h2, **to),
                         torch.tensor(PROPER_MASK, **to), PX)

    # the FSC that resolution claims to predict: masked half-map average against masked truth
    mask = torch.from_numpy(PROPER_MASK)
    average = torch.from_numpy((h1 + h2) / 2)
    true_fsc = fsc(average * mask, torch.from_numpy(truth) * mask)
    true_shell = resolution_shell(true_fsc, 0.5)

    assert 3 < result.randomize_shell < result.resolution_shell < D // 2  # a real crossing
    assert abs(result.resolution_shell - true_shell) <= 1, (result.resolution_shell, true_shell)
    assert result.resolution_A == pytest.approx(D * PX / result.resolution_shell)
    assert result.mask_used
    # the interpolated crossing lies between RELION's shell and the next one
    assert D * PX / (result.resolution_shell + 1) <= result.resolution_interpolated_A
    assert result.resolution_interpolated_A <= result.resolution_A
    # outputs live on the input's device; curves on the CPU
    assert result.sharpened.device.type == device
    assert result.fsc_corrected.shape == (D // 2 + 1,)
    torch.testing.assert_close(result.masked_average.cpu(), average * mask)


def test_sharpened_map_is_low_passed_at_the_resolution() -> None:
    rng = np.random.default_rng(3)
    truth = _truth(rng)
    result = postprocess(truth + _noise(rng, 0.05), truth + _noise(rng, 0.05), PROPER_MASK, PX,
                         adhoc_bfac=-500)
    assert result.bfactor_A2 == -500
    assert result.guinier_fit is None
    spectrum = torch.fft.rfftn(result.sharpened.double()).abs()
    radius = torch.from_numpy(RADIUS)
    beyond = spectrum[radius > result.resolution_shell + 1]
    assert float(beyond.max()) < 1e-9 * float(spectrum.max())
    torch.testing.assert_close(result.sharpened_masked, result.sharpened
                               * torch.from_numpy(PROPER_MASK).to(result.sharpened.dtype))


# --------------------------------------------------------------------------- tight mask
def test_tight_mask_inflation_is_removed_by_phase_randomisation() -> None:
    rng = np.random.default_rng(0)
    cutoff = 12  # the truth holds no signal beyond this shell: no honest FSC can pass it
    truth = _truth(rng, cutoff_shell=cutoff)
    h1, h2 = truth + _noise(rng, 0.02), truth + _noise(rng, 0.02)
    tight = (truth > 0.2 * truth.max()).astype(np.float64)  # binary, cuts through the blobs
    assert 0.005 < tight.mean() < 0.05

    proper = postprocess(h1, h2, PROPER_MASK, PX)
    result = postprocess(h1, h2, tight, PX, force_mask=True)
    default = postprocess(h1, h2, tight, PX)
    beyond = slice(cutoff + 2, None)
    r0 = result.randomize_shell

    # the tight mask inflates the masked FSC where there is no signal at all ...
    assert float(result.fsc_masked[beyond].mean()) > 0.3
    # ... the phase-randomised maps, masked, show the same mask-induced correlation ...
    assert float(result.fsc_random_masked[r0 + 2:].mean()) > 0.3
    # ... and the corrected FSC removes it
    assert float(result.fsc_corrected[beyond].abs().mean()) < 0.15
    assert result.resolution_shell <= proper.resolution_shell + 1
    assert result.resolution_shell <= cutoff + 1
    assert default.resolution_shell <= proper.resolution_shell + 1
    # without noise substitution the tight mask would claim a far better resolution
    assert resolution_shell(result.fsc_masked) > cutoff + 4


# --------------------------------------------------------------------------- B-factor
@pytest.mark.parametrize("b_true", [150.0, 400.0])
@pytest.mark.parametrize("lowres", [10.0, 30.0])
def test_bfactor_recovered_from_flat_spectrum(b_true: float, lowres: float) -> None:
    rng = np.random.default_rng(7)
    flat = rng.standard_normal((D, D, D))  # white: flat mean amplitude per shell
    decayed = _filter(flat, np.exp(-b_true / 4 * (RADIUS / (D * PX)) ** 2))
    sigma = 0.01 * decayed.std()
    h1 = decayed + sigma * rng.standard_normal(flat.shape)
    h2 = decayed + sigma * rng.standard_normal(flat.shape)
    result = postprocess(h1, h2, np.ones_like(flat), PX, autob_lowres_A=lowres)

    assert result.guinier_fit is not None
    assert result.resolution_A == pytest.approx(2 * PX)  # FSC ≈ 1 to Nyquist
    # RELION's sign: B = 4·slope is negative for a decaying spectrum; applying it sharpens
    assert result.bfactor_A2 == pytest.approx(-b_true, rel=0.10)
    # sharpening multiplies amplitudes by exp(−B/4·s²): the Guinier columns differ by −B/4·s²
    # (shells 1 .. D/2 − 1; the Nyquist shell is half outside the sphere, where B zeroes it)
    x = result.guinier["resolution_squared"][1:-1]
    lift = result.guinier["sharpened"][1:-1] - result.guinier["weighted"][1:-1]
    np.testing.assert_allclose(lift, -result.bfactor_A2 / 4 * x, atol=0.02)


def test_too_few_guinier_shells_give_a_clear_warning() -> None:
    """RELION applies B = 0 without a word when the fit range holds < 2 shells; we say so and
    name the range and the way out."""
    rng = np.random.default_rng(1)
    truth = _truth(rng)
    h1, h2 = truth + _noise(rng, 1e-4), truth + _noise(rng, 1e-4)  # signal up to Nyquist
    result = postprocess(h1, h2, PROPER_MASK, PX, autob_lowres_A=8.1)  # only Nyquist (8 Å)
    assert result.bfactor_A2 == 0.0 and result.guinier_fit is None
    assert any("no B-factor fitted" in w and "8.1–8.00 Å holds 1 shell" in w
               and "--autob_lowres" in w for w in result.warnings)
    assert postprocess(h1, h2, PROPER_MASK, PX, autob_lowres_A=8.5).guinier_fit.points == 2


def test_guinier_range_runs_to_nyquist_as_relion() -> None:
    """Default range: from ``autob_lowres`` to Nyquist, over every shell the FSC weighting
    leaves non-zero, past the resolution (RELION 3.1's ``--autob_highres 0``)."""
    rng = np.random.default_rng(3)
    truth = _truth(rng)
    result = postprocess(truth + _noise(rng, 0.002), truth + _noise(rng, 0.002), PROPER_MASK,
                         PX, autob_lowres_A=20.0)
    fit = result.guinier_fit
    weighted = result.guinier["weighted"]
    signal = np.flatnonzero(weighted > -99)
    in_range = [i for i in signal if i >= D * PX / 20.0]
    assert fit.high_A == pytest.approx(2 * PX) and fit.points == len(in_range)
    assert max(in_range) > result.resolution_shell  # past the resolution


def test_bad_inputs_raise_input_error() -> None:
    vol = np.zeros((D, D, D))
    with pytest.raises(InputError, match="differ in shape"):
        postprocess(vol, np.zeros((D - 2,) * 3), vol, PX)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        postprocess(vol, vol, vol + 2.0, PX)
    with pytest.raises(InputError, match="mask shape"):
        postprocess(vol, vol, np.ones((D + 2, D + 2, D + 2)), PX)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("lowres", [10.0, 20.0])
def test_bfactor_matches_relion_postprocess(tmp_path: Path, seed: int, lowres: float,
                                            relion) -> None:
    """Same half maps and mask, RELION's default Guinier range (``--autob_lowres`` to Nyquist):
    the B-factors agree within 5 % where the range holds signal (resolution at Nyquist).

    Where it holds only FSC-weighted noise RELION's own B moves by a factor 2.5 with its
    ``--random_seed`` (the phase randomisation decides where the FSC weights end), so no
    program can match it there; see the module docstring of subtomo.maps.postprocess."""
    rng = np.random.default_rng(seed)
    truth = _truth(rng)
    h1 = _write_map(tmp_path / "m_half1.mrc", truth + _noise(rng, 1e-4))
    h2 = _write_map(tmp_path / "m_half2.mrc", truth + _noise(rng, 1e-4))
    mask = _write_map(tmp_path / "mask.mrc", PROPER_MASK)
    relion("relion_postprocess", "--i", h1, "--i2", h2, "--mask", mask, "--angpix",
               str(PX), "--auto_bfac", "--autob_lowres", str(lowres), "--o",
               str(tmp_path / "postprocess"))  # its logfile.pdf goes beside it
    theirs = starfile.read(tmp_path / "postprocess.star", always_dict=True)["general"]
    ours = postprocess(*(mrcfile.read(p) for p in (h1, h2, mask)), PX, autob_lowres_A=lowres)
    assert ours.resolution_A == pytest.approx(theirs["rlnFinalResolution"])
    assert ours.bfactor_A2 == pytest.approx(theirs["rlnBfactorUsedForSharpening"], rel=0.05)


# --------------------------------------------------------------------------- STAR and CLI
REAL_POSTPROCESS = "tests/data/postprocess.star"


def test_postprocess_star_matches_relion_labels(tmp_path: Path, starfile_sdist: Path) -> None:
    real = starfile.read(starfile_sdist / REAL_POSTPROCESS, always_dict=True)
    curves = {name: np.linspace(1, 0, D // 2 + 1) for name in
              ("corrected", "unmasked", "masked", "random_masked")}
    general = {"final_resolution_A": 9.6, "bfactor_A2": -812.5, "half1": "h1.mrc",
               "half2": "h2.mrc", "mask": "mask.mrc", "randomise_from_A": 19.2,
               "guinier_slope": -203.125, "guinier_intercept": -4.5,
               "guinier_correlation": -0.99}
    guinier = {"resolution_squared": np.arange(5) / 100.0, "original": -np.arange(5.0),
               "weighted": -np.arange(5.0) - 0.1, "sharpened": np.full(5, -1.0)}
    path = tmp_path / "postprocess.star"
    write_fsc_star(path, curves, D, PX, general, guinier)
    ours = starfile.read(path, always_dict=True)

    assert list(ours) == ["general", "fsc", "guinier"]
    assert list(ours["fsc"].columns) == list(real["fsc"].columns)
    assert set(real["general"]) <= set(ours["general"])
    assert set(real["guinier"].columns) <= set(ours["guinier"].columns)
    assert ours["general"]["rlnFittedSlopeGuinierPlot"] == -203.125
    fsc_block = ours["fsc"]
    assert fsc_block["rlnSpectralIndex"].tolist() == list(range(D // 2 + 1))
    assert fsc_block["rlnAngstromResolution"].iloc[0] == 999.0  # RELION's shell-0 value
    assert fsc_block["rlnAngstromResolution"].iloc[-1] == pytest.approx(2 * PX)
    np.testing.assert_array_equal(fsc_block["rlnFourierShellCorrelationCorrected"],
                                  curves["corrected"])  # lossless


def _cli(argv: list[str]) -> int:
    """``subtomo postprocess ...`` through the real CLI if registered, else the same wiring."""
    from subtomo import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "postprocess" in sub.choices:
        return cli.main(["postprocess", *argv])
    parser = argparse.ArgumentParser(prog="subtomo")
    postprocess_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["postprocess", *argv])
    try:
        return int(args.run(args) or 0)
    except InputError as exc:
        import sys

        print(f"subtomo: error: {exc}", file=sys.stderr)
        return 2


def _write_map(path: Path, data: np.ndarray, px: float = PX) -> str:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data.astype(np.float32))
        mrc.voxel_size = px
    return str(path)


def test_cli_writes_all_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(2)
    truth = _truth(rng)
    h1 = _write_map(tmp_path / "run_half1_class001_unfil.mrc", truth + _noise(rng, 0.05))
    h2 = _write_map(tmp_path / "run_half2_class001_unfil.mrc", truth + _noise(rng, 0.05))
    mask = _write_map(tmp_path / "mask.mrc", PROPER_MASK)
    out = tmp_path / "PostProcess" / "job001"

    code = _cli(["--i", h1, "--i2", h2, "--mask", mask, "--autob_lowres", "30", "--o", str(out)])
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert len(printed) == 1 and "Final resolution" in printed[0] and "B-factor" in printed[0]
    for name in postprocess_command.OUTPUTS:
        assert (out / name).is_file(), name
    for name in ("postprocess_fsc.png", "postprocess_guinier.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # no temporary files left behind
    with mrcfile.open(out / "postprocess.mrc") as mrc:
        assert mrc.data.shape == (D, D, D)
        assert float(mrc.voxel_size.x) == pytest.approx(PX)
    star = starfile.read(out / "postprocess.star", always_dict=True)
    general = star["general"]
    assert general["rlnUnfilteredMapHalf1"] == h1 and general["rlnMaskName"] == mask
    assert f"{general['rlnFinalResolution']:.2f}" in printed[0]
    assert general["rlnBfactorUsedForSharpening"] < 0
    assert "rlnFittedSlopeGuinierPlot" in general
    assert len(star["fsc"]) == D // 2 + 1


def test_cli_mismatched_half_maps_exit_2(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)  # any non-constant maps
    h1 = _write_map(tmp_path / "half1.mrc", rng.normal(size=(D, D, D)))
    h2 = _write_map(tmp_path / "half2.mrc", rng.normal(size=(D - 4,) * 3))
    mask = _write_map(tmp_path / "mask.mrc", np.ones((D, D, D)))
    code = _cli(["--i", h1, "--i2", h2, "--mask", mask, "--o", str(tmp_path / "pp")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "differ in shape" in err[0] and "half2.mrc" in err[0]
    assert not (tmp_path / "pp").exists()


@pytest.mark.parametrize("case", ["pixel", "mask_range", "mask_shape"])
def test_cli_rejects_inconsistent_inputs(case: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    vol = np.random.default_rng(0).normal(size=(D, D, D))  # any non-constant map
    h1 = _write_map(tmp_path / "half1.mrc", vol)
    h2 = _write_map(tmp_path / "half2.mrc", vol, px=PX * 2 if case == "pixel" else PX)
    mask_data = {"mask_range": np.full_like(vol, 1.5), "mask_shape": np.ones((D, D, D - 2))}.get(
        case, np.ones_like(vol))
    mask = _write_map(tmp_path / "mask.mrc", mask_data)
    code = _cli(["--i", h1, "--i2", h2, "--mask", mask, "--o", str(tmp_path / "pp")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert {"pixel": "pixel size", "mask_range": "[0, 1]", "mask_shape": "mask shape"}[case] \
        in err[0]


def test_cli_never_overwrites_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "job"
    out.mkdir()
    vol = np.random.default_rng(0).normal(size=(D, D, D))
    h1 = _write_map(out / "postprocess.mrc", vol)  # an input where an output would go
    h2 = _write_map(tmp_path / "half2.mrc", vol)
    mask = _write_map(tmp_path / "mask.mrc", np.ones_like(vol))
    before = Path(h1).read_bytes()
    assert _cli(["--i", h1, "--i2", h2, "--mask", mask, "--o", str(out)]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert Path(h1).read_bytes() == before
