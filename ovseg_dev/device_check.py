"""The GPU check in two calls: one JSON + one markdown report per call, rewritten after every row.

    bash scripts/device_check.sh --call 1          # on the GPU machine (installs the carried wheels first)
    bash scripts/device_check.sh --call 2          # right after, on the same started machine
    python -m ovseg_dev.device_check --call 1 --out out/device_check [--small] [--only parity]

The GPU machine is lent for about 15 minutes in all, both starts included; README's GPU section
gives the device tool's commands, what travels with them and each one's time limit.

* **Call 1** (:data:`CALL_TIME_LIMITS`: 450 s): the CUDA smoke row first (tiny models through
  every CUDA path, host syncs per frame, :mod:`~ovseg_dev.cuda_smoke`), parity fp32 and
  bf16 on SED-B, SED-B with CER and SAN-B, the SED-B model table (150 and 847 classes, CER
  off / 8 / 1, forced rejection, fp32), the frame path at 640x480 and 1280x720 with every output,
  SAN-B; then, while time is left, the large variants and several cameras.
* **Call 2** (255 s): torch.compile and CUDA graphs on vs off, SED-B and SAN-B.

Every row is a subprocess (``cuda_smoke``, ``check_parity``, ``bench model``, ``bench pipeline``,
``bench streams``) from the tables below: one row, one command line, adjusted in one place
when a tool's options change. Rows run most important first, each under its own limit and
at most the call's time left, so one failure (a missing option, a crash, out of memory)
does not lose the others; its exit status, output and an error string go into the report.
Rows whose time is gone are reported as skipped. Each row runs in a process group of its
own that dies with this process: a row past its limit is killed with its children, and
SIGTERM / SIGINT / SIGHUP (the device tool's own time limit) kill the row in flight and
write the report before exiting, so no process outlives the call. A missing fixture or an
engine that cannot be imported (open_clip without its wheel) is a line in the report.

``--small`` runs the same plan with tiny models and one parity case on whatever device
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

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    """One check: ``python ARGS`` with ``{device}`` and ``{fixtures}`` filled in."""

    name: str
    args: list[str]
    timeout_s: float
    note: str = ""


SMOKE = ["-m", "ovseg_dev.cuda_smoke", "--device", "{device}"]
PARITY = ["-m", "ovseg_ros.commands.check_parity", "--device", "{device}"]
BENCH_MODEL = ["-m", "ovseg_dev.bench", "model", "--device", "{device}"]
BENCH_PIPELINE = ["-m", "ovseg_dev.bench", "pipeline", "--device", "{device}"]
BENCH_STREAMS = ["-m", "ovseg_dev.bench", "streams", "--device", "{device}"]

#: The cases parity must cover (SED-B, SED-B with CER at 24 kept classes, SAN-B); the large
#: variants follow in a row of their own when time is left.
PARITY_CASES = ["sed_b_seed1", "sed_b_seed1_cer24", "san_b_seed1"]
LARGE_PARITY_CASES = ["sed_l_seed1", "san_l_seed1"]
# SAN-B is the quickest case on a CPU (8 s on 2 cores; SED-B takes 50 s).
SMALL_PARITY_CASES = ["san_b_seed1"]

#: Each call's total time limit (s): within the device tool's per-call limit, with room for the
#: wheels' install before and the transfers after. Call 2 runs right after call 1 on the same
#: started machine (15 minutes of device time in all, both starts included).
CALL_TIME_LIMITS = {1: 450.0, 2: 255.0}
SMALL_CALL_TIME_LIMITS = {1: 240.0, 2: 150.0}

# Rows run top to bottom, most important first; each has its own limit and gets at most the
# call's time left; rows left when the call's time runs out are reported as skipped. Model
# rows use a 640x480 camera frame (SED stretches it to 768x768).
MODEL_FRAMES = ["--image", "640x480", "--warmup", "3", "--repeats", "10"]
SED_B = ["--model", "sed_convnext_base"]
CALL_1: dict[str, list[Row]] = {
    "smoke": [
        Row("tiny_models", SMOKE, 60, "tiny SED and SAN through every CUDA path (bf16, fp16, fp32, CER, flow and EMA smoothing, "
            "uint16 and float32 depth to points, two input sizes in a batch, a vocabulary swap while streaming); host syncs per frame"),
    ],
    "parity": [
        Row("fp32", PARITY + ["{fixtures}/" + c for c in PARITY_CASES], 70, "fp32 without TF32: the fixtures' CPU tolerances"),
        Row("bf16", PARITY + ["--precision", "bf16"] + ["{fixtures}/" + c for c in PARITY_CASES], 55,
            "drift of bf16 autocast against the fp32 fixtures"),
    ],
    "bench_model": [
        Row("sed_b_bf16", BENCH_MODEL + SED_B + ["--precision", "bf16", "--vocab", "ade150", "ade847", "--cer", "0", "8", "1"] + MODEL_FRAMES, 70,
            "SED-B, 150 and 847 classes, CER off / 8 / 1"),
        Row("sed_b_bf16_forced_rejection", BENCH_MODEL + SED_B + ["--precision", "bf16", "--vocab", "ade150", "ade847", "--cer", "8", "1",
            "--distinct", "8"] + MODEL_FRAMES, 40, "random weights reject almost nothing: 8 distinct text features force rejection"),
        Row("sed_b_fp32", BENCH_MODEL + SED_B + ["--precision", "fp32", "--vocab", "ade150", "--cer", "0", "8"] + MODEL_FRAMES, 35),
    ],
    "bench_pipeline": [
        Row("sed_b_bf16", BENCH_PIPELINE + SED_B + ["--precision", "bf16", "--size", "640x480", "1280x720", "--vocab", "ade150",
            "--frames", "40"], 60, "the frame path's overhead: serial vs overlapped, labels only and every output"),
    ],
    "bench_model_san": [
        Row("san_b_bf16", BENCH_MODEL + ["--model", "san_vit_b_16", "--precision", "bf16", "--vocab", "ade150", "ade847"] + MODEL_FRAMES, 40),
    ],
    # When time is left: the large variants and several cameras.
    "extra": [
        Row("parity_large_fp32", PARITY + ["{fixtures}/" + c for c in LARGE_PARITY_CASES], 60),
        Row("bench_streams_sed_b", BENCH_STREAMS + SED_B + ["--precision", "bf16", "--cameras", "1", "2", "4", "--image", "640x480",
            "--camera-hz", "200", "--frames", "30"], 60, "4 cameras: batched (one model) vs separate (4 models)"),
        Row("sed_l_bf16", BENCH_MODEL + ["--model", "sed_convnext_large", "--precision", "bf16", "--vocab", "ade150", "--cer", "0", "8"]
            + MODEL_FRAMES, 50),
    ],
}
# torch.compile (inductor) vs eager, and CUDA graphs (mode reduce-overhead), in one process per
# model: the eager baseline, then each mode on a freshly built segmenter; a mode's first frames
# compile (one graph per shape), the timed frames do not.
COMPILE_MODES_COMPARED = ["--compile", "off", "default", "reduce-overhead"]
CALL_2: dict[str, list[Row]] = {
    "compile": [
        Row("sed_b_bf16", BENCH_MODEL + SED_B + ["--precision", "bf16", "--vocab", "ade150", "--cer", "8"] + COMPILE_MODES_COMPARED
            + MODEL_FRAMES, 140, "SED-B at 150 classes, CER 8: eager vs inductor vs inductor + CUDA graphs"),
        Row("san_b_bf16", BENCH_MODEL + ["--model", "san_vit_b_16", "--precision", "bf16", "--vocab", "ade150"] + COMPILE_MODES_COMPARED
            + MODEL_FRAMES, 105, "SAN-B at 150 classes: the same three"),
    ],
}
FULL = {1: CALL_1, 2: CALL_2}

# The same plan with tiny models, one parity case, few frames: minutes on a CPU.
SMALL_FRAMES = ["--image", "128x96", "--warmup", "0", "--repeats", "1"]
SMALL: dict[int, dict[str, list[Row]]] = {
    1: {
        "smoke": [Row("tiny_models", SMOKE + ["--frames", "1"], 75)],
        "parity": [
            Row("fp32", PARITY + ["{fixtures}/" + c for c in SMALL_PARITY_CASES], 60),
            Row("bf16", PARITY + ["--precision", "bf16"] + ["{fixtures}/" + c for c in SMALL_PARITY_CASES], 60),
        ],
        "bench_model": [
            # Forced rejection keeps 2 of 150 classes: a second a frame here (all 150 take 8 s).
            Row("sed_tiny", BENCH_MODEL + ["--model", "sed_tiny_dev", "--vocab", "ade150", "--cer", "1", "--distinct", "2"] + SMALL_FRAMES, 45),
        ],
        "bench_pipeline": [
            Row("san_tiny", BENCH_PIPELINE + ["--model", "san_tiny_dev", "--size", "160x120", "--vocab", "ade150", "--classes", "6",
                "--frames", "2"], 45),
        ],
        "bench_model_san": [Row("san_tiny", BENCH_MODEL + ["--model", "san_tiny_dev", "--vocab", "ade150"] + SMALL_FRAMES, 30)],
        "extra": [
            Row("bench_streams_san_tiny", BENCH_STREAMS + ["--model", "san_tiny_dev", "--cameras", "1", "2", "--image", "160x120",
                "--classes", "6", "--frames", "3"], 45),
        ],
    },
    # Inductor on this CPU: about 30 s of compiling in the first frame; no CUDA graphs here.
    2: {
        "compile": [
            Row("sed_tiny", BENCH_MODEL + ["--model", "sed_tiny_dev", "--vocab", "ade150", "--cer", "1", "--distinct", "2",
                "--compile", "off", "default"] + SMALL_FRAMES, 140),
        ],
    },
}

OPTIONAL_MODULES = ("torch", "torchvision", "triton", "timm", "open_clip", "cv2", "numpy", "PIL")
#: Without these no row can run.
ENGINE_MODULES = ("torch", "torchvision", "open_clip", "numpy")
STATUSES = ("ok", "failed", "timeout", "stopped", "skipped")
OUTPUT_TAIL_CHARS = 12_000
NOT_RUN = "not run: the check was stopped before this row"


@dataclass
class Result:
    section: str
    name: str
    command: list[str]
    timeout_s: float = 60.0
    note: str = ""
    status: str = "not run"  # ok | failed | timeout | stopped | skipped | not run
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


#: prctl(PR_SET_PDEATHSIG): the kernel signals a row when the process that started it dies.
_PR_SET_PDEATHSIG = 1


def _own_group_dying_with_parent() -> None:
    """In a row's child before exec: a process group of its own (killed whole on a timeout),
    and SIGKILL when this process dies, however it dies."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the signal handlers below still kill the group
        pass


