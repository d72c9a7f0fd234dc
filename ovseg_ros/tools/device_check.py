"""The GPU check: parity, model and pipeline benchmarks in one run, one JSON + one markdown report.

    bash scripts/device_check.sh                   # on the GPU machine (installs the shipped wheels first)
    python -m ovseg_ros.tools.device_check --out out/device_check [--small] [--only parity]

Every check is a subprocess (``check_parity``, ``bench model``, ``bench pipeline``, ``bench streams``) from the
tables below: one row, one command line, adjusted in one place when a tool's options change.
Each row runs on its own, under its own timeout and the run's total time limit, so one
failure (a missing option, a crash, out of memory) does not lose the others; its exit
status, output and an error string go into the report. The report is rewritten after every
row, so a run stopped from outside still leaves what was measured, and rows that did not
run say so.

Sections: ``parity`` (fp32 without TF32, and bf16 judged by the fixtures' GPU tolerance;
the report tabulates both per array), ``bench_pipeline``, ``bench_streams`` (several cameras
batched through one model vs a model each), ``bench_model`` and ``compile`` (SED-B, ADE-150,
CER 8: eager vs ``--compile default`` vs ``reduce-overhead``).

``--small`` runs the same sections with tiny models and one parity case on whatever device
there is (the CPU here): the test of this tool.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Row:
    """One check: ``python ARGS`` with ``{device}`` and ``{fixtures}`` filled in."""

    name: str
    args: list[str]
    timeout_s: float
    note: str = ""


PARITY = ["-m", "ovseg_ros.tools.check_parity", "--device", "{device}"]
BENCH_MODEL = ["-m", "ovseg_ros.tools.bench", "model", "--device", "{device}"]
BENCH_PIPELINE = ["-m", "ovseg_ros.tools.bench", "pipeline", "--device", "{device}"]
BENCH_STREAMS = ["-m", "ovseg_ros.tools.bench", "streams", "--device", "{device}"]

FULL_PARITY_CASES = ["sed_b_seed1", "sed_b_seed1_cer24", "sed_l_seed1", "san_b_seed1", "san_l_seed1"]
# SAN-B is the quickest case on a CPU (8 s on 2 cores; SED-B takes 50 s).
SMALL_PARITY_CASES = ["san_b_seed1"]

# Full run, on the GPU machine, in priority order (sections and rows run top to bottom):
# when the total time limit runs out, the rows left are reported as skipped. Model rows
# use a 640x480 camera frame.
MODEL_FRAMES = ["--image", "640x480", "--warmup", "3", "--repeats", "10"]
SED_VOCABS_CER = ["--vocab", "ade150", "ade847", "--cer", "0", "8", "1"]
SED_B_CER8_BF16 = ["--model", "sed_convnext_base", "--precision", "bf16", "--vocab", "ade150", "--cer", "8"]
FULL: dict[str, list[Row]] = {
    "parity": [
        Row("fp32", PARITY + ["{fixtures}/" + c for c in FULL_PARITY_CASES], 180),
        Row("bf16", PARITY + ["--precision", "bf16"] + ["{fixtures}/" + c for c in FULL_PARITY_CASES], 180,
            "drift of the default CUDA precision against the fp32 fixtures"),
    ],
    "bench_pipeline": [
        Row("sed_b_bf16", BENCH_PIPELINE + ["--model", "sed_convnext_base", "--precision", "bf16", "--size", "640x480", "1280x720",
            "--vocab", "ade150", "--frames", "100"], 150, "FramePipeline serial vs overlapped, labels only and all outputs"),
    ],
    # Issue 12: N cameras batched through one model vs one model per camera (the node-level
    # benchmark needs ROS, which the GPU machine lacks).
    "bench_streams": [
        Row("sed_b_bf16", BENCH_STREAMS + ["--model", "sed_convnext_base", "--precision", "bf16", "--cameras", "1", "2", "4",
            "--image", "640x480", "--camera-hz", "200", "--frames", "40"], 120, "4 cameras: batched (one model) vs separate (4 models)"),
        Row("san_b_bf16", BENCH_STREAMS + ["--model", "san_vit_b_16", "--precision", "bf16", "--cameras", "1", "2", "4",
            "--image", "640x480", "--camera-hz", "200", "--frames", "40"], 120),
    ],
    "bench_model": [
        Row("sed_b_bf16", BENCH_MODEL + ["--model", "sed_convnext_base", "--precision", "bf16"] + SED_VOCABS_CER + MODEL_FRAMES, 120),
        Row("sed_b_fp32", BENCH_MODEL + ["--model", "sed_convnext_base", "--precision", "fp32"] + SED_VOCABS_CER + MODEL_FRAMES, 120),
        Row("sed_l_bf16", BENCH_MODEL + ["--model", "sed_convnext_large", "--precision", "bf16"] + SED_VOCABS_CER + MODEL_FRAMES, 150),
        Row("sed_b_bf16_forced_rejection", BENCH_MODEL + ["--model", "sed_convnext_base", "--precision", "bf16",
            "--vocab", "ade150", "ade847", "--cer", "8", "1", "--distinct", "8"] + MODEL_FRAMES, 120,
            "random weights reject almost nothing: 8 distinct text features force rejection"),
        Row("san_b_bf16", BENCH_MODEL + ["--model", "san_vit_b_16", "--precision", "bf16", "--vocab", "ade150", "ade847"] + MODEL_FRAMES, 90),
        Row("san_l_bf16", BENCH_MODEL + ["--model", "san_vit_large_14", "--precision", "bf16", "--vocab", "ade150", "ade847"] + MODEL_FRAMES, 120),
    ],
    # Segmenter(compile_mode=...): the same SED-B frames eager, compiled, compiled with CUDA
    # graphs; the first warm-up frame compiles (minutes), the timed frames do not.
    "compile": [
        Row("off", BENCH_MODEL + SED_B_CER8_BF16 + MODEL_FRAMES, 90, "eager: the baseline of the two rows below"),
        Row("default", BENCH_MODEL + SED_B_CER8_BF16 + ["--compile", "default"] + MODEL_FRAMES, 240,
            "torch.compile mode default (inductor) of the image encoder and each decoder stage"),
        Row("reduce_overhead", BENCH_MODEL + SED_B_CER8_BF16 + ["--compile", "reduce-overhead"] + MODEL_FRAMES, 240,
            "torch.compile mode reduce-overhead: inductor plus CUDA graphs (one per CER bucket size)"),
    ],
}

# The same sections with tiny models, one parity case, few frames: minutes on a CPU.
SMALL_FRAMES = ["--image", "128x96", "--warmup", "0", "--repeats", "1"]
SMALL: dict[str, list[Row]] = {
    "parity": [
        Row("fp32", PARITY + ["{fixtures}/" + c for c in SMALL_PARITY_CASES], 120),
        Row("bf16", PARITY + ["--precision", "bf16"] + ["{fixtures}/" + c for c in SMALL_PARITY_CASES], 120),
    ],
    "bench_pipeline": [
        Row("san_tiny", BENCH_PIPELINE + ["--model", "san_tiny_dev", "--size", "160x120", "--vocab", "ade150", "--frames", "3"], 60),
    ],
    "bench_streams": [
        Row("san_tiny", BENCH_STREAMS + ["--model", "san_tiny_dev", "--cameras", "1", "2", "--image", "160x120", "--classes", "6",
            "--frames", "3"], 60),
    ],
    "bench_model": [
        # CER off or top-8 keeps all 150 classes: 8 s a frame here; forced rejection keeps 2.
        Row("sed_tiny", BENCH_MODEL + ["--model", "sed_tiny_dev", "--vocab", "ade150", "--cer", "1", "--distinct", "2"] + SMALL_FRAMES, 60),
        Row("san_tiny", BENCH_MODEL + ["--model", "san_tiny_dev", "--vocab", "ade150"] + SMALL_FRAMES, 60),
    ],
    # Inductor on this CPU: about 30 s of compiling in the first frame.
    "compile": [
        Row("default", BENCH_MODEL + ["--model", "sed_tiny_dev", "--vocab", "ade150", "--cer", "1", "--distinct", "2",
            "--compile", "default"] + SMALL_FRAMES, 120),
    ],
}

OPTIONAL_MODULES = ("torch", "torchvision", "triton", "timm", "open_clip", "cv2", "numpy", "PIL")
OUTPUT_TAIL_CHARS = 12_000
NOT_RUN = "not run: the check was stopped before this row"


@dataclass
class Result:
    section: str
    name: str
    command: list[str]
    timeout_s: float = 60.0
    note: str = ""
    status: str = "not run"  # ok | failed | timeout | skipped | not run
    error: str | None = NOT_RUN
    returncode: int | None = None
    seconds: float | None = None
    stdout: str = ""
    stderr: str = ""
    parsed: dict = field(default_factory=dict)


def environment(device: str) -> dict:
    """Versions and the accelerator; every item that cannot be found says why instead."""
    env: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
                 "device": device, "modules": {}}
    for name in OPTIONAL_MODULES:
        try:
            module = __import__(name)
            env["modules"][name] = getattr(module, "__version__", "present")
        except Exception as exc:  # noqa: BLE001 -- any import failure is a finding
            env["modules"][name] = f"cannot import: {type(exc).__name__}: {exc}"
    if not env["modules"]["torchvision"][0].isdigit() and "torchvision" in env["modules"]["open_clip"]:
        env["open_clip_needs_torchvision"] = (
            "open_clip cannot be imported without torchvision, which is missing here: install the torchvision "
            "build that matches this machine's torch (it cannot be matched from elsewhere)")
    try:
        import torch

        env["cuda_available"] = torch.cuda.is_available()
        env["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            env["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            env["bf16_supported"] = torch.cuda.is_bf16_supported()
            env["cudnn"] = torch.backends.cudnn.version()
    except Exception as exc:  # noqa: BLE001
        env["torch_error"] = f"{type(exc).__name__}: {exc}"
    try:
        env["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        env["nvidia_smi"] = f"not available: {exc}"
    env["commit"] = source_commit()
    return env


def source_commit() -> str:
    """The checkout's commit, or the one ``device_check.sh --fetch`` recorded (no .git on the device)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    manifest = REPO / ".device_wheels" / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("commit", "unknown") + " (recorded by --fetch)"
    return "unknown"


