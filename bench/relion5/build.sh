#!/usr/bin/env bash
# Build RELION 5's tomography programs from public source, CPU only, for the side-by-side benches.
#
#   RELION5_SRC=<RELION git directory or source tree>  RELION5_PREFIX=/opt/relion5  bash bench/relion5/build.sh
#
# RELION5_SRC: a git directory or clone of github.com/3dem/relion (the tag RELION5_TAG, default 5.0.1, is
#   exported from it), or an unpacked source tree of that release. This machine reaches package registries
#   only, so the script never downloads RELION itself.
# RELION5_PREFIX: where the binaries go ($RELION5_PREFIX/bin/relion_tomo_*). Benches and tests find them
#   through RELION5_BIN=$RELION5_PREFIX/bin, never through PATH (RELION 3.1 may be on PATH too).
# FFTW, TIFF, PNG, MPI and cmake come from the system packages; no GUI, no CUDA, no model weights.
# Only relion_lib, the tomography targets and relion_refine (RELION's reader of 3D pseudo-subtomograms)
# are built (about an hour on 2 cores). The build time is
# printed and written to $RELION5_PREFIX/BUILD_INFO. RELION is GPL: nothing of it enters the package.
set -euo pipefail
: "${RELION5_SRC:?set RELION5_SRC to a RELION git directory or source tree}"
: "${RELION5_PREFIX:?set RELION5_PREFIX to the install folder}"
TAG="${RELION5_TAG:-5.0.1}"
JOBS="${RELION5_JOBS:-$(nproc)}"
TARGETS=(align reconstruct_particle subtomo reconstruct_tomogram refine_ctf)
OTHERS=(refine)  # relion_refine

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in libfftw3-dev libtiff-dev libpng-dev libopenmpi-dev cmake g++ make; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
fi

start=$(date +%s)
work="$RELION5_PREFIX/src"
mkdir -p "$work" "$RELION5_PREFIX/bin"
if [ ! -f "$work/CMakeLists.txt" ]; then
  if git --git-dir="$RELION5_SRC" rev-parse --verify -q "$TAG^{commit}" >/dev/null 2>&1; then
    git --git-dir="$RELION5_SRC" archive "$TAG" | tar -x -C "$work"
  elif git -C "$RELION5_SRC" rev-parse --verify -q "$TAG^{commit}" >/dev/null 2>&1; then
    git -C "$RELION5_SRC" archive "$TAG" | tar -x -C "$work"
  else
    cp -a "$RELION5_SRC"/. "$work"/
  fi
fi
cmake -S "$work" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DCUDA=OFF -DALTCPU=OFF -DGUI=OFF \
  -DFETCH_WEIGHTS=OFF -DFORCE_OWN_FFTW=OFF -DFORCE_OWN_TBB=OFF -DCMAKE_INSTALL_PREFIX="$RELION5_PREFIX" >/dev/null
cmake --build "$work/build" -j "$JOBS" --target "${TARGETS[@]}" "${OTHERS[@]}"
for t in "${TARGETS[@]}"; do
  cp "$work/build/bin/relion_tomo_$t" "$RELION5_PREFIX/bin/"
done
for t in "${OTHERS[@]}"; do
  cp "$work/build/bin/relion_$t" "$RELION5_PREFIX/bin/"
done
end=$(date +%s)
{
  echo "tag $TAG"
  echo "commit $(git --git-dir="$RELION5_SRC" rev-parse "$TAG^{commit}" 2>/dev/null || echo unknown)"
  echo "build_seconds $((end - start)) on $(nproc) cores ($JOBS jobs)"
  echo "cmake -DCUDA=OFF -DGUI=OFF -DFETCH_WEIGHTS=OFF, system FFTW/TIFF/PNG/OpenMPI"
} > "$RELION5_PREFIX/BUILD_INFO"
cat "$RELION5_PREFIX/BUILD_INFO"
echo "RELION5_BIN=$RELION5_PREFIX/bin"
