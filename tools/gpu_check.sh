#!/usr/bin/env bash
# One prepared GPU check for the iSQRT-COV Triton kernels (issue 6), run from the repository root on
# a CUDA machine with its own python3 (torch + triton + pytest), cvkit from the source tree:
#   bash tools/gpu_check.sh [STEP ...]      (default: all of them, in this order)
# Steps, most important first (a step that runs out of time loses only its own report):
#   smoke      compiled forward+backward vs float64, ieee and tf32x3 (stops the run on failure);
#   bench128   python tools/benchmark.py covpool --device cuda --batch 128: the issue's target
#              shape, Triton vs cvkit's PyTorch path vs the straightforward implementation, fp32
#              and TF32, d in {128,256}; autotuning choices logged;
#   graph      the same at B=128, d=256 with --cuda-graph (GPU time without launch overhead);
#   host       python tools/benchmark.py covpool-host: the launch path's host time on this
#              machine's CPU, Triton's launcher down to stand-in compiled kernels; then with
#              --device cuda at B=128, d=256:
#              host time until a step returns against its wall-clock, each kernel's time in
#              Triton's JIT launcher, a host-side torch.profiler table (CUDA runtime and driver
#              calls) and the synchronising calls PyTorch reports; if that run fails, again
#              with every candidate through Triton's JIT functions (--no-direct); appended to
#              covpool_bench.log;
#   baseline   the graph and wall-clock benchmarks at B=128, d=256 (fp32 rows) of an older cvkit
#              and then of this tree, for an A/B in the same call (on the same warm GPU):
#              BASELINE_DIR names a folder holding its cvkit/ package (or several, separated by
#              spaces, each benchmarked in turn), e.g. made here with
#              `mkdir -p .gpu_baseline && git archive REV cvkit | tar -x -C .gpu_baseline` (a
#              folder git ignores: name it in the device tool's `carry`, or it does not travel);
#              then this tree's wall-clock once more with CVKIT_ISQRT_COV_DIRECT_LAUNCH=0 (every
#              launch through Triton's JIT functions);
#              appended to covpool_graph.log; skipped without BASELINE_DIR;
#   tiles      python tools/benchmark.py covpool-tiles --device cuda: the product kernel per launch
#              kind, then the covariance and input-gradient kernels (14x14 maps), each under a
#              grid of tile configs beside the autotuner's choice; it ends with three chosen
#              config lists (at most 2 configs each, as the product list in the kernel file, so
#              the compile time stays the same or drops), one per variable (VARS below);
#   tuned      with those lists as CVKIT_ISQRT_COV_PRODUCT_CONFIGS,
#              CVKIT_ISQRT_COV_COVARIANCE_CONFIGS and CVKIT_ISQRT_COV_GRADX_CONFIGS (each one the
#              sweep chose; an empty one stays unset): a tf32x3 smoke case
#              at B=128, d=256 (compiles the kernels), then the graph and wall-clock benchmarks
#              there without the TF32 rows (appended to tiles.log): what the chosen lists would
#              give if they replaced the configs in the kernel file; the steps after it use the
#              lists too (their logs say so);
#   pytest     the CUDA tests (-k test_cuda_: `-k cuda` also picked interpreter tests whose
#              parameter ids name torch.backends.cuda, run 10);
#   bench_rest the benchmark at B in {32, 256};
#   sweep      precision sweep at B=128, d=256: ieee / tf32x3 kernels beside the PyTorch path in
#              fp32 and TF32, error vs float64 and time (triton.testing.do_bench), and GPU time
#              per kernel (torch profiler).
# Logs go to $OUT (default ./gpu_out; at most 8 files, what the device tool returns; run.txt holds
# the environment and each step's duration); a short summary is printed last. Each step has a
# time limit, cut to what is left of $BUDGET (default 570 s, inside the device tool's 600 s per
# command); a step with under 20 s left is skipped and logged as such. On a fresh H100 smoke,
# bench128, graph, tiles, tuned, pytest, bench_rest and sweep took 69, 59, 20, 30, 50, 130, 68 and
# 49 s (2026-11-27, run 7 in BENCHMARKS.md: 475 s of the 570). Run 9, on a fresh H100 (a third
# input-gradient config): smoke over 80 s (cut; its first case took 46 s), pytest over 130 s (cut
# at the last test; 49 s on the warm machine, kernels compiled): the limits are 150 and 200 s now.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
MD=$(mktemp -d)  # the Markdown tables cut from the logs (the device tool returns 8 files)
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# the tile-config variables (cvkit/kernels/tile_configs.py): the sweep's choices, set by tuned
VARS=(CVKIT_ISQRT_COV_PRODUCT_CONFIGS CVKIT_ISQRT_COV_COVARIANCE_CONFIGS
  CVKIT_ISQRT_COV_GRADX_CONFIGS)
