"""The heterogeneity model: a variational autoencoder on subtomograms (after OPUS-TOMO's idea;
our own network, written from the description below, not from its code).

Notation: particle ``i`` with subtomogram ``x_i`` (box ``D``, pixel ``a`` Å), 3D CTF
``C_i(k)`` (0 in the missing wedge), RELION pose ``A_i`` and origin ``o_i`` (the particle sits
at ``-o_i`` in its box; ``x_i`` below is already centred by the Fourier phase ``+o_i``), solvent
mask ``M`` in the reference frame, consensus map ``V_0``.

**Encoder** ``q(z | x_i) = N(mu_i, diag exp(logvar_i))``. Its input is the subtomogram made
comparable across particles: CTF-weighted in Fourier space (``X_i sign(C_i) |C_i|^alpha``,
``--ctfalpha``; the default 1 is the matched filter ``X_i C_i``, which weights each frequency by
the signal it carries, where phase flipping (0) passes the noise of the CTF's zeros, the high
frequencies and the late, dose-damaged tilts at full weight), Fourier-cropped to ``d = D *
downfrac`` voxels (pixel ``a D / d``), rotated into the reference frame (``y_i(p) = x_i(A_i
p)``, trilinear), multiplied by the mask and divided by one global data scale; the consensus,
seen at the particle's pose through its CTF, is subtracted first, so the input holds what sets
the particle apart (and noise). Three differences between particles that are no structure are
taken out before (issue 28, measured on data simulated by independent code): the box mean
(Fourier origin) of data and CTF is set to 0 (an additive offset per particle), the data are
divided by their least-squares contrast scale against that consensus view (``ŝ_i``, clamped
to [0.5, 2]), and each particle is first centred on the masked consensus by the peak of their
CTF-weighted cross-correlation within ``--offset-range`` px (a consensus translation a
fraction of a pixel off is otherwise the largest difference the encoder sees, and the first
principal component of the latents follows it instead of the structure).
Network: a 3×3×3 convolution (8 channels), then stride-2 3×3×3 convolutions (16, 32, 64, 64 …
channels) down to at most 4³, two linear layers (256 hidden units), LeakyReLU(0.1) between
layers, plus a linear path from the input averaged to 6³ voxels into ``mu``, initialised to the
whitened principal components of 256 particles' inputs (the best linear encoder: the decoder
sees informative latents from the first step, where a random network gives it noise and the KL
then pulls the latent to the prior). No batch statistics, so a batch
split over processes gives the same numbers.

**Decoder** ``V(z)``: a linear layer from the composition latent to 64 channels of ``(T/16)³``,
four stride-2 transposed 4×4×4 convolutions (64 → 32 → 16 → 8 → 1 channels; 3×3×3 convolutions
after the second and third) to the template grid ``T³`` (``--templateres``, covering the same
field of view as the particle box, pixel ``a D / T``). Its output is a *correction* ``Δ(z)`` of
the consensus map::

    V(z) = M · (V_0 + s · L[Δ(z)])        s = std of V_0 inside M (Δ works in O(1) units)

with the last layer initialised to zero, so training starts exactly at the consensus model.
``L`` band-limits the correction to the resolution the encoder sees: a raised-cosine low-pass
that passes Fourier shells up to ``d/2 - 2`` and stops at ``d/2`` (the encoder box's Nyquist,
``2 a D / d`` Å; 10.7 Å for 48³ at 4 Å with ``--downfrac 0.75``). Per-particle differences
finer than that cannot be learned from the encoder's input, and a free decoder fills those
shells with noise it fits.
Why a correction and not a map learned from scratch: the consensus already explains the mean
signal, so from the first step the gradients carry only what differs between particles and
the latent has nothing else to learn; a map learned from noise needs many more epochs (GPU
time on the peers' data) before its heterogeneity means anything. The consensus is the
CTF-weighted reconstruction at the given poses (``--ref``, or computed at the start).

**Rigid bodies** (``--masks m_1 … m_J``, ``--zaffinedim``): the last ``zaffinedim`` latent
dimensions (the dynamics latent ``u``) go through one linear head per body to a rotation vector
``w_j`` (each component ≤ 0.5 rad, ``0.5 tanh``) and a translation ``t_j`` (≤ D a / 10 Å,
tanh) about the body's centre of mass ``c_j``. The body's density moves rigidly, the rest stays::

    V_u(p) = (1 - Σ_j m_j(p)) V(p) + Σ_j (m_j V)(R_j^T (p - c_j - t_j) + c_j)

(``R_j = exp([w_j]×)``), zero-initialised heads: all bodies start at rest.

**Forward model** at the likelihood box ``L = min(D, T)`` (pixel ``a D / L``): the model volume
is brought to the particle's pose by trilinear sampling, ``P_i(r) = V(A_i'^T (r + δs_i))``, its
spectrum multiplied by the CTF and a B-factor envelope and returned to real space::

    p_i = F^-1[ sign(C_i) |C_i|^beta · exp(-bfactor π² |k|² / a²) · F[P_i] ]      (--ctfbeta)

with ``A_i' = A_i exp([ω_i]×)`` and ``δs_i`` the per-particle pose corrections of
``--estpose`` (otherwise 0). Where the missing wedge has no data ``C_i = 0``: the prediction is
0 there, as is the (noise of the) data; at ``k = 0`` both are 0 (the box mean is no signal).

**Loss** per particle, with ``z_i = mu_i + exp(logvar_i / 2) ε_i``, ``ε_i ~ N(0, I)``::

    ℓ_i = 1 / (2 σ²) Σ_r M_i(r) (ŝ_i p_i(r) - x_i(r))²                 (Gaussian likelihood)
          + β(t) · ½ Σ_k (mu_ik² + exp(logvar_ik) - logvar_ik - 1)       (KL to N(0, I))

where ``M_i(r) = M(A_i'^T (r + δs_i))`` is the mask at the particle's pose (the comparison is
inside the mask; ``ŝ_i`` the particle's contrast scale against the consensus view, the
encoder's, fixed by the data: fitted against the decoded map instead, it would trade off against
the decoded maps' amplitude, which ``select --min-occupancy`` reads to tell junk; left out, the
latent learns it late in training), the KL is optimised with "free bits" (per latent dimension
its batch mean counts as at least 0.5 nat, so a dimension the decoder does not use yet is not
driven to the prior: no posterior collapse while the decoder learns), ``σ²`` the noise variance
per voxel estimated once from the residuals against the consensus, ``β(t) = beta_control ·
b(t)`` with ``b`` 1 or, for ``--beta cos``, the cyclical annealing ``b = ½ (1 - cos(π min(1,
2τ)))`` over cycles of ``beta_cycle`` epochs (``τ`` the fraction of the cycle done: half a cycle
rising from 0, half at 1); a cycle starts only while more than ``beta_cycle`` epochs remain, so
the run ends at β = beta_control (a restart at β = 0 late in a run scrambles the latent space
the decoder has just organised). A batch ``B`` adds the structural disentanglement prior
(``--lamb`` λ)::

    λ · mean_{i<j in B} ( |mu_i - mu_j|² / m_z - |M (Δ_i - Δ_j)|² / m_V )²

with ``m_z``, ``m_V`` the means of those squared distances over the batch's pairs and the map
distances held constant (no gradient): latent distances are pulled towards being proportional
to the distances between the particles' decoded maps, so that a principal component or a
KMeans cluster of the latent space is a direction or a group of the structures. The batch
objective is ``Σ_i ℓ_i / (B N_M)`` (``N_M = Σ M``) plus the prior. The prior is a mean of
O(1) terms, while the data term, divided by ``N_M``, changes little between nearby latents, so
λ must be small (default 0.05) for the data to lead: a large λ makes the encoder follow the
prior (which any arrangement of the latents consistent with the decoder satisfies) rather than
the data; with λ 0 the latent stays isotropic (every dimension at the prior's scale) and PC1
mixes the structure with noise. The measurements behind these defaults are in
``bench/RESULTS.md`` (sections "Heterogeneity VAE").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from subtomo.fourier.grid import lowpass_mask

__all__ = ["Decoder", "Encoder", "HeteroVAE", "RigidBodies", "strided_sizes"]

SLOPE = 0.1
FREE_NATS = 0.5  # free bits per latent dimension (batch mean)
# 3D convolutions run in channels-last layout (weights and activations): the same numbers,
# and 1.3-2.5x faster on CPU (oneDNN) for the few-channel layers of these networks
LAYOUT = torch.channels_last_3d


def strided_sizes(box: int) -> list[int]:
    """Spatial sizes after each stride-2 convolution (kernel 3, padding 1) down to <= 4."""
    sizes = [box]
    while sizes[-1] > 4:
        sizes.append((sizes[-1] - 1) // 2 + 1)
    return sizes


class Encoder(nn.Module):
    """Subtomogram (B, 1, d, d, d) in the reference frame → (mu, logvar), each (B, latent).

    ``mu`` is the convolutional network's output plus a linear map of the input averaged to
    ``POOL³`` voxels; :meth:`init_linear` sets that map to the principal components of a
    sample of inputs (whitened), so that training starts from the best linear encoder.
    """

    LOGVAR0 = -4.0
    POOL = 6

    def __init__(self, box: int, latent: int, hidden: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv3d(1, 8, 3, 1, 1), nn.LeakyReLU(SLOPE)]
        channels = 8
        sizes = strided_sizes(box)
        for _ in sizes[1:]:
            out = min(2 * channels, 64)
            layers += [nn.Conv3d(channels, out, 3, 2, 1), nn.LeakyReLU(SLOPE)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * sizes[-1] ** 3, hidden),
                                  nn.LeakyReLU(SLOPE), nn.Linear(hidden, 2 * latent))
        with torch.no_grad():  # start nearly deterministic (σ = e^-2): the decoder first sees
            self.head[-1].bias[latent:] = self.LOGVAR0  # latents that carry the data
        self.pool = nn.AdaptiveAvgPool3d(self.POOL)
        self.linear = nn.Linear(self.POOL ** 3, latent)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.latent = latent
        self.features.to(memory_format=LAYOUT)

    def pooled(self, x: Tensor) -> Tensor:
        return self.pool(x).flatten(1)

    @torch.no_grad()
    def init_linear(self, pooled: Tensor, split: int | None = None) -> None:
        """Linear path := whitened principal components of ``pooled`` inputs (S, POOL³); the
        network's own ``mu`` output is scaled down so that the two start in that order. With
        ``split`` (the composition latent's size) the dimensions after it (the dynamics latent)
        start from the leading components too."""
        x = pooled.double()
        mean = x.mean(0)
        _, sv, vt = torch.linalg.svd(x - mean, full_matrices=False)
        scale = sv / max(len(x) - 1, 1) ** 0.5
        whitened = vt / scale.clamp_min(1e-12)[:, None]
        weight = torch.zeros(self.latent, x.shape[1], dtype=torch.float64)
        split = self.latent if split is None else split
        for start, stop in ((0, split), (split, self.latent)):
            k = min(stop - start, len(sv))
            weight[start:start + k] = whitened[:k]
        self.linear.weight.copy_(weight.float())
        self.linear.bias.copy_((-(weight @ mean)).float())
        self.head[-1].weight[: self.latent] *= 0.1
        self.head[-1].bias[: self.latent] *= 0.1

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.head(self.features(x.contiguous(memory_format=LAYOUT)))
        return out[:, : self.latent] + self.linear(self.pooled(x)), out[:, self.latent:]


class SubpixelConvTranspose3d(nn.ConvTranspose3d):
    """``ConvTranspose3d(cin, cout, 4, 2, 1)`` computed as a 3×3×3 convolution to ``8 cout``
    channels (one per output parity) and a voxel shuffle: the same parameters and numbers,
    about 3x faster on CPU for few output channels (oneDNN runs convolutions, not this
    transposed one). Output voxel ``2m + r`` reads input ``m - 1, m`` (r = 0: taps 3, 1) or
    ``m, m + 1`` (r = 1: taps 2, 0) along each axis."""

    TAPS = ((3, 1, 4), (4, 2, 0))  # per parity, the kernel tap at input offsets -1, 0, +1 (4: 0)

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        cin, cout = self.weight.shape[:2]
        taps = torch.tensor(self.TAPS, device=x.device)
        w = nn.functional.pad(self.weight, (0, 1, 0, 1, 0, 1))  # tap 4 reads 0
        w = w[:, :, taps][:, :, :, :, taps][..., taps]  # (cin, cout, 2, 3, 2, 3, 2, 3)
        w = w.permute(1, 2, 4, 6, 0, 3, 5, 7).reshape(8 * cout, cin, 3, 3, 3)
        y = nn.functional.conv3d(x, w.contiguous(memory_format=LAYOUT),
                                 self.bias.repeat_interleave(8), padding=1)
        b, _, m = y.shape[:3]
        y = y.view(b, cout, 2, 2, 2, m, m, m).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return y.reshape(b, cout, 2 * m, 2 * m, 2 * m)


class Decoder(nn.Module):
    """Composition latent (B, zdim) → map correction (B, T, T, T), T a multiple of 16."""

    CHANNELS = (64, 32, 16, 8)
    INIT_GAIN = 1.0

    def __init__(self, zdim: int, template_box: int) -> None:
        super().__init__()
        if template_box % 16:
            raise ValueError(f"template box must be a multiple of 16, not {template_box}")
        self.seed = template_box // 16
        c = self.CHANNELS
        self.fc = nn.Linear(zdim, c[0] * self.seed ** 3)
        self.up = nn.Sequential(
            nn.LeakyReLU(SLOPE),
            nn.ConvTranspose3d(c[0], c[1], 4, 2, 1), nn.LeakyReLU(SLOPE),
            nn.ConvTranspose3d(c[1], c[2], 4, 2, 1), nn.LeakyReLU(SLOPE),
            nn.Conv3d(c[2], c[2], 3, 1, 1), nn.LeakyReLU(SLOPE),
            nn.ConvTranspose3d(c[2], c[3], 4, 2, 1), nn.LeakyReLU(SLOPE),
            nn.Conv3d(c[3], c[3], 3, 1, 1), nn.LeakyReLU(SLOPE),
            SubpixelConvTranspose3d(c[3], 1))
        last = self.up[-1]
        with torch.no_grad():
            last.weight.mul_(self.INIT_GAIN)
            last.bias.zero_()
        self.up.to(memory_format=LAYOUT)

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(-1, self.CHANNELS[0], self.seed, self.seed, self.seed)
        return self.up(h.contiguous(memory_format=LAYOUT))[:, 0].contiguous()


class RigidBodies(nn.Module):
    """Dynamics latent (B, zaffinedim) → per body rotation vectors (B, J, 3) in radians and
    translations (B, J, 3) in Å, both 0 at initialisation. ``GAIN`` scales the heads' outputs
    before the tanh, so that an optimiser step moves a body by about half a degree."""

    GAIN = 20.0

    def __init__(self, zaffinedim: int, bodies: int, max_shift_A: float,
                 max_angle_rad: float = 0.5) -> None:
        super().__init__()
        self.head = nn.Linear(zaffinedim, 6 * bodies)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.bodies, self.max_shift_A, self.max_angle_rad = bodies, max_shift_A, max_angle_rad

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        out = torch.tanh(self.GAIN * self.head(u)).view(-1, self.bodies, 6)
        return out[..., :3] * self.max_angle_rad, out[..., 3:] * self.max_shift_A


class HeteroVAE(nn.Module):
    """Encoder, decoder, optional rigid bodies and the fixed maps they act on.

    Buffers (template grid ``T³``, z, y, x): ``consensus`` V_0, ``mask`` M, ``body_masks``
    (J, T³) and ``body_centres_A`` (J, 3) (x, y, z) Å from the box centre.
    """

    def __init__(self, *, enc_box: int, template_box: int, zdim: int, zaffinedim: int,
                 consensus: Tensor, mask: Tensor, body_masks: Tensor | None,
                 template_pixel_size_A: float) -> None:
        super().__init__()
        bodies = 0 if body_masks is None else len(body_masks)
        if bodies and zaffinedim < 1:
            raise ValueError("rigid bodies need a dynamics latent (zaffinedim >= 1)")
        self.zdim, self.zaffinedim = zdim, zaffinedim if bodies else 0
        self.encoder = Encoder(enc_box, self.zdim + self.zaffinedim)
        self.decoder = Decoder(zdim, template_box)
        self.bodies = (RigidBodies(self.zaffinedim, bodies, 0.1 * template_box *
                                   template_pixel_size_A) if bodies else None)
        self.register_buffer("consensus", consensus.float().clone())
        self.register_buffer("mask", mask.float().clone())
        inside = consensus[mask > 0.5]
        self.register_buffer("scale", inside.std() if inside.numel() > 1 else torch.tensor(1.0))
        # L: not saved in checkpoints (a function of the boxes, rebuilt on loading)
        self.register_buffer("band", lowpass_mask(template_box, enc_box / 2 - 1, 2.0),
                             persistent=False)
        if bodies:
            masks = body_masks.float().clone()
            self.register_buffer("body_masks", masks)
            self.register_buffer("body_centres_A", centres_of_mass_A(masks, template_pixel_size_A))
        self.template_box, self.template_pixel_size_A = template_box, template_pixel_size_A

    def correction(self, z: Tensor) -> Tensor:
        """``s · L[Δ(z)]``: (B, T, T, T), density units."""
        t = self.template_box
        delta = self.decoder(z[:, : self.zdim])
        delta = torch.fft.irfftn(torch.fft.rfftn(delta, dim=(-3, -2, -1)) * self.band,
                                 s=(t, t, t), dim=(-3, -2, -1))
        return self.scale * delta

    def maps(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Masked maps ``M (V_0 + s L[Δ(z)])`` (B, T³) and the corrections (B, T³)."""
        delta = self.correction(z)
        return self.mask * (self.consensus + delta), delta

    def motions(self, z: Tensor) -> tuple[Tensor, Tensor] | None:
        """Rigid-body rotation vectors (B, J, 3) rad and translations (B, J, 3) Å, or None."""
        if self.bodies is None:
            return None
        return self.bodies(z[:, self.zdim:])


def centres_of_mass_A(masks: Tensor, pixel_size_A: float) -> Tensor:
    """Centres of mass (J, 3) (x, y, z) in Å from the box centre of masks (J, T, T, T)."""
    box = masks.shape[-1]
    axis = (torch.arange(box, dtype=torch.float64, device=masks.device) - box // 2) * pixel_size_A
    w = masks.double().clamp_min(0)
    total = w.sum((1, 2, 3)).clamp_min(1e-12)
    x = (w.sum((1, 2)) * axis).sum(-1) / total
    y = (w.sum((1, 3)) * axis).sum(-1) / total
    z = (w.sum((2, 3)) * axis).sum(-1) / total
    return torch.stack([x, y, z], -1).float()


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row: (B,)."""
    return 0.5 * (mu * mu + logvar.exp() - logvar - 1).sum(-1)


def kl_penalty(mu: Tensor, logvar: Tensor, free_nats: float = FREE_NATS) -> Tensor:
    """The KL term that is optimised, summed over the batch: per latent dimension the batch
    mean ``m_k`` of the KL counts as ``max(m_k, free_nats)`` (free bits), so that a latent the
    decoder does not use yet is not driven to the prior (posterior collapse)."""
    per_dim = 0.5 * (mu * mu + logvar.exp() - logvar - 1)
    return torch.clamp(per_dim.mean(0), min=free_nats).sum() * mu.shape[0]


def disentanglement_prior(mu: Tensor, delta: Tensor, mask: Tensor) -> Tensor:
    """The structural disentanglement prior of the module docstring (a scalar; 0 for B < 3)."""
    if mu.shape[0] < 3:
        return mu.sum() * 0
    i, j = torch.triu_indices(mu.shape[0], mu.shape[0], 1, device=mu.device)
    dz = ((mu[i] - mu[j]) ** 2).sum(-1)
    with torch.no_grad():  # |a - b|² from the Gram matrix: no (pairs, T³) difference array
        flat = (delta * mask).flatten(1).double()
        gram = flat @ flat.T
        norms = gram.diagonal()
        dv = (norms[i] + norms[j] - 2 * gram[i, j]).clamp_min(0).to(mu.dtype)
    mz, mv = dz.mean().clamp_min(1e-12), dv.mean()
    if float(mv) <= 0:
        return mu.sum() * 0
    return ((dz / mz - dv / mv) ** 2).mean()


def beta_value(schedule: str, control: float, epoch: int, step: int, steps: int,
               cycle_epochs: int, epochs: int | None = None) -> float:
    """β at ``step`` of ``steps`` in ``epoch``: ``control`` × (1, or the cyclical cosine).

    With the run's length ``epochs`` a new cycle starts only while more than ``cycle_epochs``
    epochs remain; after that β stays at ``control`` (no restart near the end)."""
    if schedule != "cos":
        return control * float(schedule)
    cycle = max(cycle_epochs, 1)
    if epochs is not None and epoch >= cycle and epochs - (epoch - epoch % cycle) <= cycle:
        return control
    position = (epoch + step / max(steps, 1)) / max(cycle_epochs, 1)
    tau = position - int(position)
    return control * 0.5 * (1 - math.cos(math.pi * min(1.0, 2 * tau)))
