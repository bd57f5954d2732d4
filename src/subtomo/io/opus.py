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

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subtomo.ctf.dose import dose_filter
from subtomo.ctf.tilt_scheme import TiltScheme
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


def tilt_table(scheme: TiltScheme, *, defocus_u_A: float, defocus_v_A: float,
               astigmatism_angle_deg: float, voltage_kv: float, cs_mm: float,
               amplitude_contrast: float, pixel_size_A: float, tilt_sign: float = 1.0
               ) -> pd.DataFrame:
    """One particle's CSV rows (tilts in acquisition order), OPUS's units (module docstring).

    TiltAngle is −θ: OPUS puts tilt θ on the plane rotated by ``rot_2d(−θ)`` about y (RELION's
    sense, as its code notes), the mirror of ours (:mod:`subtomo.ctf.volume`: normal
    (−sin θ, 0, cos θ)); tests/io/test_opus_export.py measures it. ``tilt_sign`` −1 writes +θ
    (for tests: the export that must fail)."""
    angles = np.asarray(scheme.tilt_angles_deg, float)
    offsets = np.asarray(scheme.defocus_offset_A, float)
    dfu, dfv = defocus_u_A + offsets, defocus_v_A + offsets
    b_A2 = dose_bfactor_A2(np.asarray(scheme.pre_exposure_e_per_A2, float), pixel_size_A)
    t = len(angles)
    return pd.DataFrame({
        "TiltAngle": -tilt_sign * angles,
        "Defocus": -(dfu + dfv) / 2 * 1e-10,
        "Voltage": np.full(t, voltage_kv * 1e3),
        "Cs": np.full(t, cs_mm * 1e-3),
        "Amplitude": np.full(t, amplitude_contrast),
        "Bfactor": -4 * b_A2 * 1e-20,
        "Scale": np.ones(t),
        "DefocusDelta": -(dfu - dfv) / 2 * 1e-10,
        "AstigmatismAngle": np.full(t, np.deg2rad(astigmatism_angle_deg)),
    }, columns=list(CSV_COLUMNS))


def write_star(path: str | Path, table: pd.DataFrame) -> None:
    """RELION 3.0 STAR (one ``data_`` block, no optics), the flavour OPUS's reader parses."""
    lines = ["", "data_", "", "loop_"]
    lines += [f"_{name} #{i + 1}" for i, name in enumerate(STAR_COLUMNS)]
    for row in table[list(STAR_COLUMNS)].itertuples(index=False):
        lines.append(" ".join(f"{v:.6f}" if isinstance(v, float) else str(v) for v in row))
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n\n")