class RowRunner:
    """Runs rows one at a time; a stop signal kills the row in flight (its whole group)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.stopped_by: str | None = None

    def stop(self, signum: int, _frame=None) -> None:
        self.stopped_by = signal.Signals(signum).name
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)

    def run(self, result: Result, timeout_s: float) -> None:
        """Run one row's command; fills status, error, output and the parsed figures."""
        start = time.monotonic()
        self.process = process = subprocess.Popen(result.command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                  preexec_fn=_own_group_dying_with_parent)
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            timed_out = True
        finally:
            self.process = None
        result.seconds = round(time.monotonic() - start, 1)
        result.returncode = process.returncode
        result.stdout, result.stderr = stdout[-OUTPUT_TAIL_CHARS:], stderr[-OUTPUT_TAIL_CHARS:]
        result.parsed = parse_parity(stdout) if PARITY[1] in result.command else parse_tables(stdout)
        if self.stopped_by is not None:
            result.status, result.error = "stopped", f"killed by {self.stopped_by} to this check after {result.seconds:.0f} s"
        elif timed_out:
            result.status, result.error = "timeout", f"stopped after {timeout_s:.0f} s (row or call time limit)"
        elif process.returncode == 0:
            result.status, result.error = "ok", None
        else:
            result.status = "failed"
            result.error = failure_reason(result)


