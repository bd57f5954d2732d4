"""RELION's ``postprocess.star``: ``data_general``, ``data_fsc`` and ``data_guinier`` (written),
and the FSC curve of a ``postprocess.star`` / ``fsc.star`` (read).

Labels and layout follow ``relion_postprocess`` (``Postprocessing::writeOutput``): shell 0 is
written with a resolution of 999 Å (1/999 Å⁻¹), as RELION does. Curves are given by short names
(``corrected``, ``unmasked``, ``masked``, ``random_masked``) or by their RELION labels; general
values likewise (``final_resolution_A`` … or ``rlnFinalResolution`` …). Written atomically and
losslessly through :func:`subtomo.io.star_text.write_star`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from subtomo.errors import InputError
from subtomo.io.star_text import read_star, write_star

# short name -> RELION label, in RELION's column order
FSC_LABELS: dict[str, str] = {
    "corrected": "rlnFourierShellCorrelationCorrected",
    "unmasked": "rlnFourierShellCorrelationUnmaskedMaps",
    "masked": "rlnFourierShellCorrelationMaskedMaps",
    "random_masked": "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps",
}

GENERAL_LABELS: dict[str, str] = {
    "final_resolution_A": "rlnFinalResolution",
    "bfactor_A2": "rlnBfactorUsedForSharpening",
    "half1": "rlnUnfilteredMapHalf1",
    "half2": "rlnUnfilteredMapHalf2",
    "mask": "rlnMaskName",
    "randomise_from_A": "rlnRandomiseFrom",
    "guinier_slope": "rlnFittedSlopeGuinierPlot",
    "guinier_intercept": "rlnFittedInterceptGuinierPlot",
    "guinier_correlation": "rlnCorrelationFitGuinierPlot",
}

GUINIER_LABELS: dict[str, str] = {
    "resolution_squared": "rlnResolutionSquared",
    "original": "rlnLogAmplitudesOriginal",
    "mtf_corrected": "rlnLogAmplitudesMTFCorrected",
    "weighted": "rlnLogAmplitudesWeighted",
    "sharpened": "rlnLogAmplitudesSharpened",
    "intercept": "rlnLogAmplitudesIntercept",
}


def _as_numpy(values: object) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _relabel(items: Mapping[str, object], table: Mapping[str, str], what: str) -> dict:
    """Map short names to RELION labels (RELION labels pass); return in ``table``'s order."""
    known = set(table.values())
    out: dict[str, object] = {}
    for key, value in items.items():
        label = table.get(key, key)
        if label not in known:
            raise ValueError(f"unknown {what} {key!r}; use one of {sorted(table)} or "
                             f"{sorted(known)}")
        out[label] = value
    order = list(table.values())
    return {label: out[label] for label in sorted(out, key=order.index)}


def fsc_table(curves: Mapping[str, object], box: int, pixel_size_A: float) -> pd.DataFrame:
    """The ``data_fsc`` loop: spectral index, 1/Å, Å, then the curves in RELION's order."""
    columns = _relabel(curves, FSC_LABELS, "FSC curve")
    n = box // 2 + 1
    index = np.arange(n)
    with np.errstate(divide="ignore"):
        angstrom = np.where(index > 0, box * pixel_size_A / np.maximum(index, 1), 999.0)
    table = {
        "rlnSpectralIndex": index.astype(np.int64),
        "rlnResolution": 1.0 / angstrom,
        "rlnAngstromResolution": angstrom,
    }
    for label, values in columns.items():
        array = _as_numpy(values)
        if array.shape != (n,):
            raise ValueError(f"{label}: expected {n} shells for a {box}-pixel box, got "
                             f"shape {array.shape}")
        table[label] = array
    return pd.DataFrame(table)


def write_fsc_star(
    path: str | Path,
    curves: Mapping[str, object],
    box: int,
    pixel_size_A: float,
    general: Mapping[str, object],
    guinier: Mapping[str, object] | None = None,
) -> None:
    """Write a RELION ``postprocess.star`` (``data_general``, ``data_fsc``, ``data_guinier``).

    ``curves``: ``(box // 2 + 1,)`` arrays per shell; ``general``: final resolution (Å), B-factor
    (Å²), Guinier fit, file names, randomisation resolution (Å); ``guinier``: equal-length arrays,
    ``resolution_squared`` (1/Å²) and the ln-amplitude columns (−99 where undefined, as RELION).
    """
    blocks: dict[str, pd.DataFrame | dict] = {}
    general_block = _relabel(general, GENERAL_LABELS, "general value")
    blocks["general"] = {
        k: (float(v) if isinstance(v, int | float | np.floating | np.integer) else str(v))
        for k, v in general_block.items()
    }
    blocks["fsc"] = fsc_table(curves, box, pixel_size_A)
    if guinier is not None:
        columns = _relabel(guinier, GUINIER_LABELS, "Guinier column")
        arrays = {label: _as_numpy(values) for label, values in columns.items()}
        lengths = {a.shape for a in arrays.values()}
        if len(lengths) != 1 or len(next(iter(lengths))) != 1:
            raise ValueError(f"Guinier columns must be 1-D and equally long, got {lengths}")
        blocks["guinier"] = pd.DataFrame(arrays)
    write_star(blocks, path)


def read_fsc_curve(path: str | Path) -> np.ndarray:
    """The FSC by shell of a ``postprocess.star`` / ``fsc.star`` (``data_fsc``:
    ``rlnFourierShellCorrelationCorrected``, else ``rlnFourierShellCorrelation``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found", field="--fsc")
    blocks = read_star(path)
    table = blocks.get("fsc")
    if table is None or not hasattr(table, "columns"):
        raise InputError(path, "no data_fsc table", field="rlnFourierShellCorrelationCorrected")
    for label in ("rlnFourierShellCorrelationCorrected", "rlnFourierShellCorrelation",
                  "rlnGoldStandardFsc"):
        if label in table.columns:
            order = (table["rlnSpectralIndex"].to_numpy(int) if "rlnSpectralIndex" in table
                     else np.arange(len(table)))
            curve = np.zeros(int(order.max()) + 1)
            curve[order] = table[label].to_numpy(float)
            return curve
    raise InputError(path, "no FSC column in data_fsc", field="rlnFourierShellCorrelationCorrected")