def parse_parity(stdout: str) -> dict:
    """check_parity's lines -> {"cases": {case: [check, ...]}, "verdict": PASS | FAIL | None}."""
    cases: dict[str, list[dict]] = {}
    current = None
    verdict = None
    for line in stdout.splitlines():
        if line.startswith("== "):
            current = Path(line[3:].strip()).name
            cases[current] = []
        elif (match := re.match(r"(PASS|FAIL|ERROR)\s+(.*)", line)) and current is not None:
            status, rest = match.groups()
            if status == "ERROR":  # the case could not be run at all
                check = {"array": None, "passed": False, "detail": rest.strip()}
            else:
                name, _, detail = rest.partition(" ")
                check = {"array": name, "passed": status == "PASS", "detail": detail.strip()}
            if diff := re.search(r"max abs diff ([0-9.e+-]+) \(atol ([0-9.e+-]+)\)", rest):
                check["max_abs_diff"], check["atol"] = float(diff.group(1)), float(diff.group(2))
            if agreement := re.search(r"agreement ([0-9.]+)", rest):
                check["agreement"] = float(agreement.group(1))
            cases[current].append(check)
        elif line.startswith("parity: "):
            verdict = line.removeprefix("parity: ").strip()
    return {"cases": cases, "verdict": verdict}


