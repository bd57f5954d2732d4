#!/bin/bash
# Rebuilds this folder: the simulated project, then RELION 5.0.1's outputs on it (PROVENANCE.md).
# Run from this folder: RELION5_BIN=/opt/relion5/bin PYTHONPATH=../../../src ./make.sh
set -euo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
R=${RELION5_BIN:?set RELION5_BIN to the folder of relion_tomo_*}
PY=${PYTHON:-python}
rm -rf tilt_series truth Reconstruct Align Subtomo Tomograms Framed ./*.star simulation.json
$PY -m subtomo simulate tiltseries --o . --n 20 --size 144 144 --thickness 48 --angpix 10 \
    --box 24 --pseudo-atoms 600 --tilt-step 6 --noise 10 --shift-error 1.5 --angle-error 0.4 \
    --position-error 1 --motion 3.0 --seed 25
run() { "$R/relion_tomo_$1" "${@:2}" > /tmp/relion5_tiny_$1.log 2>&1 ||
        { tail -20 /tmp/relion5_tiny_$1.log; exit 1; }; }
run reconstruct_particle --i optimisation_set.star --b 24 --j 1 --o Reconstruct/given/
run reconstruct_particle --i truth/optimisation_set.star --b 24 --j 1 --o Reconstruct/truth/
run align --i optimisation_set.star --ref1 Reconstruct/given/half1.mrc \
    --ref2 Reconstruct/given/half2.mrc --b 48 --r 6 --motion --j 1 --o Align/motion/
run align --i optimisation_set.star --ref1 Reconstruct/given/half1.mrc \
    --ref2 Reconstruct/given/half2.mrc --b 48 --r 6 --motion --deformation --def_w 3 --def_h 3 \
    --def_model spline --per_frame_deformation --j 1 --o Align/deformation/
run reconstruct_particle --i Align/motion/optimisation_set.star --b 24 --j 1 \
    --o Reconstruct/aligned/
run subtomo --i Align/motion/optimisation_set.star --b 24 --stack2d --float16 --j 1 \
    --o Subtomo/stack2d/
run subtomo --i Align/motion/optimisation_set.star --b 24 --crop 16 --float16 --j 1 \
    --o Subtomo/3d/
$PY framed.py  # Framed/: Align/motion's particles told with random subtomogram frames
run subtomo --i Framed/optimisation_set.star --b 24 --crop 16 --float16 --j 1 \
    --o Subtomo/3d_framed/
run reconstruct_tomogram --t truth/tomograms.star --bin 4 --w 144 --h 144 --d 48 --j 1 \
    --o Tomograms/bin4/
# keep what the tests read: STAR files, stacks, pseudo-subtomograms, merged maps
find Align Subtomo Reconstruct \( -name temp -o -name 'logfile.pdf*' -o -name note.txt \) \
    -prune -exec rm -rf {} +
find Reconstruct -name '*.mrc' ! -name merged.mrc -delete