def run_row(result: Result, timeout_s: float) -> None:
    """One row on its own (tests)."""
    RowRunner().run(result, timeout_s)


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


def write_reports(out: Path, report: dict, name: str) -> None:
    """``name``.json and ``name``.md in ``out``, each replaced whole (a reader never sees half a report)."""
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(report, indent=1)), (".md", markdown(report))):
        tmp = out / f".{name}{suffix}.tmp"
        tmp.write_text(text)
        tmp.replace(out / f"{name}{suffix}")


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Device check, call {report.get('call', 1)} ({report['mode']})", "",
             f"- date: {report['started']} .. {report.get('finished') or '(running)'}",
             f"- commit: {env.get('commit', 'unknown')}",
             f"- machine: {env.get('gpu') or 'no GPU'}; {env.get('nvidia_smi', '')}; {env.get('cpu_count')} CPUs; "
             f"{env.get('platform')}; python {env.get('python')}",
             f"- device: {report['device']}; the call's time limit {report['time_limit_s']:.0f} s",
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


def engine_problem(env: dict) -> str | None:
    """Why no row can run here (the engine's modules do not import), or None."""
    broken = [f"{name} ({env['modules'][name]})" for name in ENGINE_MODULES if not str(env.get("modules", {}).get(name, ""))[:1].isdigit()]
    if not broken:
        return None
    return ("cannot import " + "; ".join(broken) + ": carry .device_wheels with the call (scripts/device_check.sh --fetch here first; "
            "README, GPU section)")


