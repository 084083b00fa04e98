#!/usr/bin/env bash
# The GPU check, run on a lent GPU machine from the repository root after bench/device/kit.sh
# packed .devkit/ and .gl/ here: WebGPU on a hardware adapter against wasm, in four parts,
# each bounded in time so that the whole ends inside one device call (8 minutes):
#   1. the adapter Deno's navigator.gpu finds (stops here if none: nothing else would run);
#   2. the backend parity tests of `deno task test` (WEBGPU_CPU_FORWARD off, small shapes);
#   3. `deno task bench` rows for wasm and WebGPU, and the PyTorch step on CUDA beside them;
#   4. full size: each packed run's checkpoint ranks every Beauty test user on wasm and on
#      WebGPU, and the metrics are compared with each other and with the run's metrics.json.
# Everything goes to $OUT (summary.txt and one log per part), which the device tool returns.
# DEVICE_CHECK_PARTS picks parts after the first (default "2 3 4"; e.g. "4" after a fix to
# evaluation). With arguments, it sets the machine up and runs them instead of the parts:
#   bash bench/device/check.sh deno run -A bench/profile_step.ts --model sasrec --backend webgpu
set -u
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
say() { echo "$*" | tee -a "$summary"; }
start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }
# Every part's time limit is cut to what is left of DEVICE_CHECK_SECONDS (default 480).
deadline=${DEVICE_CHECK_SECONDS:-480}
bound() { local left=$((deadline - $(elapsed))); echo $(($1 < left ? $1 : (left > 1 ? left : 1))); }

for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
mkdir -p /tmp/kit/bin ../shared/data
xz -dc .devkit/deno.xz >/tmp/kit/bin/deno && chmod +x /tmp/kit/bin/deno
tar -xJf .devkit/node_modules.tar.xz
for f in .devkit/data/*.xz; do xz -dc "$f" >"../shared/data/$(basename "$f" .xz)"; done
export PATH=/tmp/kit/bin:$PATH DENO_DIR=/tmp/kit/cache DENO_NO_UPDATE_CHECK=1 NO_COLOR=1
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
[ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl

if [ $# -gt 0 ]; then
  "$@"
  exit
fi

# 1. The adapter.
say "== $(date -u +%FT%TZ) deno $(deno --version | head -1 | cut -d' ' -f2), $(nproc) CPUs"
say "gpu: $(nvidia-smi -L 2>&1 | head -1)"
probe='const a = await navigator.gpu?.requestAdapter();
const i = a?.info ?? {}; // the fields of GPUAdapterInfo are getters: JSON.stringify skips them
console.log(a ? JSON.stringify({ vendor: i.vendor, architecture: i.architecture,
  device: i.device, description: i.description, fallback: i.isFallbackAdapter,
  maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize,
  maxBufferSize: a.limits.maxBufferSize }) : "no adapter");'
adapter=$(timeout 60 deno eval "$probe" 2>&1 | tail -1)
say "adapter: $adapter"
# DEVICE_CHECK_ANY_ADAPTER=1 goes on with a software adapter too (to try this script here).
case "$adapter" in
  *'"fallback":false'*) ;;
  *'"fallback":true'*) [ "${DEVICE_CHECK_ANY_ADAPTER:-}" = 1 ] || { say "software adapter: stopping"; exit 1; } ;;
  *) say "no hardware adapter: stopping (ldconfig: $(ldconfig -p | grep -c libvulkan) libvulkan)"
    exit 1 ;;
esac

parts=" ${DEVICE_CHECK_PARTS:-2 3 4} "
want() { [[ $parts == *" $1 "* ]]; }

# 2. The backend parity tests.
if want 2; then
  tests=(tests/backends_test.ts tests/kernels_test.ts tests/sigma_test.ts tests/diffurec_test.ts
    tests/diffurecsys_test.ts tests/model_file_test.ts tests/recommender_test.ts
    tests/dropout_test.ts tests/adam_fused_test.ts tests/fused_ops_test.ts tests/attention_test.ts
    tests/gru_fused_test.ts tests/webgpu_ops_test.ts
    tests/training_parity_test.ts)
  timeout "$(bound 150)" deno test -A --no-check --parallel "${tests[@]}" >"$OUT/parity-tests.log" 2>&1
  say "parity tests (rc $?, $(elapsed) s): $(grep -E '^(ok|FAILED) \|' "$OUT/parity-tests.log" | tail -1)"
  grep -E 'FAILED|^error' "$OUT/parity-tests.log" | head -20 | tee -a "$summary"
fi

# 3. The bench rows (a GPU is no "slow" backend here: as many steps and users as wasm).
if want 3; then
  timeout "$(bound 150)" deno task bench --backends wasm,webgpu --models sasrec,sigma --data beauty \
    --steps 8 --slow-steps 8 --users 2048 --slow-users 2048 --torch-device cuda \
    >"$OUT/bench.log" 2>&1
  say "bench sasrec,sigma (rc $?, $(elapsed) s):"
  sed -n '/^data  /,$p' "$OUT/bench.log" | tee -a "$summary"
  timeout "$(bound 120)" deno task bench --backends wasm,webgpu --models diffurec --data beauty \
    --steps 4 --slow-steps 4 --users 256 --slow-users 256 --batch-size 87 --torch false \
    >"$OUT/bench-diffurec.log" 2>&1
  say "bench diffurec (rc $?, $(elapsed) s):"
  sed -n '/^data  /,$p' "$OUT/bench-diffurec.log" | tee -a "$summary"
fi

# 4. Full size: the packed runs' test metrics on both backends.
tarballs=(.devkit/runs/*.tar)
want 4 || tarballs=()
for tarball in "${tarballs[@]}"; do
  [ -f "$tarball" ] || continue
  name=$(basename "$tarball" .tar)
  mkdir -p "/tmp/runs/$name" && tar -C "/tmp/runs/$name" -xf "$tarball"
  for backend in wasm webgpu; do
    t0=$(date +%s)
    timeout "$(bound 90)" deno task eval --checkpoint "/tmp/runs/$name/checkpoint" --backend "$backend" \
      >"$OUT/eval-$name-$backend.json" 2>"$OUT/eval-$name-$backend.err"
    say "eval $name on $backend: rc $?, $(($(date +%s) - t0)) s"
  done
  python3 - "$name" "$OUT" <<'PY' | tee -a "$summary"
import json, sys
name, out = sys.argv[1], sys.argv[2]
def metrics(path):
    text = open(path).read()
    return json.loads(text[text.index("{"):])["metrics"]
saved = json.load(open(f"/tmp/runs/{name}/metrics.json"))["test"]
try:
    wasm, gpu = (metrics(f"{out}/eval-{name}-{b}.json") for b in ("wasm", "webgpu"))
except (OSError, ValueError) as e:
    sys.exit(print(f"{name}: no comparison ({e})"))
keys = [k for k in wasm if isinstance(wasm[k], (int, float)) and k in gpu]
worst = max(keys, key=lambda k: abs(wasm[k] - gpu[k]))
print(f"{name}: largest |wasm - webgpu| {abs(wasm[worst] - gpu[worst]):.2e} ({worst}); "
      + ", ".join(f"{k} {wasm[k]:.4f}/{gpu[k]:.4f}/{saved.get(k, float('nan')):.4f}"
                  for k in ("recall@20", "ndcg@20") if k in keys)
      + " (wasm/webgpu/metrics.json)")
PY
done

say "== done in $(elapsed) s"
