#!/usr/bin/env bash
# One command for a CUDA machine: the gpu-marked tests, the search-step benchmark on CUDA and a
# 2-trial smoke campaign with GPU workers, within about 8 minutes; the last line printed is one
# JSON object. Without CUDA it runs only the cheap CPU parts (the tiny benchmark) and says loudly,
# on stderr and in the JSON's "skipped" list, what it did not run.
#
#   benchmarks/gpu_check.sh                 # from the repository root
#   PY=/path/to/python benchmarks/gpu_check.sh
#
# CUDA parts (each under its own timeout; the sum stays under 8 minutes):
#   gpu_tests       pytest -m gpu tests/gpu                                          (≤ 90 s)
#   supernet_step   HRNet-W32 + CNF×5, MPII 256×256, batch 4, sync step, P = 1/5/8: per-part
#                   eager fp32 (baseline) vs the `auto` execution, per-part vs batched parts,
#                   and under `auto` K = 4 (search.partial_channels) and gumbel sampling
#                   (paths fast+pc4, fast+gumbel: issue 16 point 4's figures), MAC/s against the
#                   fp32 and bf16 matmul rates measured in the same run               (≤ 240 s)
#   smoke_campaign  posenfs search experiments/smoke.yaml with one GPU worker per trial (0.5 GPU
#                   each, so both trials share the GPU; several NCCL ranks cannot share one GPU),
#                   inside `unshare -rn` (loopback only) where user namespaces are allowed (≤ 150 s)
set -u
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
POSENFS=${POSENFS:-$(dirname "$PY")/posenfs}
OUT=$(mktemp -d /tmp/posenfs-gpu-check.XXXXXX)
START=$(date +%s)
export RAY_USAGE_STATS_ENABLED=0 PYTHONPATH=${PYTHONPATH:-.}

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  CUDA=1
else
  CUDA=0
fi

# part NAME TIMEOUT COMMAND...: runs it, keeps its output, rc and seconds under $OUT/NAME.*
part() {
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s)
  echo "gpu_check: $name ..." >&2
  timeout --kill-after=15 "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
  echo $? >"$OUT/$name.rc"
  echo $(( $(date +%s) - t0 )) >"$OUT/$name.seconds"
  echo "gpu_check: $name rc=$(cat "$OUT/$name.rc") in $(cat "$OUT/$name.seconds") s" >&2
}

loopback() {  # prints a command line for sh: only loopback networking where user namespaces
  # allow it (like the Makefile), else the command as it is
  if unshare -rn true 2>/dev/null; then echo "unshare -rn sh -c 'ip link set lo up && $*'"
  else echo "$*"; fi
}

SKIPPED=()
if [ "$CUDA" = 1 ]; then
  part gpu_tests 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/gpu
  part supernet_step 240 "$PY" benchmarks/supernet_step.py --device cuda \
    --fabric hrnet-w32_cnf5_mpii-256x256 --backbone hrnet_w32 --dataset mpii --input 256x256 \
    --batch 4 --parts 1 5 8 --modes sync --precision auto --batched --partial-channels 4 \
    --sampling gumbel --variant-execution fast --warmup 2 --steps 5
  part smoke_campaign 150 sh -c "$(loopback "$POSENFS search experiments/smoke.yaml \
    --root $OUT/runs --set data.root=$OUT/data --set resources.gpus_per_worker=0.5 \
    --set resources.workers_per_trial=1")"
else
  SKIPPED=(
    "gpu_tests: no CUDA (pytest -m gpu would only skip)"
    "supernet_step on CUDA (paper config, P=1/5/8, batched, auto K=4 and gumbel, bf16 matmul rate): no CUDA"
    "smoke_campaign with GPU workers: no CUDA (the CPU smoke campaign is in make test)"
  )
  for s in "${SKIPPED[@]}"; do echo "gpu_check: NO CUDA, SKIPPED: $s" >&2; done
  # one case, one thread, one timed step: it must finish on a small machine shared with others
  part supernet_step 600 "$PY" benchmarks/supernet_step.py --fabric tiny --backbone tiny \
    --dataset coco --input 64x64 --batch 2 --parts 3 --modes sync --batched \
    --partial-channels 4 --sampling gumbel --variant-execution both --warmup 1 --steps 1 \
    --threads 1 --no-memory
fi

SKIPPED_JSON=$(printf '%s\n' "${SKIPPED[@]+"${SKIPPED[@]}"}")
"$PY" - "$OUT" "$CUDA" "$START" "$SKIPPED_JSON" <<'EOF'
import json, sys, time
from pathlib import Path

out, cuda, start, skipped = Path(sys.argv[1]), sys.argv[2] == "1", float(sys.argv[3]), sys.argv[4]
parts = {}
for rc_file in sorted(out.glob("*.rc")):
    name = rc_file.stem
    rc = int(rc_file.read_text())
    text = (out / f"{name}.out").read_text().strip().splitlines()
    entry = {"rc": rc, "seconds": int((out / f"{name}.seconds").read_text())}
    if name == "supernet_step" and text:
        try:
            entry["result"] = json.loads(text[-1])
        except json.JSONDecodeError:
            entry["tail"] = text[-5:]
    elif name == "gpu_tests":
        entry["summary"] = text[-1] if text else ""
        entry["ok"] = rc in (0, 5)  # 5: no gpu-marked test collected
    else:
        entry["tail"] = text[-3:]
    if rc not in (0,) and not entry.get("ok"):
        entry["stderr_tail"] = (out / f"{name}.err").read_text().strip().splitlines()[-10:]
    parts[name] = entry
ok = all(p["rc"] == 0 or p.get("ok") for p in parts.values())
print(json.dumps({
    "gpu_check": "ok" if ok else "failed",
    "cuda": cuda,
    "seconds": round(time.time() - start),
    "parts": parts,
    "skipped": [s for s in skipped.splitlines() if s],
    "outputs": str(out),
}))
sys.exit(0 if ok else 1)
EOF
