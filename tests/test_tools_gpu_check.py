"""tools/gpu_check.sh, the one GPU script of issue 6, driven on the CPU by a stand-in interpreter
that records its arguments (the GPU machine runs it for real): step order, the chosen tile
configs (all three tile-config variables) reaching the later steps, the baseline tree's cvkit
first on the path, the time budget, and a one-line error for an unknown step."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHOICE = "64,32,4,3;128,32,8,2"
COVARIANCE_CHOICE = "32,32,4,3"
GRADX_CHOICE = "128,32,32,4,3;64,32,32,4,3"
VARIABLES = ("CVKIT_ISQRT_COV_PRODUCT_CONFIGS", "CVKIT_ISQRT_COV_COVARIANCE_CONFIGS",
             "CVKIT_ISQRT_COV_GRADX_CONFIGS")
TILES = "\n".join(f"{name}={choice}" for name, choice in
                  zip(VARIABLES, (CHOICE, COVARIANCE_CHOICE, GRADX_CHOICE)))
ALL_CHOSEN = f"configs={CHOICE} covariance={COVARIANCE_CHOICE} gradx={GRADX_CHOICE}"
NONE_CHOSEN = "configs= covariance= gradx="

# Records each call with the three tile-config variables; plays the tile benchmark's last lines
# (STUB_TILES, by default TILES) so that the tuned step finds the choices.
STUB = f"""#!/usr/bin/env bash
echo "call: $* | pythonpath=$PYTHONPATH | direct=${{CVKIT_ISQRT_COV_DIRECT_LAUNCH:-}} |" \
    "configs=${{CVKIT_ISQRT_COV_PRODUCT_CONFIGS:-}}" \
    "covariance=${{CVKIT_ISQRT_COV_COVARIANCE_CONFIGS:-}}" \
    "gradx=${{CVKIT_ISQRT_COV_GRADX_CONFIGS:-}}" >> "$STUB_LOG"
