"""The STAR label registry: name, type, unit and meaning of every label subtomo interprets.

In the spirit of RELION's metadata labels (``src/metadata_label.h``). Labels not listed here
are carried through untouched as text or numbers, whatever the file held.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Label:
    """One STAR label: ``name`` without the leading underscore."""

    name: str
    kind: type  # float, int or str
    unit: str
    description: str


_TABLE: tuple[tuple[str, type, str, str], ...] = (
    # particles: identity and files
    ("rlnImageName", str, "", "subtomogram (or image) file, optionally index@stack"),
    ("rlnCtfImage", str, "", "3D CTF volume of the subtomogram"),
    ("rlnMicrographName", str, "", "tomogram or tilt-series the particle comes from"),
    ("rlnTomoName", str, "", "tomogram name (RELION 4/5 tomography)"),
    ("rlnTomoParticleName", str, "", "unique particle name (RELION 4/5 tomography)"),
    ("rlnOpticsGroup", int, "", "index of the optics group (1-based)"),
    ("rlnGroupNumber", int, "", "noise/scale group"),
    ("rlnRandomSubset", int, "", "gold-standard half set (1 or 2)"),
    ("rlnClassNumber", int, "", "class the particle is assigned to (1-based)"),
    # positions
    ("rlnCoordinateX", float, "px", "x position in the tomogram, in its pixels"),
    ("rlnCoordinateY", float, "px", "y position in the tomogram, in its pixels"),
    ("rlnCoordinateZ", float, "px", "z position in the tomogram, in its pixels"),
    ("rlnCenteredCoordinateXAngst", float, "Å", "x position relative to the tomogram centre"),
    ("rlnCenteredCoordinateYAngst", float, "Å", "y position relative to the tomogram centre"),
    ("rlnCenteredCoordinateZAngst", float, "Å", "z position relative to the tomogram centre"),
    ("rlnOriginX", float, "px", "x shift of the particle centre (RELION 3.0)"),
    ("rlnOriginY", float, "px", "y shift of the particle centre (RELION 3.0)"),
    ("rlnOriginZ", float, "px", "z shift of the particle centre (RELION 3.0)"),
    ("rlnOriginXAngst", float, "Å", "x shift of the particle centre (centre = coord - origin)"),
    ("rlnOriginYAngst", float, "Å", "y shift of the particle centre"),
    ("rlnOriginZAngst", float, "Å", "z shift of the particle centre"),
    # orientations
    ("rlnAngleRot", float, "deg", "first Euler angle (ZYZ, RELION)"),
    ("rlnAngleTilt", float, "deg", "second Euler angle (ZYZ, RELION)"),
    ("rlnAnglePsi", float, "deg", "third Euler angle (ZYZ, RELION)"),
    ("rlnAngleRotPrior", float, "deg", "prior on rot"),
    ("rlnAngleTiltPrior", float, "deg", "prior on tilt"),
    ("rlnAnglePsiPrior", float, "deg", "prior on psi"),
    ("rlnTomoSubtomogramRot", float, "deg", "rot of the subtomogram frame in the tomogram"),
    ("rlnTomoSubtomogramTilt", float, "deg", "tilt of the subtomogram frame in the tomogram"),
    ("rlnTomoSubtomogramPsi", float, "deg", "psi of the subtomogram frame in the tomogram"),
    # scores
    ("rlnMaxValueProbDistribution", float, "", "largest posterior probability of the particle"),
    ("rlnLogLikeliContribution", float, "", "log-likelihood contribution of the particle"),
    ("rlnNrOfSignificantSamples", int, "", "number of significant orientations"),
    ("rlnNormCorrection", float, "", "intensity normalisation correction"),
    # CTF and optics
    ("rlnDefocusU", float, "Å", "defocus along the major axis"),
    ("rlnDefocusV", float, "Å", "defocus along the minor axis"),
    ("rlnDefocusAngle", float, "deg", "astigmatism angle from the x axis"),
    ("rlnCtfBfactor", float, "Å²", "CTF B-factor"),
    ("rlnCtfScalefactor", float, "", "CTF scale factor"),
    ("rlnPhaseShift", float, "deg", "phase shift"),
    ("rlnCtfMaxResolution", float, "Å", "estimated maximum resolution of the CTF fit"),
    ("rlnVoltage", float, "kV", "acceleration voltage"),
    ("rlnSphericalAberration", float, "mm", "spherical aberration"),
    ("rlnAmplitudeContrast", float, "", "amplitude contrast fraction"),
    ("rlnMagnification", float, "", "magnification (RELION 3.0; pixel size = detector / mag)"),
    ("rlnDetectorPixelSize", float, "µm", "detector pixel size (RELION 3.0)"),
    ("rlnOpticsGroupName", str, "", "name of the optics group"),
    ("rlnImagePixelSize", float, "Å", "pixel size of the particle images"),
    ("rlnImageSize", int, "px", "box size of the particle images"),
    ("rlnImageDimensionality", int, "", "2 for images, 3 for subtomograms"),
    ("rlnMicrographPixelSize", float, "Å", "pixel size of the tomograms the coordinates refer to"),
    ("rlnMicrographOriginalPixelSize", float, "Å", "pixel size of the original movies"),
    ("rlnTomoTiltSeriesPixelSize", float, "Å", "pixel size of the tilt series (RELION 5)"),
    ("rlnTomoSubtomogramBinning", float, "", "binning of the subtomograms (RELION 5)"),
    ("rlnCtfDataAreCtfPremultiplied", int, "", "1 if the images are CTF-premultiplied"),
    ("rlnTomoSubTomosAre2DStacks", int, "", "1 if particles are 2D stacks (RELION 5)"),
    # tomograms
    ("rlnTomoSizeX", int, "px", "tomogram width, tilt-series pixels"),
    ("rlnTomoSizeY", int, "px", "tomogram height, tilt-series pixels"),
    ("rlnTomoSizeZ", int, "px", "tomogram thickness, tilt-series pixels"),
    ("rlnTomoHand", float, "", "defocus handedness (+1 or -1)"),
    # tilt series (RELION 4/5 tomogram sets, per-tilt tables, optimisation and trajectory sets)
    ("rlnTomoTiltSeriesStarFile", str, "", "per-tilt STAR file of a tilt series (RELION 5)"),
    ("rlnTomoTiltSeriesName", str, "", "tilt-series image stack"),
    ("rlnTomoFrameCount", int, "", "number of tilts in a tilt series"),
    ("rlnTomoDefocusSlope", float, "", "rate of change of defocus over depth"),
    ("rlnTomoTomogramBinning", float, "", "binning of a reconstructed tomogram"),
    ("rlnTomoReconstructedTomogram", str, "", "reconstructed tomogram"),
    ("rlnTomoImportFractionalDose", float, "e/Å²", "exposure per tilt"),
    ("rlnTomoXTilt", float, "deg", "rotation of the tomogram about x (RELION 5 projection)"),
    ("rlnTomoYTilt", float, "deg", "rotation of the tomogram about y (the tilt angle)"),
    ("rlnTomoZRot", float, "deg", "rotation of the tomogram about z (tilt-axis angle)"),
    ("rlnTomoXShiftAngst", float, "Å", "x shift of the projected tomogram in the tilt image"),
    ("rlnTomoYShiftAngst", float, "Å", "y shift of the projected tomogram in the tilt image"),
    ("rlnTomoNominalStageTiltAngle", float, "deg", "nominal stage tilt angle"),
    ("rlnTomoNominalTiltAxisAngle", float, "deg", "nominal tilt-axis angle"),
    ("rlnTomoNominalDefocus", float, "µm", "nominal defocus"),
    ("rlnMicrographPreExposure", float, "e/Å²", "exposure received before the tilt image"),
    ("rlnTomoParticlesFile", str, "", "particle set of an optimisation set"),
    ("rlnTomoTomogramsFile", str, "", "tomogram set of an optimisation set"),
    ("rlnTomoTrajectoriesFile", str, "", "trajectory (motion) set of an optimisation set"),
    ("rlnTomoManifoldsFile", str, "", "manifold set of an optimisation set"),
    ("rlnTomoReferenceMap1File", str, "", "first half-map reference"),
    ("rlnTomoReferenceMap2File", str, "", "second half-map reference"),
    ("rlnTomoReferenceMaskFile", str, "", "reference mask"),
    ("rlnTomoReferenceFscFile", str, "", "FSC (postprocess.star) of the references"),
    ("rlnParticleNumber", int, "", "number of particles (trajectory set)"),
    # other names and files (text, even when made of digits)
    ("rlnMicrographMovieName", str, "", "movie of a tilt image"),
    ("rlnMicrographNameEven", str, "", "tilt image from the even frames"),
    ("rlnMicrographNameOdd", str, "", "tilt image from the odd frames"),
    ("rlnMicrographMetadata", str, "", "motion-correction metadata of a tilt image"),
    ("rlnCtfPowerSpectrum", str, "", "power spectrum of a tilt image"),
    ("rlnTomoImportCtfFindFile", str, "", "CTFFIND output of a tilt series"),
    ("rlnTomoImportCtfPlotterFile", str, "", "ctfplotter output of a tilt series"),
    ("rlnTomoImportImodDir", str, "", "IMOD folder of a tilt series"),
    ("rlnTomoImportOrderList", str, "", "exposure-order list of a tilt series"),
    ("rlnTomoEtomoDirective", str, "", "etomo directive file"),
    ("rlnTomoReconstructedTomogramHalf1", str, "", "tomogram from the odd tilts' frames"),
    ("rlnTomoReconstructedTomogramHalf2", str, "", "tomogram from the even tilts' frames"),
    ("rlnTomoReconstructedTomogramDenoised", str, "", "denoised tomogram"),
    ("rlnTomoFiducialsStarFile", str, "", "fiducials of a tilt series"),
    ("rlnTomoDeformationType", str, "", "deformation model of a tilt series"),
    ("rlnTomoDeformationCoefficients", str, "", "deformation coefficients of a tilt ([...])"),
    ("rlnTomoVisibleFrames", str, "", "per-tilt visibility of a particle ([1,1,0,...])"),
    ("rlnTomoProjX", str, "", "first row of the projection matrix ([a,b,c,d], RELION 4)"),
    ("rlnTomoProjY", str, "", "second row of the projection matrix (RELION 4)"),
    ("rlnTomoProjZ", str, "", "third row of the projection matrix (RELION 4)"),
    ("rlnTomoProjW", str, "", "fourth row of the projection matrix (RELION 4)"),
    ("rlnReferenceImage", str, "", "reference map of a class"),
    ("rlnMaskName", str, "", "mask file"),
    ("rlnUnfilteredMapHalf1", str, "", "first unfiltered half map"),
    ("rlnUnfilteredMapHalf2", str, "", "second unfiltered half map"),
    ("rlnSymmetryGroup", str, "", "point group (C1, D2, ...)"),
)

LABELS: dict[str, Label] = {row[0]: Label(*row) for row in _TABLE}

NUMERIC_KINDS = (float, int)
# names and files: read as text, never as numbers (a tilt series ``00123`` keeps its zeros)
TEXT_LABELS: tuple[str, ...] = tuple(name for name, label in LABELS.items() if label.kind is str)


def label_kind(name: str) -> type | None:
    """The Python type of a registered label, or None for labels we carry through."""
    label = LABELS.get(name)
    return None if label is None else label.kind