unset TRITON_INTERPRET "${VARS[@]}"
PY=${PY:-python3}
BUDGET=${BUDGET:-570}
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] ||
  STEPS=(smoke bench128 graph host baseline tiles tuned pytest bench_rest sweep)

configs_line() {  # which tile configs the kernels autotune over, for a log's first line
  local p=CVKIT_ISQRT_COV_PRODUCT_CONFIGS c=CVKIT_ISQRT_COV_COVARIANCE_CONFIGS
  local g=CVKIT_ISQRT_COV_GRADX_CONFIGS
  echo "$p=${!p:-(unset: kernel file)} $c=${!c:-(unset: product list)}" \
    "$g=${!g:-(unset: kernel file)}"
}

limit() {  # a step's time limit $1, cut to what is left of the budget
  local left=$((BUDGET - SECONDS))
  echo $(($1 < left ? $1 : (left > 1 ? left : 1)))
}

# The smoke test, a script taking "all" (two shapes, ieee and tf32x3) or "target" (tf32x3 at the
# benchmark's B=128, d=256: the same kernel variants, compiled once for both); exits non-zero if
# an error is over 1e-4.
cat > "$MD/smoke.py" <<'EOF'
import sys, time, torch
sys.path.insert(0, "tests")
from test_kernels_isqrt_cov import reference, rel_err
from cvkit.kernels import isqrt_cov_triton
cases = [("ieee", (3, 208, 14, 14), 5, True), ("tf32x3", (2, 196, 256), 3, False)]
if sys.argv[1] == "target":
    cases = [("tf32x3", (128, 256, 14, 14), 5, True)]
ok = True
for precision, shape, iters, vectorize in cases:
    torch.manual_seed(0)
    t0 = time.time()
    x = torch.randn(*shape, device="cuda", requires_grad=True)
    out = isqrt_cov_triton(x, iters, vectorize, precision=precision)
    x64 = x.detach().double().requires_grad_()
    ref = reference(x64, iters, vectorize)
    g = torch.randn_like(ref)
    (gx,) = torch.autograd.grad(out, x, g.float())
    (gr,) = torch.autograd.grad(ref, x64, g)
    eo, eg = rel_err(out, ref), rel_err(gx, gr)
    ok &= eo < 1e-4 and eg < 1e-4
    print(f"smoke {precision} x{tuple(shape)} iters={iters} vectorize={vectorize}: rel err out "
          f"{eo:.2e} grad {eg:.2e} ({time.time() - t0:.1f} s incl. compile+autotune)")
sys.exit(0 if ok else 1)
EOF

step_smoke() {
  timeout $(limit 150) $PY "$MD/smoke.py" all 2>&1 | tee "$OUT/smoke.log"
  if [ "${PIPESTATUS[0]}" != 0 ]; then echo "SMOKE FAILED: stopping"; exit 1; fi
}

# bench128 and graph append to the logs that the host and baseline steps append to too (in any
# step order: run 9 lost the host step's profile to a bench128 that ran after it and overwrote).
step_bench128() {
  TRITON_PRINT_AUTOTUNING=1 timeout $(limit 80) $PY tools/benchmark.py covpool --device cuda \
    --batch 128 \
    > "$MD/bench128.log" 2>&1
  echo "benchmark exit $?"
  cat "$MD/bench128.log" >> "$OUT/covpool_bench.log"
  sed -n '/^Command:/,$p' "$MD/bench128.log" > "$MD/covpool_bench.md"
}

step_graph() {
  timeout $(limit 40) $PY tools/benchmark.py covpool --device cuda --cuda-graph --batch 128 \
    --dim 256 \
    > "$MD/graph.log" 2>&1
  echo "benchmark (CUDA graphs) exit $?"
  cat "$MD/graph.log" >> "$OUT/covpool_graph.log"
  sed -n '/^Command:/,$p' "$MD/graph.log" > "$MD/covpool_graph.md"
}

step_host() {
  {
    echo; timeout $(limit 40) $PY tools/benchmark.py covpool-host
    echo "host benchmark exit $?"
    echo; timeout $(limit 90) $PY tools/benchmark.py covpool-host --device cuda --steps 20
    local rc=$?
    echo "host benchmark (CUDA) exit $rc"
    if [ $rc -ne 0 ]; then  # direct launches may be what failed
      echo; timeout $(limit 90) $PY tools/benchmark.py covpool-host --device cuda --steps 20 \
        --no-direct
      echo "host benchmark (CUDA, without direct launches) exit $?"
    fi
  } >> "$OUT/covpool_bench.log" 2>&1
  sed -n '/^Host time of one Triton/,/^Machine:/p' "$OUT/covpool_bench.log" > "$MD/covpool_host.md"
}

