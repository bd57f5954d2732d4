"""OPUS-ET (``dsd train_tomo --warp``) inputs: a RELION 3.0 particle STAR and one CSV of per-tilt
CTF parameters per particle, in the units of the modified Warp that OPUS-ET reads
(``cryodrgn/starfile.py::get_warp3dctfs`` at opusTomo 690d8e3).

OPUS reads, for particle i, ``<datadir>/<rlnImageName>`` (the subtomogram, CTF applied once, not
corrected) and ``<datadir>/<rlnCtfImage with suffix .csv>``, one row per tilt::

    TiltAngle (deg), Defocus = −(ΔfU + ΔfV)/2 (m), DefocusDelta = −(ΔfU − ΔfV)/2 (m),
    AstigmatismAngle (rad), Voltage (V), Cs (m), Amplitude, Bfactor (m²), Scale

and turns them into ΔfU, ΔfV (Å), kV, mm and the envelope B_opus = −Bfactor·10²⁰/4, applied as
exp(−B_opus s²/4). The 3D CTF it grids is Σ_t Scale_t CTF_t / Σ_t |Scale_t| over the tilt
planes (its grid weights are 1 everywhere, not only on the planes).
Our dose filter exp(−N/(2 Ne(s))) is not a B-factor; each tilt gets the B whose envelope fits
it best in log space over 0 < s ≤ Nyquist (see :func:`dose_bfactor_A2`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subtomo.ctf.dose import dose_filter
from subtomo.ctf.tilt_scheme import TiltScheme
from subtomo.ctf.volume import tilt_frame
from subtomo.errors import InputError
from subtomo.io.files import atomic_path

CSV_COLUMNS = ("TiltAngle", "Defocus", "Voltage", "Cs", "Amplitude", "Bfactor", "Scale",
               "DefocusDelta", "AstigmatismAngle")
STAR_COLUMNS = ("rlnImageName", "rlnCtfImage", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                "rlnOriginX", "rlnOriginY", "rlnOriginZ")


def dose_bfactor_A2(exposure_e_per_A2: np.ndarray, pixel_size_A: float, n: int = 64
                    ) -> np.ndarray:
    """B (Å²) per exposure N with exp(−B s²/4) ≈ exp(−N/(2 Ne(s))): least squares in log space
    over s_j = j/(2 n pixel_size_A), j = 1…n, B = 4 Σ s² (N/(2 Ne)) / Σ s⁴."""
    s = torch.arange(1, n + 1, dtype=torch.float64) / (2 * n * pixel_size_A)
    exposure = torch.as_tensor(np.asarray(exposure_e_per_A2, float), dtype=torch.float64)
    minus_log = -torch.log(dose_filter(s, exposure[:, None]))
    return (4 * (s**2 * minus_log).sum(-1) / (s**4).sum()).numpy()


def tilt_table(frames: np.ndarray, *, exposure_e_per_A2: np.ndarray, defocus_u_A: np.ndarray,
               defocus_v_A: np.ndarray, astigmatism_angle_deg: np.ndarray, voltage_kv: float,
               cs_mm: float, amplitude_contrast: float, pixel_size_A: float,
               scale: np.ndarray | None = None, source: str | Path | None = None
               ) -> pd.DataFrame:
    """One particle's CSV rows in OPUS's units (module docstring), one per tilt.

    ``frames (T, 3, 3)``: rows image x ``u``, image y ``v`` and beam ``n`` of each tilt in the
    subtomogram's frame (:mod:`subtomo.ctf.volume`); the other arrays ``(T,)``, astigmatism
    angles measured from ``u``. OPUS tilts about y only and puts TiltAngle φ on the plane with
    normal ``(sin φ, 0, cos φ)`` (the mirror of our θ: φ = −θ for ``Ry(θ)``; RELION's sense, as
    its code notes; tests/io/test_opus_export.py measures it), so φ = atan(n_x / n_z); a beam
    with ``|n_y| > sin 1°`` is refused. The astigmatism angle α is re-measured in OPUS's image
    axes for φ: α' = atan2(d·v_φ, d·u_φ) with d = cos α u + sin α v."""
    frames = torch.as_tensor(np.asarray(frames, float), dtype=torch.float64)
    n = frames[:, 2]
    n = n * torch.where(n[:, 2] < 0, -1.0, 1.0)[:, None]  # a plane: n and −n alike
    off_deg = math.degrees(math.asin(min(1.0, float(n[:, 1].abs().max()))))
    if off_deg > 1.0:
        raise InputError(source, "OPUS-ET models tilts about the y axis only; a tilt's beam "
                         f"leaves the xz plane by {off_deg:.1f}°", field="rlnTomoXTilt")
    phi = torch.atan2(n[:, 0], n[:, 2])
    u_opus, _ = tilt_frame(torch.rad2deg(-phi), dtype=torch.float64)
    alpha = torch.deg2rad(torch.as_tensor(np.asarray(astigmatism_angle_deg, float)))
    d = torch.cos(alpha)[:, None] * frames[:, 0] + torch.sin(alpha)[:, None] * frames[:, 1]
    alpha_opus = torch.atan2(d[:, 1], (d * u_opus).sum(-1))
    dfu, dfv = np.asarray(defocus_u_A, float), np.asarray(defocus_v_A, float)
    b_A2 = dose_bfactor_A2(np.asarray(exposure_e_per_A2, float), pixel_size_A)
    t = len(frames)
    return pd.DataFrame({
        "TiltAngle": torch.rad2deg(phi).numpy(),
        "Defocus": -(dfu + dfv) / 2 * 1e-10,
        "Voltage": np.full(t, voltage_kv * 1e3),
        "Cs": np.full(t, cs_mm * 1e-3),
        "Amplitude": np.full(t, amplitude_contrast),
        "Bfactor": -4 * b_A2 * 1e-20,
        "Scale": np.ones(t) if scale is None else np.asarray(scale, float),
        "DefocusDelta": -(dfu - dfv) / 2 * 1e-10,
        "AstigmatismAngle": alpha_opus.numpy(),
    }, columns=list(CSV_COLUMNS))


def scheme_frames(scheme: TiltScheme, tilt_sign: float = 1.0) -> np.ndarray:
    """``(T, 3, 3)`` rows u, y, n of a tilt scheme's tilts about y (:func:`tilt_frame`);
    ``tilt_sign`` −1 mirrors them (for tests: the export that must fail)."""
    u, n = tilt_frame(tilt_sign * torch.as_tensor(scheme.tilt_angles_deg, dtype=torch.float64),
                      dtype=torch.float64)
    v = torch.zeros_like(u)
    v[:, 1] = 1.0
    return torch.stack([u, v, n], dim=1).numpy()


def write_star(path: str | Path, table: pd.DataFrame) -> None:
    """RELION 3.0 STAR (one ``data_`` block, no optics), the flavour OPUS's reader parses."""
    lines = ["", "data_", "", "loop_"]
    lines += [f"_{name} #{i + 1}" for i, name in enumerate(STAR_COLUMNS)]
    for row in table[list(STAR_COLUMNS)].itertuples(index=False):
        lines.append(" ".join(f"{v:.6f}" if isinstance(v, float) else str(v) for v in row))
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n\n")
