#!/usr/bin/env bash
# Everything GPU-specific in one call (at most 10 minutes on one lent GPU), one table:
#   1. bubblewrap with CUDA: a sandboxed candidate allocates 2 GiB on the GPU; the device
#      nodes are bound inside, the peak is measured from outside by NVML. If this fails,
#      the later steps run unsandboxed (EVOLVE_BWRAP="") and the table says so.
#   2. template, large preset (GPU_SIZE = "large"), through the arena: MFU against the
#      device's own peak
#   3. arena overhead, cold then warm compile cache, cold and warm-started evaluator
#      (bench/arena_overhead.py)
#   4. template, small preset (the embedded corpus's), through the arena: trusted val_bpb
#   5. a short `evolve` (1 generation, 1 child) with a scripted LLM on the GPU
#   6. large-preset shapes (depth, width, batch) trained directly for a few seconds each:
#      tokens/s and MFU, to choose the preset from
# The most wanted figures come first, so a call cut short still brings them back.
#
#   bash bench/gpu_check.sh              # GPU 0
#   GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh   # the same steps on CPU (a dry run)
#   GPU_CHECK_BUDGET=60 bash bench/gpu_check.sh    # training seconds of steps 2 and 4 (default 30)
#   GPU_CHECK_EVOLVE_BUDGET=5 ...                  # the evolve step's budget_s (default 10)
#   GPU_CHECK_STEPS="data overhead" bash ...       # only these steps (names as in the table)
#   GPU_CHECK_OUT=dir bash bench/gpu_check.sh      # also copy the table and the step logs
#                                                  # there after every step
#
# Needs only this checkout and its Python environment (no network: the data is the
# embedded corpus). Every step has its own time limit; a failed step prints FAIL with
# its log's last lines and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEVICE="${GPU_CHECK_DEVICE:-0}"
BUDGET="${GPU_CHECK_BUDGET:-30}"
WORK="$(mktemp -d /tmp/gpu-check-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
export EVOLVE_CACHE="$WORK/cache" GPU_CHECK_WORK="$WORK" GPU_CHECK_DEVICE="$DEVICE"
export EVOLVE_DATA="$WORK/data"
TABLE="$WORK/table"
: > "$TABLE"
T0=$SECONDS

row() { printf '%-34s %-6s %s\n' "$1" "$2" "$3" >> "$TABLE"; }

# step NAME LIMIT_S COMMAND...: runs it, its last line (the step's figures) goes in the table
step() {
  local name=$1 limit=$2
  shift 2
  case " ${GPU_CHECK_STEPS:-$name} " in *" $name "*) ;; *) return 0 ;; esac
  local t=$SECONDS
  if timeout -k 10 "$limit" bash -c '"$@"' _ "$@" > "$WORK/$name.log" 2>&1; then
    row "$name" ok "$(tail -n 1 "$WORK/$name.log") [$((SECONDS - t)) s]"
  else
    row "$name" FAIL "exit $? after $((SECONDS - t)) s (log below)"
    { echo "--- $name: last lines"; tail -n 15 "$WORK/$name.log"; } >> "$WORK/failures"
  fi
  if [ -n "${GPU_CHECK_OUT:-}" ]; then
    mkdir -p "$GPU_CHECK_OUT"
    cp "$TABLE" "$GPU_CHECK_OUT/table.txt"
    { echo "===== $name"; cat "$WORK/$name.log"; } >> "$GPU_CHECK_OUT/logs.txt"
  fi
}

device_info() {
  python - <<'EOF'
import os, shutil, torch
dev = os.environ["GPU_CHECK_DEVICE"]
if dev == "cpu":
    print(f"cpu dry run; torch {torch.__version__}; bwrap {shutil.which('bwrap') or 'missing'}")
else:
    i = int(dev)
    p = torch.cuda.get_device_properties(i)
    print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, cc {p.major}.{p.minor}; torch "
          f"{torch.__version__} CUDA {torch.version.cuda}; bwrap {shutil.which('bwrap') or 'missing'}")
EOF
}