step_baseline() {
  local tree flag trees=()
  for tree in ${BASELINE_DIR:-}; do  # one folder, or several separated by spaces
    if [ ! -d "$tree/cvkit" ]; then echo "baseline: no cvkit/ in '$tree': skipped"; return; fi
    trees+=("$tree")
  done
  if [ ${#trees[@]} -eq 0 ]; then echo "baseline: no BASELINE_DIR: skipped"; return; fi
  for tree in "${trees[@]}" .; do
    for flag in --cuda-graph ""; do  # GPU time, then wall-clock
      echo; echo "== baseline step: cvkit from $tree ${flag:-(wall-clock)} ($(configs_line))"
      # tools/ first on sys.path, then PYTHONPATH in order: the baseline's cvkit wins over ./cvkit
      PYTHONPATH=$tree:$PYTHONPATH timeout $(limit 40) $PY tools/benchmark.py covpool \
        --device cuda --batch 128 --dim 256 --no-tf32 $flag
      echo "exit $?"
    done
  done >> "$OUT/covpool_graph.log" 2>&1
  {  # and this tree's wall-clock without direct launches (the launch path of run 8)
    echo; echo "== baseline step: cvkit from . (wall-clock) without direct launches" \
      "($(configs_line))"
    CVKIT_ISQRT_COV_DIRECT_LAUNCH=0 timeout $(limit 40) $PY tools/benchmark.py covpool \
      --device cuda --batch 128 --dim 256 --no-tf32
    echo "exit $?"
  } >> "$OUT/covpool_graph.log" 2>&1
  sed -n '/^== baseline step/,$p' "$OUT/covpool_graph.log" | grep "^==\|^| 128" \
    > "$MD/covpool_graph_baseline.md"
}

step_tiles() {
  timeout $(limit 130) $PY tools/benchmark.py covpool-tiles --device cuda > "$OUT/tiles.log" 2>&1
  echo "tiles exit $?"
}

step_tuned() {
  local name choice found=0
  # each list the sweep chose; an empty one stays unset: the kernel file's list, or for the
  # covariance kernel the product variable's (the chosen product list, when that one is set)
  for name in "${VARS[@]}"; do
    choice=$(sed -n "s/^$name=//p" "$OUT/tiles.log" 2>/dev/null | tail -n 1)
    if [ -n "$choice" ]; then export "$name=$choice"; found=1; fi
  done
  if [ $found = 0 ]; then echo "no chosen config list in $OUT/tiles.log: skipped"; return; fi
  echo "chosen: $(configs_line) (for this and the later steps)"
  {
    echo; echo "== tuned: $(configs_line)"
    timeout $(limit 90) $PY "$MD/smoke.py" target
    echo "tuned smoke exit $?"
    TRITON_PRINT_AUTOTUNING=1 timeout $(limit 30) $PY tools/benchmark.py covpool --device cuda \
      --cuda-graph --batch 128 --dim 256 --no-tf32
    echo "tuned benchmark (CUDA graphs) exit $?"
    timeout $(limit 30) $PY tools/benchmark.py covpool --device cuda --batch 128 --dim 256 \
      --no-tf32
    echo "tuned benchmark exit $?"
  } >> "$OUT/tiles.log" 2>&1
}

step_pytest() {
  configs_line > "$OUT/pytest.log"
  timeout $(limit 200) $PY -m pytest tests/test_kernels_isqrt_cov.py -q -k test_cuda_ \
    -p no:cacheprovider >> "$OUT/pytest.log" 2>&1
  echo "pytest exit $?"; tail -n 15 "$OUT/pytest.log"
}

step_bench_rest() {
  timeout $(limit 80) $PY tools/benchmark.py covpool --device cuda --batch 32 256 \
    > "$OUT/covpool_bench_rest.log" 2>&1
  echo "benchmark exit $?"
  sed -n '/^Command:/,$p' "$OUT/covpool_bench_rest.log" > "$MD/covpool_bench_rest.md"
}

step_sweep() {
  configs_line > "$OUT/sweep.log"
  timeout $(limit 60) $PY - <<'EOF' >> "$OUT/sweep.log" 2>&1
import sys, torch
from triton.testing import do_bench
sys.path.insert(0, "tests")
from test_kernels_isqrt_cov import reference, rel_err
from cvkit.kernels import isqrt_cov_triton
from cvkit.layers.covpool import isqrt_cov

B, D, ITERS = 128, 256, 5
torch.manual_seed(0)
x = torch.randn(B, D, 14, 14, device="cuda")
w = torch.randn(D * (D + 1) // 2, device="cuda")
x64 = x.double().requires_grad_()
ref = reference(x64, ITERS)
(ref_grad,) = torch.autograd.grad((ref * w.double()).sum(), x64)
ref = ref.detach()

def candidate(fn, matmul_precision):
    def run(need_grad=True):
        torch.set_float32_matmul_precision(matmul_precision)
        xx = x.clone().requires_grad_(need_grad)
        out = fn(xx)
        if need_grad:
            (out * w).sum().backward()
        return out, xx.grad
    return run

cands = {
    "triton ieee": candidate(lambda t: isqrt_cov_triton(t, ITERS, precision="ieee"), "highest"),
    "triton tf32x3": candidate(lambda t: isqrt_cov_triton(t, ITERS, precision="tf32x3"), "highest"),
    "torch path fp32": candidate(lambda t: isqrt_cov(t, ITERS, backend="torch"), "highest"),
    "torch path tf32": candidate(lambda t: isqrt_cov(t, ITERS, backend="torch"), "high"),
}
rows = []
for name, run in cands.items():
    out, grad = run()
    eo, eg = rel_err(out, ref), rel_err(grad, ref_grad)
    fb = do_bench(lambda: run(), warmup=25, rep=200, return_mode="median")
    fw = do_bench(lambda: run(False), warmup=25, rep=150, return_mode="median")
    rows.append((name, eo, eg, fw, fb))
    print(name, eo, eg, fw, fb, flush=True)
torch.set_float32_matmul_precision("highest")
base = {r[0]: r[4] for r in rows}
print()
print(f"| candidate | rel err out | rel err grad | fwd ms | fwd+bwd ms | speed-up vs torch path "
      f"fp32 | vs torch path tf32 |")
print("|---|---|---|---|---|---|---|")
for name, eo, eg, fw, fb in rows:
    print(f"| {name} | {eo:.1e} | {eg:.1e} | {fw:.2f} | {fb:.2f} | "
          f"{base['torch path fp32'] / fb:.2f}x | {base['torch path tf32'] / fb:.2f}x |")

# Where the time goes: GPU time per kernel name over 5 forward+backward passes.
from torch.profiler import ProfilerActivity, profile
for name in ("triton tf32x3",):
    cands[name]()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            cands[name]()
        torch.cuda.synchronize()
    print(f"\n{name}: GPU time per kernel over 5 passes")
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=12,
                                    max_name_column_width=40))
EOF
  echo "sweep exit $?"
}

{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv
  timeout 30 $PY -c "import torch, triton; print('torch', torch.__version__, 'triton',
    triton.__version__)"
  timeout 30 $PY -m pip list 2>/dev/null | grep -i -E "^(pytest|timm|torch|triton) "
  echo "steps: ${STEPS[*]}"
} > "$OUT/run.txt" 2>&1
cat "$OUT/run.txt"
echo "== step durations" >> "$OUT/run.txt"
for name in "${STEPS[@]}"; do
  if ! declare -F "step_$name" > /dev/null; then echo "unknown step: $name"; exit 2; fi
done
for name in "${STEPS[@]}"; do
  echo "== $name"
  if [ $((BUDGET - SECONDS)) -lt 20 ]; then
    echo "$name skipped: $((BUDGET - SECONDS)) s left of $BUDGET s" | tee -a "$OUT/run.txt"
    continue
  fi
  t0=$SECONDS
  "step_$name"
  echo "$name $((SECONDS - t0)) s" >> "$OUT/run.txt"
done

echo "== summary"
sed -n '/== step durations/,$p' "$OUT/run.txt"
grep -h "best config" "$OUT/covpool_bench.log" 2>/dev/null | sort | uniq -c | head -n 40
grep -h "smoke" "$OUT/smoke.log" "$OUT/tiles.log" 2>/dev/null
tail -n 3 "$OUT/pytest.log" 2>/dev/null
cat "$MD"/*.md 2>/dev/null
sed -n '/modelled product time/,$p' "$OUT/tiles.log" 2>/dev/null
sed -n '/^| candidate/,/^$/p' "$OUT/sweep.log" 2>/dev/null
exit 0  # a failed step says so in its log and the summary; the run itself went through
