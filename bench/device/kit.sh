#!/usr/bin/env bash
# Packs, here, what bench/device/check.sh needs on a lent GPU machine (the workplace's
# `device` tool), which reaches no registry and has no Deno: the Deno binary, the npm
# packages the library imports, the data sets, trained runs to re-evaluate, and the Vulkan
# loader that Deno's WebGPU (wgpu) opens. All of it goes to .devkit/ and .gl/, which
# .git/info/exclude keeps out of git; `carry` them in the call:
#
#   bash bench/device/kit.sh /work/runs/beauty-sasrec-div /work/runs/beauty-sigma-div
#   device run: carry [".devkit", ".gl"], command "bash bench/device/check.sh"
#
# Each argument is a run folder (`deno task train --out`) whose checkpoint check.sh
# evaluates on wasm and on the GPU. The tree that travels must stay under 64 MiB: Deno is
# ~30 MB compressed, a Beauty checkpoint 7-9 MB.
set -euo pipefail
cd "$(dirname "$0")/../.."
for path in /.devkit/ /.gl/; do
  grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >>.git/info/exclude
done
rm -rf .devkit && mkdir -p .devkit/data .devkit/runs .gl

deno_bin=$(readlink -f "$(command -v deno)")
xz -6 -T0 -c "$deno_bin" >.devkit/deno.xz

# The packages as this checkout's node_modules has them (`deno install` fills it), less the
# bundles of the umbrella packages nothing here imports, and source maps.
deno install >/dev/null
nm=node_modules/.deno
tar -cf - --exclude='*.map' \
  --exclude="$nm/@tensorflow+tfjs@4.22.0/node_modules/@tensorflow/tfjs/dist" \
  --exclude="$nm/@tensorflow+tfjs-layers@4.22.0/node_modules/@tensorflow/tfjs-layers/dist" \
  --exclude="$nm/@tensorflow+tfjs-converter@4.22.0/node_modules/@tensorflow/tfjs-converter/dist" \
  --exclude="$nm/@tensorflow+tfjs-backend-webgl@4.22.0/node_modules/@tensorflow/tfjs-backend-webgl/dist" \
  --exclude="$nm/@tensorflow+tfjs-data@4.22.0/node_modules/@tensorflow/tfjs-data/dist" \
  node_modules | xz -6 -T0 >.devkit/node_modules.tar.xz

for f in Beauty.txt Office_Products.txt Beauty_item2attributes.json; do
  if [ -f "../shared/data/$f" ]; then xz -c "../shared/data/$f" >".devkit/data/$f.xz"; fi
done

for run in "$@"; do
  [ -d "$run/checkpoint" ] || { echo "kit.sh: $run has no checkpoint/" >&2; exit 2; }
  tar -C "$run" -cf ".devkit/runs/$(basename "$run").tar" checkpoint metrics.json
done

# The Vulkan loader and GL libraries, as Debian packages for amd64 (the device README's recipe).
mkdir -p /tmp/amd64/partial
apt_arch=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
apt-get "${apt_arch[@]}" update >/dev/null
(cd .gl && apt-get "${apt_arch[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 \
  libglx0 libgles2 >/dev/null)

du -sh .devkit .gl
