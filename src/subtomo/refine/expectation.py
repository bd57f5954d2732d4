"""The E step shared by auto-refine, classification and the initial model.

Particles of each half set are searched against K class maps (:class:`subtomo.align.search.
Searcher`); the class posterior is ``p_k ∝ π_k exp(L_k)`` with ``L_k`` the log-likelihood
summed over pose hypotheses; every particle is inserted into its half set's back-projector of
each class at its significant poses, weighted by class and pose posterior (RELION's
marginalisation); the noise power is measured against its best class's best projection.
Particles are scored inside the particle mask (zeros or noise outside, :func:`masked`) but
inserted unmasked, as RELION's ``Fimg_nomask``: a mask would cut the signal the CTF spreads
beyond the particle (tens of Å at a few µm defocus) and break the CTF model of the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from subtomo import memory
from subtomo.align.score import Frequencies, noise_power
from subtomo.align.search import Searcher, SearchResult, SearchSettings
from subtomo.fourier.grid import (
    centred_irfft,
    centred_rfft,
    rfft_shape,
    shell_index,
    soft_sphere,
)
from subtomo.fourier.projector import Backprojector, Projector
from subtomo.fourier.shift import shift_spectra_
from subtomo.geometry.symmetry import symmetry_operators
from subtomo.io.particles import ParticleSet
from subtomo.parallel.distributed import Context
from subtomo.refine.images import background_weights, iterate_batches
from subtomo.refine.reconstruct import insert_symmetric


def masked(spectra: torch.Tensor, mask: torch.Tensor | None, box: int,
           noise_sigma2: torch.Tensor | None = None, seeds: np.ndarray | None = None
           ) -> torch.Tensor:
    """Spectra of the centred particles multiplied by the particle mask; outside it zeros
    (RELION's ``--zero_mask``) or, given ``noise_sigma2`` (power per Fourier coefficient and
    shell, ``(D // 2 + 1,)``), noise of that spectrum (RELION's default): ``m x + (1 - m) n``.

    The noise of particle i is drawn from its own seed ``seeds[i]`` (RELION seeds it with the
    particle number), so it does not depend on batches or ranks."""
    if mask is None:
        return spectra
    volumes = centred_irfft(spectra, box) * mask
    if noise_sigma2 is not None:
        volumes = volumes + (1.0 - mask) * solvent_noise(noise_sigma2, box, seeds, mask.device,
                                                         volumes.dtype)
    return centred_rfft(volumes)


NOISE_CHUNK = 4  # particles whose noise is drawn and transformed together


def solvent_noise(noise_sigma2: torch.Tensor, box: int, seeds: np.ndarray,
                  device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Real-space noise volumes ``(len(seeds), D, D, D)`` whose Fourier coefficients are
    complex Gaussian with ``E|n(k)|² = noise_sigma2(round(|k|))`` (``rfftn`` scale; beyond
    the last shell: the last value)."""
    shells = shell_index(box).clamp(max=len(noise_sigma2) - 1)
    sigma = (torch.as_tensor(noise_sigma2, dtype=torch.float64).clamp(min=0)[shells] / 2).sqrt()
    # the planes k_x = 0 and Nyquist hold each coefficient and its conjugate mate; irfftn keeps
    # their Hermitian part, which halves the power of two independent draws: draw them at twice it
    sigma[..., 0] *= math.sqrt(2.0)
    if box % 2 == 0:
        sigma[..., -1] *= math.sqrt(2.0)
    sigma = sigma.to(device=device, dtype=torch.float32)
    out = torch.empty((len(seeds), box, box, box), dtype=dtype, device=device)
    for start in range(0, len(seeds), NOISE_CHUNK):  # a few volumes of work memory at a time
        chunk = seeds[start:start + NOISE_CHUNK]
        parts = torch.empty((len(chunk), 2, *sigma.shape), dtype=torch.float32)
        for i, seed in enumerate(chunk):  # one generator per particle: batch-independent noise
            torch.randn(parts.shape[1:], generator=torch.Generator().manual_seed(int(seed)),
                        out=parts[i])
        parts = parts.to(device) * sigma
        out[start:start + len(chunk)] = torch.fft.irfftn(
            torch.complex(parts[:, 0], parts[:, 1]), s=(box,) * 3).to(dtype)
    return out


INSERT_MARGIN_SHELLS = 10  # RELION's --incr_size: shells inserted beyond the resolution


def insertion_radius_px(resolution_A: float, box: int, pixel_size_A: float) -> float:
    """The frequencies an E step inserts into the maps (Fourier pixels): RELION's
    ``current_size / 2``, the resolution shell plus :data:`INSERT_MARGIN_SHELLS`, at most
    Nyquist. Beyond it the half maps hold nothing, so the resolution can grow by that many
    shells per iteration, and the insertion costs a fraction of the whole spectrum while the
    resolution is far from Nyquist."""
    return min(box / 2, box * pixel_size_A / resolution_A + INSERT_MARGIN_SHELLS)


def insert_weighted(bp: Backprojector, spectra: torch.Tensor, ctf: torch.Tensor | None,
                    result: SearchResult, ops: torch.Tensor,
                    max_radius_px: float | None = None) -> None:
    """Insert every particle at its significant hypotheses with their posterior weights p
    (RELION's marginalisation): data += p C X, weight += p C², as √p-scaled X and C (up to
    ``max_radius_px``)."""
    for m in range(result.top_weights.shape[1]):
        weight = result.top_weights[:, m]
        keep = torch.nonzero(weight > 0).flatten()
        if keep.numel() == 0:
            break
        root = weight[keep].sqrt().view(-1, 1, 1, 1)
        shifted = shift_spectra_(spectra[keep], result.top_shifts_px[keep, m]).mul_(root)
        c = root.expand(-1, *spectra.shape[1:]) if ctf is None else ctf[keep] * root
        insert_symmetric(bp, shifted, result.top_matrices[keep, m], c, ops, max_radius_px)
        del shifted, c


def _search_parents(searchers: list[Searcher], parents: list[int], fixed: torch.Tensor,
                    spectra: torch.Tensor, ctf: torch.Tensor | None,
                    inv_sigma2: torch.Tensor, prior: torch.Tensor) -> list[SearchResult]:
    """Results per class (all rows filled) when particle i is searched only against the map
    of its class's parent: the other rows of each class's result are copies of row results
    that the one-hot posterior gives no weight."""
    by_reference = {}
    for ref in sorted(set(parents)):
        rows = torch.nonzero(torch.as_tensor(parents, device=fixed.device)[fixed] == ref)[:, 0]
        if rows.numel():
            by_reference[ref] = (rows, searchers[ref].search(
                spectra[rows], None if ctf is None else ctf[rows], inv_sigma2, prior[rows]))
    template = next(iter(by_reference.values()))[1]
    merged = SearchResult(*(torch.empty((len(fixed), *getattr(template, f).shape[1:]),
                                        dtype=getattr(template, f).dtype, device=fixed.device)
                            for f in SearchResult.__dataclass_fields__))
    for rows, result in by_reference.values():
        for name in SearchResult.__dataclass_fields__:
            getattr(merged, name)[rows] = getattr(result, name)
    return [merged] * len(parents)


def _stack_best(results: list[SearchResult], best: torch.Tensor) -> SearchResult:
    """Per particle, the search result of its best class."""
    picked = {}
    for name in ("matrices", "shifts_px", "score", "log_evidence", "max_probability",
                 "projection", "top_matrices", "top_shifts_px", "top_weights"):
        stacked = torch.stack([getattr(r, name) for r in results])  # (K, B, ...)
        picked[name] = stacked[best, torch.arange(best.numel(), device=best.device)]
    return SearchResult(**picked)


def own_share(spectra: torch.Tensor, ctf: torch.Tensor | None, freqs: Frequencies,
              shifts_px: torch.Tensor, projections: torch.Tensor, inv_sigma2: torch.Tensor,
              denominator: torch.Tensor, inserted: torch.Tensor | None = None) -> torch.Tensor:
    """What a particle's own share of a map (entered with weight 1) adds to its score at its
    hypothesis (``shifts_px`` ``(B, 3)``, ``projections`` ``(B, n)`` on ``freqs``): ``(B,)``.

    Leaving the particle out changes the map by ``-C (X - C P) / D`` at its coefficients
    (``D``: the reconstruction's denominator ``W + 1/τ²`` per shell), then by the corner
    flattening every reconstruction ends with (:func:`subtomo.fourier.projector.
    flatten_corners`), which keeps only the part inside the sphere of diameter ``D``; to first
    order the score drops by ``Σ_r a(r) m(r) b(r)`` with ``a``, ``b`` the real-space forms of
    ``w C (X - C P)`` and ``C (X - C P) / D`` and ``m`` the sphere (without it, the sum over
    coefficients of ``w C² |X - C P|² / D``). ``inserted``: the spectra that entered the map
    when they differ from the scored ``spectra`` (unmasked particles scored masked)."""
    b = spectra.shape[0]
    box = freqs.box
    device = spectra.device
    flat = freqs.flat.to(device)
    phases = freqs.phases(shifts_px.to(device))
    c = (torch.ones(b, len(freqs), device=device) if ctf is None
         else ctf.reshape(b, -1).index_select(1, flat.to(ctf.device)).to(device))

    def residual(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(b, -1).index_select(1, flat) * phases
        return (c * (x - c * projections.to(x.dtype))).to(torch.complex128)

    shell = freqs.shell.to(device)
    inv_d = (1.0 / denominator.to(device=device, dtype=torch.float64))[shell]
    size = (b, int(np.prod(rfft_shape(box))))
    halves = torch.zeros((2, *size), dtype=torch.complex128, device=device)
    halves[0][:, flat] = residual(spectra) * inv_sigma2.to(device=device,
                                                          dtype=torch.float64)[shell]
    halves[1][:, flat] = residual(spectra if inserted is None else inserted) * inv_d
    a, bb = centred_irfft(halves.view(2, b, *rfft_shape(box)), box).unbind(0)
    sphere = soft_sphere(box, box, 3.0, device, torch.float64)
    return (a * sphere * bb).sum((-3, -2, -1)) * float(box) ** 3


def _own_share(results: list[SearchResult], spectra: torch.Tensor, inserted: torch.Tensor,
               ctf: torch.Tensor | None, freqs: Frequencies, inv_sigma2: torch.Tensor,
               self_terms: tuple[np.ndarray, torch.Tensor], rows: np.ndarray) -> torch.Tensor:
    """What each particle's own share of the class maps adds to its log-likelihoods
    ``(B, K)``: :func:`own_share` of class k times the particle's previous posterior p_k
    (measured against true leave-one-out maps to within 15 %). It is about the number of
    scored coefficients over the class size, far more than real class differences while
    classes are small."""
    posterior, denominators = self_terms
    own = torch.stack([own_share(spectra, ctf, freqs, r.shifts_px, r.projection, inv_sigma2,
                                 denominators[k], inserted) for k, r in enumerate(results)], 1)
    return own * torch.as_tensor(posterior[rows], dtype=own.dtype, device=own.device)


@dataclass
class Particles:
    """The particles an E step reads: their set, half set (1 or 2) per particle, box (px), the
    particle mask they are scored inside (``None``: none) and the device of the work."""

    ps: ParticleSet
    halves: np.ndarray
    box: int
    mask: torch.Tensor | None
    device: torch.device | str


@dataclass
class Model:
    """What the particles are compared with: the class maps searched by half set 1 and by half
    set 2 (the same list in classification, each half's own map in auto-refine), the class
    distribution π_k and the noise power per shell."""

    references: tuple[list[torch.Tensor], list[torch.Tensor]]
    distribution: np.ndarray
    sigma2: np.ndarray


@dataclass
class Poses:
    """Current full rotations ``(N, 3, 3)`` and origins ``(N, 3)`` (px) of every particle."""

    matrices: np.ndarray
    origins_px: np.ndarray


@dataclass
class EStepSettings:
    """How an E step searches and inserts: the search, padding, 3D CTFs, particles per batch
    and memory budget (GiB; ``None``: automatic, :func:`plan_memory`), zeros (``zero_mask``) or
    noise outside the particle mask, the least class posterior a particle is inserted with,
    and the frequencies inserted (:func:`insertion_radius_px`; ``None``: all)."""

    search: SearchSettings
    pad: int = 2
    ctf: bool = False
    batch_size: int = 32
    max_memory_gib: float | None = None
    zero_mask: bool = True
    min_posterior: float = 1e-3
    insert_radius_px: float | None = None


@dataclass
class Seeding:
    """A fixed hard assignment (0-based class per particle) of a seeding iteration: a particle
    of class k is aligned against the map ``parents[k]``."""

    assign: np.ndarray
    parents: list[int]


# leave-one-out terms: previous posterior (N, K) and ⟨W + 1/τ²⟩ per class and shell (K, shells)
SelfTerms = tuple[np.ndarray, torch.Tensor]


@dataclass
class Plan:
    """How an E step shares its memory budget: particles per batch read from disk, the
    search's section cache per class and its working memory (bytes)."""

    batch_size: int
    cache_bytes: int | None
    work_bytes: int | None


def plan_memory(step: EStepSettings, *, box: int, k_classes: int, n_searched: int,
                device: torch.device | str) -> Plan:
    """Fit an E step into ``step.max_memory_gib`` (GiB; ``None``: an automatic share of the
    free memory, :func:`subtomo.memory.budget_bytes`).

    Fixed: the back-projectors of every class and half set, the ``n_searched`` class maps'
    projectors (one half set's at a time), one more being built, and the M step's
    reconstruction. Of the rest at most a third holds particle batches (``step.batch_size`` or
    fewer), half of the remainder the section caches of the searchers, and the other half the
    work of one search (:class:`subtomo.align.search.Searcher`)."""
    budget = memory.budget_bytes(step.max_memory_gib, device)
    pad = step.pad
    fixed = (2 * k_classes * memory.backprojector_bytes(box, pad)
             + (n_searched + 3) * memory.projector_bytes(box, pad))
    free = memory.free_budget(budget, device)
    memory.check_fits(fixed + memory.reconstruction_bytes(box, pad), free,
                      f"an iteration of {k_classes} class(es) at {box}³ (pad {pad})")
    rest = free - fixed
    per_particle = memory.particle_bytes(box, step.ctf)
    batch = memory.batch_that_fits(step.batch_size, per_particle, rest // 3)
    search = rest - batch * per_particle
    return Plan(batch, search // (2 * max(n_searched, 1)), search // 2)


@dataclass
class Expectation:
    """The sums of one E step: per class and half set the back-projectors, the posterior sum
    per class, the noise power sums, and per particle (at the rows searched; zero elsewhere,
    summed over ranks) the best class's pose, class (0-based) and statistics."""

    backprojectors: list[list[Backprojector]]  # [class][half]
    posterior_sums: torch.Tensor  # (K,)
    noise_sums: torch.Tensor
    noise_counts: torch.Tensor
    matrices: np.ndarray
    origins_px: np.ndarray
    classes: np.ndarray
    max_probability: np.ndarray
    log_likelihood: np.ndarray

    def sigma2(self, previous: np.ndarray) -> np.ndarray:
        """Noise power per shell, ``previous`` where nothing was measured."""
        measured = (self.noise_counts > 0).cpu().numpy()
        sigma2 = previous.copy()
        sigma2[measured] = (self.noise_sums / self.noise_counts.clamp(min=1)).cpu().numpy()[
            measured]
        return sigma2

    @classmethod
    def zeros(cls, k_classes: int, box: int, pad: int, poses: Poses,
              device: torch.device | str) -> Expectation:
        """Empty sums for ``k_classes`` classes and the particles of ``poses``."""
        n, sums = len(poses.matrices), torch.zeros(box // 2 + 1, dtype=torch.float64,
                                                   device=device)
        return cls([[Backprojector(box, pad=pad, device=device) for _ in (1, 2)]
                    for _ in range(k_classes)],
                   torch.zeros(k_classes, dtype=torch.float64, device=device), sums,
                   torch.zeros_like(sums), np.zeros_like(poses.matrices),
                   np.zeros_like(poses.origins_px), np.zeros(n), np.zeros(n), np.zeros(n))

    def all_reduced(self, ctx: Context) -> Expectation:
        """The sums over every rank."""
        for tensor in (self.posterior_sums, self.noise_sums, self.noise_counts):
            ctx.sum_(tensor)
        for pair in self.backprojectors:
            for bp in pair:
                ctx.sum_(bp.data)
                ctx.sum_(bp.weight)
        return Expectation(
            self.backprojectors, self.posterior_sums, self.noise_sums, self.noise_counts,
            ctx.sum_array(self.matrices).reshape(self.matrices.shape),
            ctx.sum_array(self.origins_px), ctx.sum_array(self.classes).astype(int),
            ctx.sum_array(self.max_probability), ctx.sum_array(self.log_likelihood))


def _posterior(searchers: list[Searcher], spectra: torch.Tensor, batch, index: torch.Tensor,
               prior_all: torch.Tensor, inv_sigma2: torch.Tensor, log_prior: torch.Tensor,
               seeding: Seeding | None, self_terms: SelfTerms | None, k_classes: int
               ) -> tuple[list[SearchResult], torch.Tensor, torch.Tensor]:
    """Search one batch against every class: results per class, class posterior ``(B, K)``
    and log-evidence ``(B,)`` (of the fixed class when seeding)."""
    if seeding is not None:
        fixed = torch.as_tensor(seeding.assign[batch.rows], device=index.device)
        posterior = torch.nn.functional.one_hot(fixed, k_classes).double()
        results = _search_parents(searchers, seeding.parents, fixed, spectra, batch.ctf,
                                  inv_sigma2, prior_all[index])
        evidence = torch.stack([r.log_evidence.double() for r in results], 1).gather(
            1, fixed[:, None])[:, 0]
        return results, posterior, evidence
    results = [s.search(spectra, batch.ctf, inv_sigma2, prior_all[index]) for s in searchers]
    joint = torch.stack([r.log_evidence.double() for r in results], 1) + log_prior
    if self_terms is not None:
        joint = joint - _own_share(results, spectra, batch.spectra, batch.ctf,
                                   searchers[0].fine, inv_sigma2, self_terms, batch.rows)
    return results, torch.softmax(joint, 1), torch.logsumexp(joint, 1)


def _accumulate(sums: Expectation, h: int, batch, spectra: torch.Tensor,
                results: list[SearchResult], posterior: torch.Tensor, evidence: torch.Tensor,
                fine: Frequencies, origins: torch.Tensor, ops: torch.Tensor,
                step: EStepSettings) -> None:
    """Insert one batch of half set ``h`` into every class it belongs to (posterior ≥
    ``step.min_posterior``) and record its best class's pose, noise power and statistics."""
    index = torch.as_tensor(batch.rows, device=posterior.device)
    best = posterior.argmax(1)
    for k, result in enumerate(results):
        take = posterior[:, k] >= step.min_posterior
        if bool(take.any()):
            part = result.take(take)
            part.top_weights = part.top_weights * posterior[take, k, None].to(
                part.top_weights.dtype)
            ctf = None if batch.ctf is None else batch.ctf[take]
            insert_weighted(sums.backprojectors[k][h - 1], batch.spectra[take], ctf, part, ops,
                            step.insert_radius_px)
    chosen = _stack_best(results, best)
    s, c = noise_power(spectra, batch.ctf, fine, chosen.shifts_px, chosen.projection,
                       len(sums.noise_sums))
    sums.noise_sums += s
    sums.noise_counts += c
    sums.posterior_sums += posterior.sum(0)
    sums.matrices[batch.rows] = chosen.matrices.double().cpu().numpy()
    sums.origins_px[batch.rows] = (origins[index] + chosen.shifts_px).double().cpu().numpy()
    sums.classes[batch.rows] = best.cpu().numpy()
    p_best = posterior.gather(1, best[:, None])[:, 0]
    sums.max_probability[batch.rows] = (p_best * chosen.max_probability.double()).cpu().numpy()
    sums.log_likelihood[batch.rows] = evidence.cpu().numpy()


def expectation(
    data: Particles, rows: np.ndarray, model: Model, poses: Poses, step: EStepSettings,
    ctx: Context, *, seeding: Seeding | None = None, self_terms: SelfTerms | None = None,
    plan: Plan | None = None, progress: bool = True, desc: str = "",
) -> Expectation:
    """Search particles ``rows`` (sharded over ranks) against every class map and insert them
    with their class and pose posteriors into their half set's back-projector of each class;
    sums are all-reduced. The E step of auto-refine (K = 1), classification and the initial
    model.

    ``seeding``: a fixed hard assignment (:class:`Seeding`). ``self_terms``: score each
    particle against its classes as if it had not been part of them (:func:`_own_share`);
    without it a random start of classes stays where it began. ``plan``: how memory is shared
    (default :func:`plan_memory` from ``step``); every plan gives the same poses."""
    box, device, references = data.box, data.device, model.references
    k_classes = len(seeding.parents) if seeding is not None else len(references[0])
    if plan is None:  # before anything is allocated: the plan counts the back-projectors
        plan = plan_memory(step, box=box, k_classes=k_classes, n_searched=len(references[0]),
                           device=device)
    inv_sigma2 = torch.as_tensor(1.0 / np.maximum(model.sigma2, 1e-30), dtype=torch.float32,
                                 device=device)
    log_prior = torch.as_tensor(np.log(np.maximum(model.distribution, 1e-30)),
                                dtype=torch.float64, device=device)
    ops = symmetry_operators(step.search.sym, dtype=torch.float32, device=device)
    sums = Expectation.zeros(k_classes, box, step.pad, poses, device)
    prior_all = torch.as_tensor(poses.matrices, dtype=torch.float32, device=device)
    origins_t = torch.as_tensor(poses.origins_px, dtype=torch.float32, device=device)
    rows = np.asarray(rows)
    # outside the particle mask: zeros (--zero_mask) or noise of the current spectrum; the
    # particles enter the maps unmasked (RELION's Fimg_nomask)
    fill = None if step.zero_mask else torch.as_tensor(model.sigma2)
    seed_base = 1_000_003 * int(step.search.seed)
    background = background_weights(box, data.mask, device)
    searchers = None
    for h in (1, 2):
        if searchers is None or references[1] is not references[0]:
            searchers = None  # free one half set's searchers before building the next
            searchers = [Searcher(Projector(r.to(device=device, dtype=torch.float32),
                                            pad=step.pad), step.search,
                                  cache_bytes=plan.cache_bytes, work_bytes=plan.work_bytes)
                         for r in references[h - 1]]
        mine = ctx.shard(rows[np.asarray(data.halves)[rows] == h])
        total = (len(mine) + plan.batch_size - 1) // plan.batch_size
        batches = iterate_batches(data.ps, mine, box=box, ctf=step.ctf,
                                  batch_size=plan.batch_size, device=device,
                                  shifts_px=origins_t, background=background)
        for batch in tqdm(batches, total=total, desc=f"{desc} half {h}", unit="batch",
                          disable=None if progress and ctx.main else True):
            index = torch.as_tensor(batch.rows, device=device)
            spectra = masked(batch.spectra, data.mask, box, fill, seeds=seed_base + batch.rows)
            results, posterior, evidence = _posterior(
                searchers, spectra, batch, index, prior_all, inv_sigma2, log_prior, seeding,
                self_terms, k_classes)
            _accumulate(sums, h, batch, spectra, results, posterior, evidence,
                        searchers[0].fine, origins_t, ops, step)
    return sums.all_reduced(ctx)