# template PRESET: the template as a run's root, through LocalArena on the slot
template() {
  GPU_CHECK_PRESET=$1 python - <<'EOF'
import os, sys
from pathlib import Path
from arena.devices import detect_slots
from arena.local import LocalArena
from arena.records import RunRequest
from arena.repo import ExperimentRepo

work, dev, preset = Path(os.environ["GPU_CHECK_WORK"]), os.environ["GPU_CHECK_DEVICE"], os.environ["GPU_CHECK_PRESET"]
train = Path("train_template.py").read_text().replace('GPU_SIZE = "small"', f'GPU_SIZE = "{preset}"')
repo = ExperimentRepo.create(work / f"run-{preset}", train, Path("prepare.py").read_text(), "# check\n")
with LocalArena(repo, os.environ["EVOLVE_DATA"], detect_slots("cpu:1" if dev == "cpu" else dev)) as arena:
    arena.submit(RunRequest("root", repo.root_commit, 0, float(os.environ["GPU_CHECK_BUDGET"])))
    [r] = arena.poll(None)
print(open(r.log_path).read()[-1500:])
if r.status.value != "evaluated":
    sys.exit(f"{r.status.value}: {r.message}")
c = r.claimed
mfu = f"{c['mfu_percent']:.1f}%" if "mfu_percent" in c else "n/a"
print(f"val_bpb {r.val_bpb:.4f}, MFU {mfu}, {c.get('num_params_M', 0):.1f}M params, "
      f"{c.get('tokens_per_second', 0):.0f} tok/s, peak {r.peak_mem_mb or 0:.0f} MB, "
      f"train {r.training_seconds:.0f} s of wall {r.wall_seconds:.0f} s")
EOF
}

overhead() {
  local out="$GPU_CHECK_WORK/overhead.txt"
  python bench/arena_overhead.py --device "$GPU_CHECK_DEVICE" --reps 2 --budget 10 \
    --data "$EVOLVE_DATA" > "$out" || { cat "$out"; return 1; }
  cat "$out"
  echo "$(grep -o 'per candidate, cold.*' "$out" | head -1); $(grep -o 'per candidate, warm.*' "$out" | head -1); $(grep -o 'per candidate, warm, warm-started.*' "$out" | head -1)"
}

bwrap_cuda() {
  python - <<'EOF'
import os, sys
from pathlib import Path
from arena.devices import detect_slots
from arena.local import LocalArena
from arena.records import RunRequest
from arena.repo import ExperimentRepo
from arena.sandbox import Sandbox

work, dev = Path(os.environ["GPU_CHECK_WORK"]), os.environ["GPU_CHECK_DEVICE"]
if Sandbox(1024).bwrap is None:
    sys.exit("bubblewrap is not installed: candidates would run unconfined")
probe = """import os, time, torch
on = torch.cuda.is_available()
x = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda") if on else None
print("cuda inside the sandbox:", on, torch.cuda.device_count() if on else 0,
      "visible:", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
time.sleep(3)
"""
repo = ExperimentRepo.create(work / "run-bwrap", probe, Path("prepare.py").read_text(), "# check\n")
with LocalArena(repo, os.environ["EVOLVE_DATA"], detect_slots("cpu:1" if dev == "cpu" else dev),
                use_bwrap=True) as arena:
    arena.submit(RunRequest("probe", repo.root_commit, 0, 30.0))
    [r] = arena.poll(None)
log = open(r.log_path).read()
print(log[-800:])
line = next((ln for ln in log.splitlines() if ln.startswith("cuda inside")), "no probe output")
if dev != "cpu" and ("True 1" not in line or (r.peak_mem_mb or 0) < 2000):
    sys.exit(f"bwrap+CUDA failed: {line}; NVML peak {r.peak_mem_mb} MB")
print(f"{line}; peak memory from outside (NVML on a GPU) {r.peak_mem_mb or 0:.0f} MB")
EOF
}

evolve_scripted() {
  python - <<'EOF'
import json, os, subprocess, sys
from pathlib import Path
from agents.scripted_server import ScriptedLLMServer
from population.store import Store, store_path

work, dev = Path(os.environ["GPU_CHECK_WORK"]), os.environ["GPU_CHECK_DEVICE"]
knobs = json.dumps({"hypothesis": "shorter warm-down", "changes": [{"name": "WARMDOWN_FRAC", "value": 0.2}]})
edit = ("HYPOTHESIS: shorter warm-down\n\n<<<<<<< SEARCH\nWARMDOWN_FRAC = 0.4  # fraction of the budget at "
        "the end spent decaying it to zero\n=======\nWARMDOWN_FRAC = 0.25  # fraction of the budget at the "
        "end spent decaying it to zero\n>>>>>>> REPLACE\n")
with ScriptedLLMServer([lambda req: knobs if req.get("response_format") else edit] * 8) as llm:
    program = work / "program.md"
    program.write_text(f'+++\nbudget_s = {os.environ.get("GPU_CHECK_EVOLVE_BUDGET", "10")}\npopulation = 1\nmodel = "openai/scripted"\napi_base = "{llm.api_base}"\n'
                       "[seeds]\nroot = 2\ninitial = 1\nmax = 1\n[stop]\ngenerations = 1\n+++\n\nLower val_bpb.\n")
    proc = subprocess.run([sys.executable, "-m", "population.cli", "--program", str(program), "--run-dir",
                           str(work / "evolve"), "--devices", dev, "-q"],
                          env=dict(os.environ, OPENAI_API_KEY="not-needed"), capture_output=True, text=True)
print(proc.stdout[-1500:], proc.stderr[-1500:])
if proc.returncode:
    sys.exit(f"evolve exited {proc.returncode}")
store = Store.open(store_path(work / "evolve"), readonly=True)
cands = store.candidates()
store.close()
print(f"evolve: {len(cands) - 1} children, statuses {sorted(c.status.value for c in cands)}")
EOF
}

