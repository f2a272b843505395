"""The demo job and the benchmark harness, end to end through the stock nnU-Net commands."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from nnunet_ext.benchmark import (
    STOCK,
    merge_targets,
    refresh_targets_summary,
    run_benchmark,
    targets_summary,
)


def test_demo_on_reduced_budget(tmp_path):
    """`nnunet_ext demo` as README runs it, with the 2-epoch trainer: every stage runs and reports."""
    cli = Path(sys.executable).parent / "nnunet_ext"
    work = tmp_path / "demo"
    proc = subprocess.run([str(cli), "demo", "--work-dir", str(work), "--trainer", "nnUNetTrainer_debug",
                           "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # on a CPU the stock trainers plan with the cpu preset (nnU-Net's planner sized for a CPU, -p nnUNetPlans_cpu)
    for step in ("[1/5]", "[2/5] nnunet_ext plan -d 791 --preset cpu", "[3/5] nnUNetv2_train 791 2d 0 -tr "
                 "nnUNetTrainer_debug -p nnUNetPlans_cpu", "[4/5]", "[5/5]"):
        assert step in proc.stdout
    assert "Using trainer 'nnUNetTrainer_debug'" in proc.stdout  # found through nnUNet_extTrainer
    assert "Epoch time" in proc.stdout  # progress is shown while training

    summary = json.loads((work / "evaluation" / "summary.json").read_text())
    assert summary["n_cases"] == 6
    assert set(summary["per_class"]) == {"optic_disc", "vessel", "lesion"}
    dice = summary["foreground_mean"]["dice"]
    assert 0.0 <= dice <= 1.0
    assert f"Foreground mean Dice on 6 held-out phantom cases: {dice:.3f}" in proc.stdout
    report = (work / "report.md").read_text()
    assert "| optic_disc |" in report and "nnUNetTrainer_debug" in report and "nnUNetPlans_cpu" in report
    predictions = sorted(p.name for p in (work / "predictions").glob("*.png"))
    assert predictions == sorted(p.name for p in (work / "nnunet/nnUNet_raw/Dataset791_PhantomFundus/labelsTs")
                                 .glob("*.png"))
    for plot in summary["plots"]:
        with Image.open(work / "evaluation" / plot) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_benchmark_against_stock_on_the_same_batches(fundus_preprocessed, tmp_path):
    f = fundus_preprocessed
    report = run_benchmark(["nnUNetTrainer_debug"], str(f.dataset_id), "2d", "cpu", iterations=2, warmup=1,
                           predict_cases=1, out_dir=tmp_path, env=f.env, tag="t")
    names = [r["trainer"] for r in report["results"]]
    assert names == [STOCK, "nnUNetTrainer_debug"]
    stock, ours = report["results"]
    assert stock["ratio_iteration"] == 1.0
    for r in report["results"]:
        assert r["seconds_per_iteration"] > 0 and r["seconds_per_predicted_case"] > 0
        assert r["peak_rss_mb"] > r["rss_at_start_mb"] > 0
        assert len(r["iteration_times"]) == 2
    # the same plans: same network, patch and batch
    assert ours["parameters"] == stock["parameters"]
    assert ours["patch_size"] == stock["patch_size"] and ours["batch_size"] == stock["batch_size"]
    table = (tmp_path / "t.md").read_text()
    assert "| nnUNetTrainer_debug |" in table and "| nnUNetTrainer |" in table
    assert json.loads((tmp_path / "t.json").read_text())["results"][1]["trainer"] == "nnUNetTrainer_debug"


def test_demo_resolves_method_name_to_its_demo_variant_phantom_and_floor():
    from nnunet_ext.demo import resolve_demo

    assert resolve_demo("AVFusionTrainer") == ("AVFusionTrainer_demo", "av2d", 0.75)
    assert resolve_demo("nnUNetTrainer_demo") == ("nnUNetTrainer_demo", "fundus2d", 0.90)
    # a floor is only meaningful on the phantom and budget it was measured with
    assert resolve_demo("AVFusionTrainer", "fundus2d") == ("AVFusionTrainer_demo", "fundus2d", None)
    assert resolve_demo("nnUNetTrainer_debug", "ct3d") == ("nnUNetTrainer_debug", "ct3d", None)
    with pytest.raises(ValueError, match="NoSuchTrainer"):
        resolve_demo("NoSuchTrainer")


LOADER = """
import runpy, sys, traceback
from pathlib import Path
bench, failures = Path(sys.argv[1]), []
for script in sorted(bench.glob("*/*.py")):
    # each script as `python bench/<method>/<script>.py` loads it: its folder first on sys.path, and no module of
    # another bench folder cached (several hold a `trainers` package of their own)
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(bench)):
            del sys.modules[name]
    sys.path[:] = [str(script.parent)] + [p for p in sys.path if not p.startswith(str(bench))]
    try:
        runpy.run_path(str(script), run_name="bench_script_loaded_by_a_test")
    except BaseException:
        failures.append(f"{script.relative_to(bench.parent)}: {traceback.format_exc(limit=-2)}")
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def test_every_bench_script_loads_as_python_runs_it(tmp_path):
    """A bench script runs only on demand, so a name it imports can vanish unnoticed (bench_ftsegnet_ablation.py
    imported a helper of bench_av_drive.py for several sessions after it was removed). Each script's module level runs
    here as `python bench/...` would run it, from outside the repository root, without its main()."""
    repo = Path(__file__).resolve().parents[1]
    scripts = sorted((repo / "bench").glob("*/*.py"))
    assert len(scripts) >= 20, scripts
    proc = subprocess.run([sys.executable, "-c", LOADER, str(repo / "bench")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def test_merge_targets_replaces_only_this_runs_rows(tmp_path):
    """A bench script rerun on one data set or configuration must keep the other runs' targets."""
    path = tmp_path / "targets.json"
    merge_targets(path, [{"target": "a", "met": True}], "configuration", "2d", "2d")
    path.write_text(json.dumps(json.loads(path.read_text()) + [{"target": "old, unlabelled", "met": False}]))
    merge_targets(path, [{"target": "b", "met": False}], "configuration", "3d_fullres", "2d")
    assert [(r["target"], r.get("configuration")) for r in json.loads(path.read_text())] == [
        ("a", "2d"), ("old, unlabelled", "2d"), ("b", "3d_fullres")]
    # the 2d rerun replaces its labelled row and the unlabelled one (the 2d run's), keeps 3d_fullres'
    merge_targets(path, [{"target": "c", "met": True}], "configuration", "2d", "2d")
    assert [(r["target"], r["configuration"]) for r in json.loads(path.read_text())] == [
        ("b", "3d_fullres"), ("c", "2d")]


def test_targets_summary_is_the_committed_targets_files():
    """bench/results/TARGETS.md is what the targets.json files say: a bench rerun that rewrote one without the
    summary, or a summary edited by hand, fails here."""
    results = Path(__file__).resolve().parents[1] / "bench" / "results"
    methods = {f.parent.name for f in results.glob("*/targets.json")}
    assert {"av_fusion", "focusnet", "freetumor", "ftsegnet", "weak_cycle"} <= methods, methods
    assert (results / "TARGETS.md").read_text() == targets_summary(results), \
        "run python bench/harness/targets_summary.py"


def test_targets_summary_verdicts_and_refusal(tmp_path):
    (tmp_path / "m1").mkdir()
    (tmp_path / "m1" / "targets.json").write_text(json.dumps([
        {"target": "a | b", "measured": 0.123456789, "goal": "<= 0.2", "met": True, "dataset": "X"},
        {"target": "c", "measured": [1, 2], "goal": "> 3", "met": False},
        {"target": "d", "measured": None, "goal": "== 0", "met": None}]))
    text = targets_summary(tmp_path)
    assert "| m1 | 1 | 1 | 1 |" in text
    assert "| X | a \\| b | 0.123457 | <= 0.2 | met |" in text
    assert "| - | c | [1, 2] | > 3 | **missed** |" in text
    assert "| - | d | not measured | == 0 | not measured |" in text
    # a bench run with its own --out gets no summary; where one is kept it is rewritten
    refresh_targets_summary(tmp_path / "m1" / "targets.json")
    assert not (tmp_path / "TARGETS.md").exists()
    (tmp_path / "TARGETS.md").write_text("old")
    refresh_targets_summary(tmp_path / "m1" / "targets.json")
    assert (tmp_path / "TARGETS.md").read_text() == text
    # merge_targets (and every bench script's write) keeps the kept summary current
    merge_targets(tmp_path / "m1" / "targets.json", [{"target": "e", "measured": 1.5, "goal": "< 1", "met": False}],
                  "dataset", "Y", "X")
    assert "| Y | e | 1.5 | < 1 | **missed** |" in (tmp_path / "TARGETS.md").read_text()
    assert (tmp_path / "TARGETS.md").read_text() == targets_summary(tmp_path)
    text = targets_summary(tmp_path)
    # a malformed file: named, exit 2, no traceback, the summary left as it was
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "targets.json").write_text(json.dumps([{"target": "e", "met": True}]))
    script = Path(__file__).resolve().parents[1] / "bench" / "harness" / "targets_summary.py"
    proc = subprocess.run([sys.executable, str(script), "--results", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "m2/targets.json" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert (tmp_path / "TARGETS.md").read_text() == text


def test_machine_info_names_the_cpu_and_times_a_fixed_product():
    from nnunet_ext.benchmark import machine_info

    info = machine_info()
    assert set(info) == {"cpu", "cpu_count", "torch", "torch_threads", "gpu", "date", "matmul512_ms"}
    assert info["cpu"] and info["cpu_count"] >= 1 and info["torch_threads"] >= 1
    assert info["gpu"] is None  # the tests run on CPU machines
    assert info["torch"] == __import__("torch").__version__
    assert 0 < info["matmul512_ms"] < 10_000


def test_gpu_check_timeout_kills_the_commands_a_stage_started(tmp_path):
    """bench/harness/gpu_check.py bounds each stage; a stage it gives up on must not leave its nnUNetv2_train running
    beside the next stage's timings: the whole process group goes, grandchildren included."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "harness" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pid_file = tmp_path / "grandchild.pid"
    proc = subprocess.Popen(["bash", "-c", f"sleep 120 & echo $! > {pid_file}; wait"], start_new_session=True)
    for _ in range(100):
        if pid_file.is_file() and pid_file.read_text().strip():
            break
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert module._wait(proc, 1.0) == "timeout"
    time.sleep(0.2)
    status = Path(f"/proc/{grandchild}/status")
    assert not status.exists() or "\nState:\tZ" in status.read_text(), status.read_text()
    done = subprocess.Popen(["true"], start_new_session=True)
    assert module._wait(done, 5.0) == 0
