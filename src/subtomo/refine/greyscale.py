"""Reference greyscale: put a reference from elsewhere on the particles' intensity scale.

The log-likelihood of a pose, ``Re Σ w C conj(s P) X − ½ s² Σ w C² |P|²``, depends on the
reference's scale ``s``: a reference far too bright is pulled towards the poses that hide its
strongest Fourier components in the missing wedge (where ``C = 0`` and the power term
vanishes), one far too dim gives flat posteriors that blur the first maps. RELION asks for
``--firstiter_cc`` (a first iteration scored by the scale-free cross-correlation) whenever a
reference is "not on absolute greyscale": a map from another program, or one rescaled from
another pixel size. Here the scale is measured instead: a sample of particles is searched
with the cross-correlation score at the first iteration's sampling and frequencies, and ``s``
is the noise-weighted least-squares scale of the reference's best sections onto them,

    s = Σ w C Re(conj(P) X) / Σ w C² |P|²    (shells ≥ 1, ``w = h / σ²``),

after which the first iteration scores the rescaled reference by likelihood. Once the first
maps are reconstructed from the particles they are on the particles' scale by construction.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from subtomo.align.search import Searcher, SearchSettings
from subtomo.fourier.projector import Projector
from subtomo.io.particles import ParticleSet
from subtomo.parallel.distributed import Context
from subtomo.refine.expectation import masked
from subtomo.refine.images import background_weights, iterate_batches


def reference_scale(
    ps: ParticleSet, rows: np.ndarray, reference: torch.Tensor, settings: SearchSettings,
    sigma2: np.ndarray, matrices: np.ndarray, origins_px: np.ndarray, *, box: int, ctf: bool,
    mask: torch.Tensor | None, pad: int = 2, batch_size: int = 32, sample: int = 64,
    device: torch.device | str = "cpu", ctx: Context | None = None,
) -> float:
    """Least-squares scale (see the module docstring) of ``reference`` against ``sample``
    particles of ``rows`` spread evenly over them (a scalar needs few), searched by
    cross-correlation with ``settings`` (the first iteration's); ``matrices`` ``(N, 3, 3)``
    and ``origins_px`` ``(N, 3)`` are the current poses (priors of local searches, centring
    of the particles).
    Sums are all-reduced over ``ctx``'s ranks."""
    ctx = ctx or Context()
    rows = np.asarray(rows)
    picked = np.unique(np.linspace(0, len(rows) - 1, min(sample, len(rows))).round()).astype(int)
    chosen = ctx.shard(rows[picked])
    searcher = Searcher(Projector(reference.to(device=device, dtype=torch.float32), pad=pad),
                        replace(settings, cc=True))
    freqs = searcher.fine
    flat = freqs.flat.to(device)
    shell = freqs.shell.to(device)
    inv_sigma2 = torch.as_tensor(1.0 / np.maximum(sigma2, 1e-30), dtype=torch.float32,
                                 device=device)
    w = (freqs.multiplicity.to(device) * inv_sigma2[shell] * (shell > 0)).double()
    prior = torch.as_tensor(matrices, dtype=torch.float32, device=device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in iterate_batches(ps, chosen, box=box, ctf=ctf, batch_size=batch_size,
                                 device=device,
                                 shifts_px=torch.as_tensor(origins_px, dtype=torch.float32),
                                 background=background_weights(box, mask, device)):
        spectra = masked(batch.spectra, mask, box)
        index = torch.as_tensor(batch.rows, device=device)
        best = searcher.search(spectra, batch.ctf, None, prior[index])
        b = spectra.shape[0]
        x = spectra.reshape(b, -1).index_select(1, flat) * freqs.phases(best.shifts_px)
        c = (torch.ones_like(x.real) if batch.ctf is None
             else batch.ctf.reshape(b, -1).index_select(1, flat))
        p = best.projection.to(x.dtype)
        sums[0] += (w * (c * (p.conj() * x).real).double()).sum()
        sums[1] += (w * (c**2 * (p.real**2 + p.imag**2)).double()).sum()
    ctx.sum_(sums)
    if float(sums[1]) <= 0:
        return 1.0
    return float(sums[0] / sums[1])