echo "ran: $*"
case "$*" in *covpool-tiles*) printf '%s\\n' "${{STUB_TILES:-{TILES}}}";; esac
[ -n "${{STUB_FAIL:-}}" ] && [ "$*" = "$STUB_FAIL" ] && exit 1
exit 0
"""


def run_check(tmp_path, *steps, budget=570, **extra_env):
    stub = tmp_path / "python3"
    stub.write_text(STUB)
    stub.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PY=str(stub), BUDGET=str(budget),
               STUB_LOG=str(tmp_path / "calls.log"), **extra_env)
    for name in VARIABLES:
        env.pop(name, None)
    if "BASELINE_DIR" not in extra_env:
        env.pop("BASELINE_DIR", None)
    done = subprocess.run(["bash", "tools/gpu_check.sh", *steps], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    log = tmp_path / "calls.log"
    return done, out, log.read_text().splitlines() if log.exists() else []


def test_chosen_configs_reach_the_steps_after_tuned(tmp_path):
    done, out, calls = run_check(tmp_path, "graph", "tiles", "tuned", "pytest", "sweep")
    assert done.returncode == 0, done.stdout + done.stderr
    calls = [c for c in calls  # the environment probes aside (one spans two lines)
             if c.startswith("call: ") and "import torch" not in c and "pip list" not in c]
    # graph and tiles with the kernel file's configs; tuned's three runs and later steps with the
    # three chosen lists
    assert "--cuda-graph --batch 128" in calls[0] and calls[0].endswith(NONE_CHOSEN)
    assert "covpool-tiles" in calls[1] and calls[1].endswith(NONE_CHOSEN)
    assert "smoke.py target |" in calls[2]
    assert "--cuda-graph --batch 128 --dim 256 --no-tf32" in calls[3]
    assert "--batch 128 --dim 256 --no-tf32" in calls[4] and "--cuda-graph" not in calls[4]
    assert "-m pytest tests/test_kernels_isqrt_cov.py" in calls[5]
    assert all(call.endswith(ALL_CHOSEN) for call in calls[2:]), calls[2:]
    assert len(calls) == 7
    chosen_line = " ".join(f"{name}={choice}" for name, choice in
                           zip(VARIABLES, (CHOICE, COVARIANCE_CHOICE, GRADX_CHOICE)))
    assert (out / "pytest.log").read_text().splitlines()[0] == chosen_line
    assert (out / "sweep.log").read_text().splitlines()[0] == chosen_line
    assert "== tuned: " + chosen_line in (out / "tiles.log").read_text()
    assert f"chosen: {chosen_line} (for this and the later steps)" in done.stdout
    durations = (out / "run.txt").read_text().split("== step durations")[1].split()
    assert durations[::3] == ["graph", "tiles", "tuned", "pytest", "sweep"]


def test_tuned_without_a_choice_is_skipped_and_the_kernel_file_configs_stay(tmp_path):
    done, out, calls = run_check(tmp_path, "tuned", "pytest")
    assert done.returncode == 0
    assert "no chosen config list" in done.stdout
    assert (out / "pytest.log").read_text().splitlines()[0] == (
        "CVKIT_ISQRT_COV_PRODUCT_CONFIGS=(unset: kernel file) "
        "CVKIT_ISQRT_COV_COVARIANCE_CONFIGS=(unset: product list) "
        "CVKIT_ISQRT_COV_GRADX_CONFIGS=(unset: kernel file)")
    assert calls[-1].endswith(NONE_CHOSEN)


def test_tuned_sets_only_the_lists_the_sweep_chose(tmp_path):
    """A list the sweep left empty (no config of that kernel compiled and agreed) stays unset (the
    covariance kernel then follows the product variable, as without any override); the others are
    set."""
    tiles = "\n".join([f"{VARIABLES[0]}={CHOICE}", f"{VARIABLES[1]}=",
                       f"{VARIABLES[2]}={GRADX_CHOICE}"])
    done, out, calls = run_check(tmp_path, "tiles", "tuned", "sweep", STUB_TILES=tiles)
    assert done.returncode == 0, done.stdout + done.stderr
    assert calls[-1].endswith(f"configs={CHOICE} covariance= gradx={GRADX_CHOICE}")
    assert (out / "sweep.log").read_text().splitlines()[0] == (
        f"{VARIABLES[0]}={CHOICE} {VARIABLES[1]}=(unset: product list) "
        f"{VARIABLES[2]}={GRADX_CHOICE}")


def test_steps_past_the_budget_are_skipped_and_logged(tmp_path):
    done, out, calls = run_check(tmp_path, "bench_rest", "sweep", budget=15)
    assert done.returncode == 0
    log = (out / "run.txt").read_text()
    assert "bench_rest skipped:" in log and "sweep skipped:" in log
    assert not any("--batch 32 256" in c for c in calls)


def test_unknown_step_is_a_one_line_error(tmp_path):
    done, _, _ = run_check(tmp_path, "smoke", "benchmark")
    assert done.returncode == 2
    assert "unknown step: benchmark" in done.stdout


def test_baseline_benchmarks_the_older_cvkit_in_the_same_call(tmp_path):
    base = tmp_path / "baseline"
    (base / "cvkit").mkdir(parents=True)
    done, out, calls = run_check(tmp_path, "graph", "baseline", BASELINE_DIR=str(base))
    assert done.returncode == 0, done.stdout + done.stderr
    calls = [c for c in calls if "tools/benchmark.py covpool" in c]
    # the graph step, then the baseline's and this tree's pair, then this tree's without direct
    # launches
    assert len(calls) == 6
    assert str(base) not in calls[0]  # the graph step: this tree's cvkit
    for call, cuda_graph in zip(calls[1:], [True, False, True, False, False]):
        assert "--batch 128 --dim 256 --no-tf32" in call
        assert ("--cuda-graph" in call) == cuda_graph
    assert all(f"pythonpath={base}:." in c for c in calls[1:3])  # ahead of this tree
    assert all(f"pythonpath=.:." in c or "pythonpath=. |" in c for c in calls[3:])
    assert all("direct= |" in c for c in calls[:5]) and "direct=0 |" in calls[5]
    log = (out / "covpool_graph.log").read_text()
    assert f"== baseline step: cvkit from {base} --cuda-graph" in log
    assert "== baseline step: cvkit from . (wall-clock)" in log
    assert "== baseline step: cvkit from . (wall-clock) without direct launches" in log
    assert "baseline" in (out / "run.txt").read_text().split("== step durations")[1]


def test_baseline_without_a_cvkit_folder_is_skipped(tmp_path):
    done, out, calls = run_check(tmp_path, "baseline", BASELINE_DIR=str(tmp_path / "missing"))
    assert done.returncode == 0
    assert f"baseline: no cvkit/ in '{tmp_path / 'missing'}': skipped" in done.stdout
    assert not [c for c in calls if "tools/benchmark.py" in c]
    done, out, calls = run_check(tmp_path, "baseline")
    assert "baseline: no BASELINE_DIR: skipped" in done.stdout
    assert not [c for c in calls if "tools/benchmark.py" in c]


def test_baseline_takes_several_trees(tmp_path):
    trees = [tmp_path / "run9", tmp_path / "before_order"]
    for tree in trees:
        (tree / "cvkit").mkdir(parents=True)
    done, out, calls = run_check(tmp_path, "baseline", BASELINE_DIR=" ".join(map(str, trees)))
    assert done.returncode == 0, done.stdout + done.stderr
    calls = [c for c in calls if "tools/benchmark.py covpool" in c]
    assert len(calls) == 7  # a pair per tree and for this one, then this one without direct
    assert all(f"pythonpath={trees[0]}:." in c for c in calls[0:2])
    assert all(f"pythonpath={trees[1]}:." in c for c in calls[2:4])


def test_host_step_runs_the_launch_path_benchmark(tmp_path):
    done, out, calls = run_check(tmp_path, "host")
    assert done.returncode == 0, done.stdout + done.stderr
    bench = [c for c in calls if "tools/benchmark.py" in c]
    assert bench[0].startswith("call: tools/benchmark.py covpool-host |")
    assert bench[1].startswith("call: tools/benchmark.py covpool-host --device cuda --steps 20 |")
    assert len(bench) == 2
    log = (out / "covpool_bench.log").read_text()
    assert "host benchmark exit 0" in log and "host benchmark (CUDA) exit 0" in log


def test_host_step_reruns_without_direct_launches_when_the_cuda_run_fails(tmp_path):
    done, out, calls = run_check(
        tmp_path, "host",
        STUB_FAIL="tools/benchmark.py covpool-host --device cuda --steps 20")
    assert done.returncode == 0, done.stdout + done.stderr
    bench = [c for c in calls if "tools/benchmark.py" in c]
    assert bench[2].startswith(
        "call: tools/benchmark.py covpool-host --device cuda --steps 20 --no-direct |")
    log = (out / "covpool_bench.log").read_text()
    assert "host benchmark (CUDA) exit 1" in log
    assert "host benchmark (CUDA, without direct launches) exit 0" in log


def test_benchmark_steps_append_to_the_logs_other_steps_append_to(tmp_path):
    """bench128 and graph after host and baseline keep what those wrote in the shared logs (run 9
    lost the host step's profile to a bench128 that overwrote covpool_bench.log)."""
    base = tmp_path / "baseline"
    (base / "cvkit").mkdir(parents=True)
    done, out, _ = run_check(tmp_path, "host", "baseline", "bench128", "graph",
                             BASELINE_DIR=str(base))
    assert done.returncode == 0, done.stdout + done.stderr
    bench = (out / "covpool_bench.log").read_text()
    assert bench.index("ran: tools/benchmark.py covpool-host --device cuda") < bench.index(
        "ran: tools/benchmark.py covpool --device cuda --batch 128")
    graph = (out / "covpool_graph.log").read_text()
    assert "== baseline step: cvkit from . (wall-clock) without direct launches" in graph
    assert graph.index("== baseline step") < graph.index(
        "ran: tools/benchmark.py covpool --device cuda --cuda-graph --batch 128 --dim 256")
