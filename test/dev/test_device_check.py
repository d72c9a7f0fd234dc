"""The GPU check's two calls end to end on the CPU (scripts/device_check.sh --small), its stop
handling, and its parsers."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from ovseg_dev.device_check import CALL_TIME_LIMITS, FULL, SMALL, STATUSES, Result, engine_problem, parse_parity, parse_tables, run_row

#: Both calls of the small plan run in the module's fixture (minutes on this CPU).
pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "device_check.sh"


def run_call(out: Path, call: int, *args: str, env: dict | None = None, timeout: float = 330) -> tuple[dict, str, subprocess.CompletedProcess]:
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, **(env or {}))
    run = subprocess.run(["bash", str(SCRIPT), "--small", "--call", str(call), *args], env=env, capture_output=True, text=True, timeout=timeout)
    folder = out / "device_check"
    name = f"device_check_call{call}"
    assert (folder / f"{name}.json").is_file(), run.stderr[-3000:]
    return json.loads((folder / f"{name}.json").read_text()), (folder / f"{name}.md").read_text(), run


@pytest.fixture(scope="module")
def calls(tmp_path_factory, fixtures_dir):
    """Both calls of the small plan, as the device machine would run them one after the other."""
    return {call: run_call(tmp_path_factory.mktemp(f"call{call}"), call, "--fixtures", str(fixtures_dir)) for call in (1, 2)}


def row(report: dict, section: str, name: str) -> dict:
    return next(r for r in report["results"] if (r["section"], r["name"]) == (section, name))


def test_every_row_is_measured_or_says_why(calls):
    for call, (report, markdown, run) in calls.items():
        assert report["mode"] == "small" and report["call"] == call and report["finished"]
        assert report["sections"] == list(SMALL[call])
        planned = [(section, r.name) for section, rows in SMALL[call].items() for r in rows]
        assert [(r["section"], r["name"]) for r in report["results"]] == planned
        for r in report["results"]:
            assert r["status"] in STATUSES, r
            if r["status"] == "ok":
                assert r["error"] is None and r["returncode"] == 0
            else:
                assert isinstance(r["error"], str) and len(r["error"]) > 10, r
            assert f"### {r['section']}/{r['name']}: {r['status']}" in markdown
        # The exit status says whether everything passed.
        assert (run.returncode == 0) == all(r["status"] == "ok" for r in report["results"]), run.stderr[-2000:]


def test_the_full_plan_has_the_same_sections_and_fits_each_call():
    for call, sections in FULL.items():
        assert list(sections) == list(SMALL[call])
    # The rows that must run (all but "extra") fit the call's time limit, most important first.
    assert list(FULL[1])[:2] == ["smoke", "parity"]
    essential = sum(r.timeout_s for section, rows in FULL[1].items() if section != "extra" for r in rows)
    assert essential <= CALL_TIME_LIMITS[1] and CALL_TIME_LIMITS[1] <= 480
    assert sum(r.timeout_s for rows in FULL[2].values() for r in rows) <= CALL_TIME_LIMITS[2] <= 270


def test_smoke_row_runs_every_cuda_path(calls):
    report, _, _ = calls[1]
    smoke = row(report, "smoke", "tiny_models")
    assert smoke["status"] == "ok", smoke["error"]
    (table,) = smoke["parsed"]["tables"]
    paths = {r["path"]: r for r in table["rows"]}
    assert {"sed_bf16_cer8_all_outputs_points16", "san_bf16_flow_all_outputs", "san_batch_two_sizes", "sed_stream_vocabulary_swap"} <= set(paths)
    assert all(r["result"] == "ok" for r in paths.values()), paths
    assert paths["sed_bf16_cer8_all_outputs_points16"]["expected"] == "4"  # 3 CER count reads + the compact cloud copy


def test_environment_is_reported(calls):
    report, markdown, _ = calls[1]
    env = report["environment"]
    assert env["modules"]["torch"][0].isdigit() and env["modules"]["open_clip"][0].isdigit()
    assert env["device"] == report["device"] and "cuda_available" in env
    assert "modules: torch" in markdown


def test_parity_fp32_passes_on_one_small_case(calls):
    report, _, _ = calls[1]
    fp32 = row(report, "parity", "fp32")
    assert fp32["status"] == "ok", fp32["error"]
    checks = fp32["parsed"]["cases"]["san_b_seed1"]
    assert fp32["parsed"]["verdict"] == "PASS"
    assert len(checks) >= 5 and all(c["passed"] for c in checks)


def test_parity_bf16_reports_every_array_against_the_gpu_tolerance(calls):
    report, markdown, _ = calls[1]
    fp32, bf16 = row(report, "parity", "fp32"), row(report, "parity", "bf16")
    assert bf16["status"] in ("ok", "failed") and bf16["parsed"]["verdict"] in ("PASS", "FAIL"), bf16["error"]
    assert bf16["status"] == ("ok" if bf16["parsed"]["verdict"] == "PASS" else "failed")
    checks = {c["array"]: c for c in bf16["parsed"]["cases"]["san_b_seed1"]}
    assert set(checks) == {c["array"] for c in fp32["parsed"]["cases"]["san_b_seed1"]}
    for name, check in checks.items():
        if name != "sem_seg_argmax":  # bf16 rounds: a real drift, judged at 1e-2 x max(1, max |reference|)
            assert check["max_abs_diff"] > 1e-5 and check["atol"] >= 1e-2, check
            assert check["passed"] == (check["max_abs_diff"] <= check["atol"])
    assert "| case | array | fp32 | bf16 |" in markdown


def test_bench_rows_keep_their_tables(calls):
    for report, _, _ in (calls[1], calls[2]):
        for r in report["results"]:
            if r["section"] not in ("parity",) and r["status"] == "ok":
                assert r["parsed"]["tables"], r["stdout"][-2000:]
                for table in r["parsed"]["tables"]:
                    assert table["rows"] and all(row_[table["columns"][0]] for row_ in table["rows"])


def test_call_2_compares_compiled_with_eager(calls):
    report, _, _ = calls[2]
    compiled = row(report, "compile", "sed_tiny")
    assert compiled["status"] == "ok", compiled["error"]
    configurations = [r["configuration"] for r in compiled["parsed"]["tables"][0]["rows"]]
    assert len(configurations) == 2 and "compile" not in configurations[0] and "compile default" in configurations[1]
    assert any("compile default" in line and "vs eager" in line for line in compiled["parsed"]["lines"])


def test_a_stop_signal_kills_the_row_in_flight_and_writes_the_report(tmp_path, fixtures_dir):
    """What the device tool does at its time limit: no process of the check outlives it."""
    mark = uuid.uuid4().hex
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, OVSEG_DEVICE_CHECK_TEST_MARK=mark)
    process = subprocess.Popen(["bash", str(SCRIPT), "--small", "--call", "2"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:  # the compile row has started (it takes a minute here)
            if line.startswith("[device_check] compile/"):
                break
        time.sleep(3.0)
        assert [pid for pid in marked_processes(mark) if pid != process.pid], "the row runs in processes of its own"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        process.kill()
    time.sleep(0.5)
    assert marked_processes(mark) == []
    report = json.loads((tmp_path / "device_check" / "device_check_call2.json").read_text())
    assert report["results"][0]["status"] == "stopped" and "SIGTERM" in report["results"][0]["error"]


def marked_processes(mark: str) -> list[int]:
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"OVSEG_DEVICE_CHECK_TEST_MARK={mark}".encode() in environ.read_bytes():
                pids.append(int(environ.parent.name))
        except OSError:  # gone meanwhile
            pass
    return pids


def test_a_wheel_of_an_unknown_package_is_a_line_not_an_abort(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "tiny_unknown-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("tiny_unknown/__init__.py", "")
        wheel.writestr("tiny_unknown-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tiny_unknown\nVersion: 1.0\n")
        wheel.writestr("tiny_unknown-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr("tiny_unknown-1.0.dist-info/RECORD", "")
    report, _, run = run_call(tmp_path, 1, "--only", "nothing", env={"DEVICE_WHEELS": str(wheels)}, timeout=120)
    assert run.returncode == 0 and report["results"] == []
    assert "no module known for package tiny-unknown" in run.stderr


def test_an_engine_that_cannot_import_skips_every_row_with_the_reason():
    env = {"modules": {"torch": "2.11.0+cu130", "torchvision": "0.26.0", "numpy": "2.4.6", "open_clip": "cannot import: ModuleNotFoundError: No module named 'open_clip'"}}
    problem = engine_problem(env)
    assert "open_clip" in problem and "carry .device_wheels" in problem
    assert engine_problem({"modules": {name: "1.0" for name in ("torch", "torchvision", "numpy", "open_clip")}}) is None


def test_parse_parity_reads_checks_and_verdict():
    stdout = ("precision bf16 (autocast): float arrays within 1e-02 x max(1, max |reference|)\n"
              "== /f/sed_b_seed1\nPASS  normal_probs   max abs diff 1.2e-06 (atol 1e-05)\n"
              "FAIL  cer_top8_kept_stage1 ours [1, 2] != reference [1, 3]\n"
              "FAIL  sem_seg_argmax           agreement 0.73448 (min 0.99)\n== /f/san_b_seed1\nERROR  no such file\n"
              "parity: FAIL\n")
    parsed = parse_parity(stdout)
    assert parsed["verdict"] == "FAIL"
    first, second, third = parsed["cases"]["sed_b_seed1"]
    assert first["passed"] and first["max_abs_diff"] == 1.2e-06 and first["atol"] == 1e-05 and first["array"] == "normal_probs"
    assert not second["passed"] and second["array"] == "cer_top8_kept_stage1"
    assert not third["passed"] and third["agreement"] == 0.73448 and "max_abs_diff" not in third
    assert parsed["cases"]["san_b_seed1"] == [{"array": None, "passed": False, "detail": "no such file"}]


def test_parse_tables_reads_markdown_rows():
    stdout = "model x\n| configuration | decoder | total (wall) |\n|---|---|---|\n| ade150, CER off | 1.5 | 3.0 |\n\nratios: 2x\n"
    parsed = parse_tables(stdout)
    assert parsed["tables"] == [{"columns": ["configuration", "decoder", "total (wall)"],
                                 "rows": [{"configuration": "ade150, CER off", "decoder": "1.5", "total (wall)": "3.0"}]}]
    assert parsed["lines"] == ["model x", "ratios: 2x"]


def test_a_row_past_its_timeout_is_stopped_and_reported():
    result = Result("bench_model", "sleeper", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"])
    run_row(result, timeout_s=2.0)
    assert result.status == "timeout" and "2 s" in result.error
    assert result.seconds < 30 and "started" in result.stdout


def test_a_failing_row_names_its_last_error_line():
    result = Result("bench_pipeline", "broken", [sys.executable, "-c", "import sys; sys.exit('bench: no such option --x')"])
    run_row(result, timeout_s=30.0)
    assert result.status == "failed" and result.returncode == 1
    assert result.error == "exit 1: bench: no such option --x"
