"""Fourier basics of cubic volumes and 2D images (conventions: :mod:`.grid`'s docstring).

- :mod:`.grid`: centred half spectra, frequency grids (3D and 2D), shells, crops and pads,
  low-pass filters, soft spheres.
- :mod:`.shift`: translations as phase factors (3D and 2D).
- :mod:`.fsc`: Fourier shell correlation and RELION's resolution rules.
- :mod:`.projector`: central slices (projection) and their insertion (back-projection).
- :mod:`.reconstruction`: the map from back-projected sums (gridding correction, Wiener step).

The FSC itself is ``subtomo.fourier.fsc.fsc`` (the package attribute ``fsc`` stays the
module).
"""

from subtomo.fourier import fsc, reconstruction
from subtomo.fourier.fsc import (
    resolution_at,
    resolution_shell,
    shell_resolution_A,
    shell_to_A,
)
from subtomo.fourier.grid import (
    centred_irfft,
    centred_rfft,
    crop_spectrum,
    frequencies_2d,
    hermitian_weights,
    lowpass,
    lowpass_map,
    lowpass_mask,
    pad_spectrum,
    radial_average,
    resample_map,
    rfft_freqs,
    rfft_shape,
    shell_index,
    shell_radius_px,
    soft_sphere,
)
from subtomo.fourier.projector import Backprojector, Projector
from subtomo.fourier.reconstruction import reconstruct_map
from subtomo.fourier.shift import phase_factors, phase_shift, shift_spectra_, shift_spectra_2d_

__all__ = [
    "Backprojector",
    "Projector",
    "centred_irfft",
    "centred_rfft",
    "crop_spectrum",
    "frequencies_2d",
    "fsc",
    "hermitian_weights",
    "lowpass",
    "lowpass_map",
    "lowpass_mask",
    "pad_spectrum",
    "phase_factors",
    "phase_shift",
    "radial_average",
    "reconstruct_map",
    "reconstruction",
    "resample_map",
    "resolution_at",
    "resolution_shell",
    "rfft_freqs",
    "rfft_shape",
    "shell_index",
    "shell_radius_px",
    "shell_resolution_A",
    "shell_to_A",
    "shift_spectra_",
    "shift_spectra_2d_",
    "soft_sphere",
]