def report_name(call: int) -> str:
    return f"device_check_call{call}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--call", type=int, choices=(1, 2), default=1, help="which of the two calls' plans to run")
    parser.add_argument("--out", type=Path, required=True, help="folder for device_check_call<N>.json and .md")
    parser.add_argument("--small", action="store_true", help="tiny models, one parity case, few frames (CPU test)")
    parser.add_argument("--device", default="auto", help="torch device for every check (auto: cuda if available)")
    parser.add_argument("--fixtures", type=Path, default=None,
                        help="parity fixtures (default: .device_wheels/fixtures if shipped, else ../shared/fixtures)")
    parser.add_argument("--time-limit", type=float, default=None, help="the call's total seconds (default: CALL_TIME_LIMITS)")
    parser.add_argument("--only", nargs="+", default=[], help="sections or section/row names to run")
    args = parser.parse_args(argv)

    started = time.monotonic()
    runner = RowRunner()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, runner.stop)
    time_limit = args.time_limit or (SMALL_CALL_TIME_LIMITS if args.small else CALL_TIME_LIMITS)[args.call]
    fixtures = (args.fixtures or next((p for p in (REPO / ".device_wheels" / "fixtures", REPO.parent / "shared" / "fixtures")
                                       if p.is_dir()), REPO.parent / "shared" / "fixtures")).resolve()
    device = args.device
    if device == "auto":
        try:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        except Exception:  # noqa: BLE001 -- reported with the environment
            device = "cpu"
    tables = (SMALL if args.small else FULL)[args.call]
    report = {"mode": "small" if args.small else "full", "call": args.call,
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "finished": None, "device": device,
              "fixtures": str(fixtures), "time_limit_s": time_limit, "sections": list(tables), "environment": {}, "results": []}
    try:
        report["environment"] = environment(device)
    except Exception as exc:  # noqa: BLE001 -- the checks still run
        report["environment_error"] = f"{type(exc).__name__}: {exc}"
    cannot_run = engine_problem(report["environment"])
    results = plan(tables, device, fixtures, args.only)
    report["results"] = [asdict(r) for r in results]
    name = report_name(args.call)
    write_reports(args.out, report, name)

    for index, result in enumerate(results):
        left = time_limit - (time.monotonic() - started)
        if runner.stopped_by is not None:
            result.status, result.error = "skipped", f"the check was stopped by {runner.stopped_by}"
        elif cannot_run:
            result.status, result.error = "skipped", cannot_run
        elif missing := missing_fixtures(result, fixtures):
            result.status, result.error = "skipped", f"fixture cases missing (no case.json): {', '.join(missing)}"
        elif left < 10:
            result.status, result.error = "skipped", f"the call's time limit ({time_limit:.0f} s) reached"
        else:
            timeout_s = min(result.timeout_s, left)
            print(f"[device_check] {result.section}/{result.name} (up to {timeout_s:.0f} s)", file=sys.stderr, flush=True)
            try:
                runner.run(result, timeout_s)
            except Exception as exc:  # noqa: BLE001 -- e.g. the interpreter cannot start
                result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
            print(f"[device_check]   {result.status} in {result.seconds} s{': ' + result.error if result.error else ''}",
                  file=sys.stderr, flush=True)
        report["results"][index] = asdict(result)
        write_reports(args.out, report, name)

    report["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_reports(args.out, report, name)
    counts = {status: sum(r.status == status for r in results) for status in STATUSES}
    print(f"[device_check] call {args.call}: {counts} in {time.monotonic() - started:.0f} s; report: {args.out / (name + '.md')}",
          file=sys.stderr)
    if runner.stopped_by is not None:
        return 128 + signal.Signals[runner.stopped_by].value
    return 0 if counts["ok"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