# large_shapes: the large preset's shape line at a few shapes, each `python train.py` run
# directly (no arena, no evaluation) for GPU_CHECK_SHAPE_BUDGET training seconds; the
# shapes ("depth, dim, heads, T, B", separated by "; ") from GPU_CHECK_SHAPES
large_shapes() {
  python - <<'EOF'
import os, re, shutil, subprocess, sys
from pathlib import Path

work, dev = Path(os.environ["GPU_CHECK_WORK"]), os.environ["GPU_CHECK_DEVICE"]
budget = float(os.environ.get("GPU_CHECK_SHAPE_BUDGET", "12"))
src = Path("train_template.py").read_text().replace('GPU_SIZE = "small"', 'GPU_SIZE = "large"')
line = re.search(r"DEPTH, MODEL_DIM, N_HEADS, SEQ_LEN, BATCH_SIZE = .+", src).group(0)
shapes = os.environ.get("GPU_CHECK_SHAPES", "12, 768, 6, 256, 256; 16, 1024, 8, 256, 256").split("; ")
env = dict(os.environ, EVOLVE_DEVICE="cpu" if dev == "cpu" else "cuda", EVOLVE_BUDGET_S=str(budget),
           CUDA_VISIBLE_DEVICES="" if dev == "cpu" else dev, TORCHINDUCTOR_CACHE_DIR=str(work / "shape-cache"))
best = None
for shape in shapes:
    run = work / ("shape-" + shape.replace(", ", "-"))
    run.mkdir()
    (run / "train.py").write_text(src.replace(line, f"DEPTH, MODEL_DIM, N_HEADS, SEQ_LEN, BATCH_SIZE = {shape}"))
    shutil.copy("prepare.py", run / "prepare.py")
    proc = subprocess.run([sys.executable, "train.py"], cwd=run, env=dict(env, EVOLVE_OUT=str(run / "out")),
                          capture_output=True, text=True, timeout=budget + 150)
    stats = dict(ln.split(": ", 1) for ln in proc.stdout.splitlines() if re.match(r"^\w+: [-\d.e+]+$", ln))
    if proc.returncode or "tokens_per_second" not in stats:
        print(f"[{shape}] failed (exit {proc.returncode}):", (proc.stdout + proc.stderr)[-1500:])
        continue
    mfu = float(stats.get("mfu_percent", "nan"))
    print(f"depth, dim, heads, T, B = {shape}: {float(stats['num_params_M']):.1f}M params, "
          f"{float(stats['tokens_per_second']):.0f} tok/s, MFU {mfu:.1f}%, "
          f"peak {float(stats['peak_vram_mb']):.0f} MB, {stats['num_steps']} steps", flush=True)
    if best is None or not mfu <= best[0]:
        best = (mfu, shape)
if best is None:
    sys.exit("no shape trained")
print(f"highest MFU {best[0]:.1f}% at depth, dim, heads, T, B = {best[1]}")
EOF
}

export -f device_info template overhead bwrap_cuda evolve_scripted large_shapes
step device 60 device_info
step data 120 python prepare.py
step bwrap-cuda 90 bwrap_cuda
if grep -q '^bwrap-cuda  *FAIL' "$TABLE"; then
  export EVOLVE_BWRAP=""  # measure the rest unsandboxed rather than not at all
  row sandbox note "bubblewrap failed with CUDA: the steps below ran unsandboxed"
fi
step template-large $((BUDGET + 150)) template large
step overhead 320 overhead
step template-small $((BUDGET + 150)) template small
step evolve 240 evolve_scripted
step large-shapes 240 large_shapes

echo
echo "gpu_check on device $DEVICE, $((SECONDS - T0)) s"
printf '%-34s %-6s %s\n' check result figures
cat "$TABLE"
[ -f "$WORK/failures" ] && cat "$WORK/failures"
! grep -q ' FAIL ' "$TABLE"
