"""Writes Framed/: relion_tomo_align's particles (Align/motion) told with random subtomogram
frames and random origins, the same physical poses (PROVENANCE.md). Run from this folder."""

from pathlib import Path

from subtomo.io.star import read_particles, write_particles
from subtomo.io.tomograms import write_optimisation_set
from subtomo.simulate.particles import with_subtomogram_frames

_, framed = with_subtomogram_frames(read_particles("Align/motion/particles.star"), seed=7,
                                    origin_sigma_A=12.0)
Path("Framed").mkdir(exist_ok=True)
write_particles(framed, "Framed/particles.star")
write_optimisation_set("Framed/optimisation_set.star", particles="Framed/particles.star",
                       tomograms="Align/motion/tomograms.star",
                       trajectories="Align/motion/motion.star")