def parse_tables(stdout: str) -> dict:
    """Markdown tables in a tool's output -> lists of {column: cell}, plus its other lines."""
    tables, lines, table = [], [], None
    for line in stdout.splitlines():
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if table is None:
                table = {"columns": cells, "rows": []}
                tables.append(table)
            elif not all(set(cell) <= set("-: ") for cell in cells):
                table["rows"].append(dict(zip(table["columns"], cells)))
        else:
            table = None
            if line.strip():
                lines.append(line)
    return {"tables": tables, "lines": lines}


def run_row(result: Result, timeout_s: float) -> None:
    """Run one row's command; fills status, error, output and the parsed figures."""
    start = time.monotonic()
    process = subprocess.Popen(result.command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own group: a timeout ends its children too
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        timed_out = True
    result.seconds = round(time.monotonic() - start, 1)
    result.returncode = process.returncode
    result.stdout, result.stderr = stdout[-OUTPUT_TAIL_CHARS:], stderr[-OUTPUT_TAIL_CHARS:]
    result.parsed = parse_parity(stdout) if result.section == "parity" else parse_tables(stdout)
    if timed_out:
        result.status, result.error = "timeout", f"stopped after {timeout_s:.0f} s (row or total time limit)"
    elif process.returncode == 0:
        result.status, result.error = "ok", None
    else:
        result.status = "failed"
        result.error = failure_reason(result)


def failure_reason(result: Result) -> str:
    """A one-line reason: failed parity arrays, else the last line of the error output."""
    failed = [f"{case}/{check['array'] or 'ERROR'}: {check['detail']}"
              for case, checks in result.parsed.get("cases", {}).items() for check in checks if not check["passed"]]
    if failed:
        return f"exit {result.returncode}; " + "; ".join(failed)
    last = next((line for line in reversed((result.stderr + "\n" + result.stdout).splitlines()) if line.strip()), "")
    return f"exit {result.returncode}: {last.strip()}"


def plan(tables: dict[str, list[Row]], device: str, fixtures: Path, only: list[str]) -> list[Result]:
    results = []
    for section, rows in tables.items():
        for row in rows:
            if only and section not in only and f"{section}/{row.name}" not in only:
                continue
            command = [sys.executable] + [arg.format(device=device, fixtures=fixtures) for arg in row.args]
            results.append(Result(section, row.name, command, row.timeout_s, row.note))
    return results


def missing_fixtures(result: Result, fixtures: Path) -> list[str]:
    return [arg for arg in result.command if arg.startswith(str(fixtures) + "/") and not (Path(arg) / "case.json").is_file()]


def write_reports(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_check.json").write_text(json.dumps(report, indent=1))
    (out / "device_check.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Device check ({report['mode']})", "",
             f"- date: {report['started']} .. {report.get('finished') or '(running)'}",
             f"- commit: {env.get('commit', 'unknown')}",
             f"- machine: {env.get('gpu') or 'no GPU'}; {env.get('nvidia_smi', '')}; {env.get('cpu_count')} CPUs; "
             f"{env.get('platform')}; python {env.get('python')}",
             f"- device: {report['device']}; total time limit {report['time_limit_s']:.0f} s",
             "- modules: " + ", ".join(f"{name} {version}" for name, version in env.get("modules", {}).items())]
    if "open_clip_needs_torchvision" in env:
        lines.append(f"- **{env['open_clip_needs_torchvision']}**")
    if "environment_error" in report:
        lines.append(f"- environment error: {report['environment_error']}")
    for section in report["sections"]:
        rows = [r for r in report["results"] if r["section"] == section]
        lines += ["", f"## {section}", "", "| check | status | seconds | error |", "|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['status']} | {r['seconds'] if r['seconds'] is not None else '–'} | "
                  f"{(r['error'] or '').replace('|', '/')[:300]} |" for r in rows]
        if section == "parity":
            lines += parity_drift(rows)
        for r in rows:
            lines += ["", f"### {section}/{r['name']}: {r['status']}", ""]
            if r["note"]:
                lines.append(f"{r['note']}.  ")
            lines += [f"`{' '.join(r['command'][1:])}`", ""]
            if r["stdout"].strip():
                lines += ["```", r["stdout"].strip()[-4000:], "```"]
            if r["status"] != "ok" and r["stderr"].strip():
                lines += ["", "stderr (tail):", "```", r["stderr"].strip()[-2000:], "```"]
    return "\n".join(lines) + "\n"


def parity_drift(rows: list[dict]) -> list[str]:
    """Markdown table: per case and array, each parity row's max abs diff (or argmax agreement) and verdict."""
    measured = [r for r in rows if r["parsed"].get("cases")]
    if not measured:
        return []
    lines = ["", "| case | array | " + " | ".join(r["name"] for r in measured) + " |", "|---|---|" + "---|" * len(measured)]
    arrays = dict.fromkeys((case, check["array"]) for r in measured for case, checks in r["parsed"]["cases"].items()
                           for check in checks)
    for case, array in arrays:
        cells = []
        for r in measured:
            check = next((c for c in r["parsed"]["cases"].get(case, []) if c["array"] == array), None)
            if check is None:
                cells.append("–")
                continue
            value = (f"{check['max_abs_diff']:.1e} (atol {check['atol']:.0e})" if "max_abs_diff" in check else
                     f"agreement {check['agreement']:.4f}" if "agreement" in check else check["detail"][:40])
            cells.append(f"{value} {'PASS' if check['passed'] else '**FAIL**'}")
        lines.append(f"| {case} | {array or 'ERROR'} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for device_check.json and device_check.md")
    parser.add_argument("--small", action="store_true", help="tiny models, one parity case, few frames (CPU test)")
    parser.add_argument("--device", default="auto", help="torch device for every check (auto: cuda if available)")
    parser.add_argument("--fixtures", type=Path, default=None,
                        help="parity fixtures (default: .device_wheels/fixtures if shipped, else ../shared/fixtures)")
    parser.add_argument("--time-limit", type=float, default=None, help="total seconds (default 400, --small 300)")
    parser.add_argument("--only", nargs="+", default=[], help="sections or section/row names to run")
    args = parser.parse_args(argv)

    started = time.monotonic()
    time_limit = args.time_limit or (300.0 if args.small else 400.0)
    fixtures = (args.fixtures or next((p for p in (REPO / ".device_wheels" / "fixtures", REPO.parent / "shared" / "fixtures")
                                       if p.is_dir()), REPO.parent / "shared" / "fixtures")).resolve()
    device = args.device
    if device == "auto":
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except Exception:  # noqa: BLE001 -- reported with the environment
            device = "cpu"
    tables = SMALL if args.small else FULL
    report = {"mode": "small" if args.small else "full", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "finished": None, "device": device, "fixtures": str(fixtures), "time_limit_s": time_limit,
              "sections": list(tables), "environment": {}, "results": []}
    try:
        report["environment"] = environment(device)
    except Exception as exc:  # noqa: BLE001 -- the checks still run
        report["environment_error"] = f"{type(exc).__name__}: {exc}"
    results = plan(tables, device, fixtures, args.only)
    report["results"] = [asdict(r) for r in results]
    write_reports(args.out, report)

    for index, result in enumerate(results):
        left = time_limit - (time.monotonic() - started)
        if missing := missing_fixtures(result, fixtures):
            result.status, result.error = "skipped", f"fixture cases missing (no case.json): {', '.join(missing)}"
        elif left < 10:
            result.status, result.error = "skipped", f"total time limit ({time_limit:.0f} s) reached"
        else:
            timeout_s = min(result.timeout_s, left)
            print(f"[device_check] {result.section}/{result.name} (up to {timeout_s:.0f} s)", file=sys.stderr, flush=True)
            try:
                run_row(result, timeout_s)
            except Exception as exc:  # noqa: BLE001 -- e.g. the interpreter cannot start
                result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
            print(f"[device_check]   {result.status} in {result.seconds} s{': ' + result.error if result.error else ''}",
                  file=sys.stderr, flush=True)
        report["results"][index] = asdict(result)
        write_reports(args.out, report)

    report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_reports(args.out, report)
    counts = {status: sum(r.status == status for r in results) for status in ("ok", "failed", "timeout", "skipped")}
    print(f"[device_check] {counts} in {time.monotonic() - started:.0f} s; report: {args.out / 'device_check.md'}", file=sys.stderr)
    return 0 if counts["ok"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
