"""The GPU check end to end on the CPU (scripts/device_check.sh --small), and its parsers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovseg_ros.tools.device_check import SMALL, Result, parse_parity, parse_tables, run_row

REPO = Path(__file__).resolve().parents[1]
STATUSES = {"ok", "failed", "timeout", "skipped"}


@pytest.fixture(scope="module")
def small_report(tmp_path_factory, fixtures_dir):
    out = tmp_path_factory.mktemp("device_check")
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    run = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh"), "--small", "--time-limit", "240",
                          "--fixtures", str(fixtures_dir)], env=env, capture_output=True, text=True, timeout=330)
    folder = out / "device_check"
    assert (folder / "device_check.json").is_file(), run.stderr[-3000:]
    return json.loads((folder / "device_check.json").read_text()), (folder / "device_check.md").read_text(), run


def test_every_row_is_measured_or_says_why(small_report):
    report, markdown, run = small_report
    assert report["mode"] == "small" and report["finished"]
    assert report["sections"] == list(SMALL)
    planned = [(section, row.name) for section, rows in SMALL.items() for row in rows]
    assert [(r["section"], r["name"]) for r in report["results"]] == planned
    for r in report["results"]:
        assert r["status"] in STATUSES, r
        if r["status"] == "ok":
            assert r["error"] is None and r["returncode"] == 0
        else:
            assert isinstance(r["error"], str) and len(r["error"]) > 10, r
        assert f"### {r['section']}/{r['name']}: {r['status']}" in markdown
    # The exit status says whether everything passed.
    assert (run.returncode == 0) == all(r["status"] == "ok" for r in report["results"])


def test_environment_is_reported(small_report):
    report, markdown, _ = small_report
    env = report["environment"]
    assert env["modules"]["torch"][0].isdigit() and env["modules"]["open_clip"][0].isdigit()
    assert env["device"] == report["device"] and "cuda_available" in env
    assert "modules: torch" in markdown


def test_parity_fp32_passes_on_one_small_case(small_report):
    report, _, _ = small_report
    fp32 = next(r for r in report["results"] if (r["section"], r["name"]) == ("parity", "fp32"))
    assert fp32["status"] == "ok", fp32["error"]
    checks = fp32["parsed"]["cases"]["san_b_seed1"]
    assert fp32["parsed"]["verdict"] == "PASS"
    assert len(checks) >= 5 and all(c["passed"] for c in checks)
    assert all(c["max_abs_diff"] >= 0 for c in checks if "max_abs_diff" in c)


def test_parity_bf16_reports_every_array_against_the_gpu_tolerance(small_report):
    report, markdown, _ = small_report
    fp32, bf16 = (next(r for r in report["results"] if (r["section"], r["name"]) == ("parity", name)) for name in ("fp32", "bf16"))
    assert bf16["status"] in ("ok", "failed") and bf16["parsed"]["verdict"] in ("PASS", "FAIL"), bf16["error"]
    assert bf16["status"] == ("ok" if bf16["parsed"]["verdict"] == "PASS" else "failed")
    checks = {c["array"]: c for c in bf16["parsed"]["cases"]["san_b_seed1"]}
    assert set(checks) == {c["array"] for c in fp32["parsed"]["cases"]["san_b_seed1"]}
    assert 0 <= checks["sem_seg_argmax"]["agreement"] <= 1
    for name, check in checks.items():
        if name != "sem_seg_argmax":  # bf16 rounds: a real drift, judged at 1e-2 x max(1, max |reference|)
            assert check["max_abs_diff"] > 1e-5 and check["atol"] >= 1e-2, check
            assert check["passed"] == (check["max_abs_diff"] <= check["atol"])
    assert "| case | array | fp32 | bf16 |" in markdown
    assert "| san_b_seed1 | sem_seg_argmax | agreement 1.0000 PASS |" in markdown


def test_bench_rows_keep_their_tables(small_report):
    report, _, _ = small_report
    for r in report["results"]:
        if r["section"] != "parity" and r["status"] == "ok":
            assert r["parsed"]["tables"], r["stdout"][-2000:]
            for table in r["parsed"]["tables"]:
                assert table["rows"] and all(row[table["columns"][0]] for row in table["rows"])


def test_bench_streams_compares_batched_cameras_with_a_model_each(small_report):
    report, _, _ = small_report
    streams = next(r for r in report["results"] if (r["section"], r["name"]) == ("bench_streams", "san_tiny"))
    assert streams["status"] == "ok", streams["error"]
    rows = streams["parsed"]["tables"][0]["rows"]
    assert [(row["cameras"], row["mode"], row["models"]) for row in rows] == [("1", "batched", "1"), ("1", "separate", "1"), ("2", "batched", "1"), ("2", "separate", "2")]
    assert all(float(row["total frames/s"]) > 0 for row in rows)
    assert float(rows[2]["mean batch size"]) > 1.0 and float(rows[3]["mean batch size"]) == 1.0, "two cameras share the one model's passes"
    assert float(rows[2]["models' memory MB"]) > 0 and abs(float(rows[3]["models' memory MB"]) - 2 * float(rows[2]["models' memory MB"])) <= 1
    assert any(line.startswith("ratio N=2: batched / separate frames/s") for line in streams["parsed"]["lines"])


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
