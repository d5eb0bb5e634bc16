"""Interop harness: real third-party Tinker-compatible servers against both clients.

    python interop/run.py [--servers tuft,skyrl] [--clients tinker_async,tinker]
                          [--update-expected] [--install-only]

For each server: install it into a venv of its own (reused while its stamp matches),
start it on a free 127.0.0.1 port, run interop/scenario.py once per client against a
fresh instance, stop it (its whole process group, by the PID we started), then print the
table of steps x (server, client) and compare with interop/expected.json. Exits 1 on a
regression against that file, 2 when the harness itself could not run. Standard library
only, so any Python 3.10+ can run it.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
from servers import API_KEY, SERVERS, ServerSpec, find_python  # noqa: E402

WORK = Path(os.environ.get("INTEROP_HOME", REPO / ".interop"))
VENVS = WORK / "venvs"
MODEL_DIR = WORK / "models" / "tiny-qwen3"
EXPECTED = HERE / "expected.json"
CLIENTS = ("tinker_async", "tinker")
CLIENT_PYTHON = "3.11"  # the official SDK 0.38 needs 3.11+
INSTALL_TIMEOUT = 3600.0
STOP_TIMEOUT = 20.0

_running: dict[int, str] = {}  # pid -> name, of every process group we started


def log(msg: str) -> None:
    print(f"[interop {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- processes --------------------------------------------------------------------------

def stop(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process group led by ``pid``, SIGKILL it after ``timeout`` seconds."""
    name = _running.pop(pid, str(pid))
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done == pid and not _group_alive(pid):
                return
            time.sleep(0.2)
        if sig == signal.SIGTERM:
            log(f"{name} (pid {pid}) still up {timeout:.0f}s after SIGTERM: SIGKILL")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_all() -> None:
    """Stop every group still running: SIGTERM to all at once, then one bounded wait each."""
    for pid in list(_running):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            _running.pop(pid, None)
    for pid in list(_running):
        stop(pid)


def _on_signal(signum: int, _frame: Any) -> None:
    stop_all()
    raise SystemExit(128 + signum)


def run_logged(argv: list[str], logfile: Path, timeout: float,
               env: dict[str, str] | None = None) -> int:
    """Run a command to completion with output to ``logfile``; killed after ``timeout``."""
    with logfile.open("ab") as out:
        out.write(("\n$ " + " ".join(argv) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, stdin=subprocess.DEVNULL)
        _running[proc.pid] = argv[0]
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"timed out after {timeout:.0f}s: {' '.join(argv[:4])} ...")
            return 124
        finally:
            stop(proc.pid, timeout=5.0)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- venvs ------------------------------------------------------------------------------

def ensure_venv(name: str, python_version: str, steps: list[list[str]], logdir: Path,
                extra_stamp: str = "") -> Path:
    """The venv ``.interop/venvs/NAME`` built from ``steps``; reused while its stamp matches."""
    venv = VENVS / name
    stamp_file = venv / ".interop-stamp"
    stamp = json.dumps({"python": python_version, "install": steps, "extra": extra_stamp},
                       sort_keys=True)
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        log(f"venv {name}: up to date")
        return venv
    python = find_python(python_version)
    if python is None:
        raise RuntimeError(f"no Python {python_version} found (set INTEROP_PYTHON"
                           f"{python_version.replace('.', '_')} to one)")
    if venv.exists():
        shutil.rmtree(venv)
    log(f"venv {name}: building with {python} (log {logdir / f'install-{name}.log'})")
    started = time.monotonic()
    logfile = logdir / f"install-{name}.log"
    if run_logged([python, "-m", "venv", str(venv)], logfile, 300) != 0:
        raise RuntimeError(f"venv {name}: python -m venv failed:\n{tail(logfile)}")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
           "--no-input", "--progress-bar", "off"]
    for step in steps:
        if run_logged(pip + step, logfile, INSTALL_TIMEOUT) != 0:
            raise RuntimeError(f"venv {name}: pip install {' '.join(step)} failed:\n"
                               f"{tail(logfile)}")
    stamp_file.write_text(stamp)
    log(f"venv {name}: built in {time.monotonic() - started:.0f}s")
    return venv


def ensure_client_venv(logdir: Path) -> Path:
    """tinker_async (editable, this checkout) and the official SDK 0.38, side by side."""
    # tinker_async is installed editable, so only a change of its dependencies needs a
    # rebuild: the stamp carries pyproject.toml's hash.
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    steps = [["-e", str(REPO), "tinker==0.38.0", "transformers"]]
    return ensure_venv("client", CLIENT_PYTHON, steps, logdir, extra_stamp=digest)


def ensure_model(venv: Path, logdir: Path) -> Path:
    """The tiny model, made by interop/make_model.py in a venv that has torch."""
    sys.path.insert(0, str(HERE))
    from make_model import MODEL_VERSION

    marker = MODEL_DIR / "interop_model.json"
    if marker.exists() and json.loads(marker.read_text()).get("version") == MODEL_VERSION:
        return MODEL_DIR
    if MODEL_DIR.exists():
        shutil.rmtree(MODEL_DIR)
    logfile = logdir / "make-model.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    rc = run_logged([str(venv / "bin" / "python"), str(HERE / "make_model.py"), str(MODEL_DIR)],
                    logfile, 600, env=env)
    if rc != 0 or not marker.exists():
        raise RuntimeError(f"making the tiny model failed:\n{tail(logfile)}")
    log(f"tiny model: {MODEL_DIR}")
    return MODEL_DIR


# -- one server, one client -------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done == pid:
            return False
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1.0)
    return False


def run_pair(spec: ServerSpec, venv: Path, client_venv: Path, client: str, model: Path,
             logdir: Path) -> list[dict[str, Any]]:
    """Start ``spec`` fresh, run the scenario with ``client``, stop the server."""
    work = logdir / f"{spec.name}-{client}"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    launch = spec.launch(venv, model, port, work)
    env = {**os.environ, **launch.env}
    server_log = work / "server.log"
    with server_log.open("wb") as out:
        proc = subprocess.Popen(launch.argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=work, start_new_session=True, stdin=subprocess.DEVNULL)
    _running[proc.pid] = spec.name
    records: list[dict[str, Any]] = []
    try:
        started = time.monotonic()
        if not wait_healthy(f"http://127.0.0.1:{port}{launch.health_path}", proc.pid,
                            spec.start_timeout):
            log(f"{spec.name}: not healthy within {spec.start_timeout:.0f}s; log tail:\n"
                f"{tail(server_log)}")
            return [{"step": "server start", "status": "error", "error": "ServerDidNotStart",
                     "message": f"see {server_log}", "seconds": 0.0}]
        log(f"{spec.name} up on port {port} (pid {proc.pid}) in "
            f"{time.monotonic() - started:.0f}s; scenario with {client}")
        records = run_scenario(client_venv, client, f"http://127.0.0.1:{port}", model,
                               spec, work)
    finally:
        stop(proc.pid)
    return records


def run_scenario(client_venv: Path, client: str, base_url: str, model: Path,
                 spec: ServerSpec, work: Path) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINKER_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    argv = [str(client_venv / "bin" / "python"), str(HERE / "scenario.py"), "--client", client,
            "--base-url", base_url, "--api-key", API_KEY, "--base-model", str(model),
            "--timeout", str(spec.call_timeout)]
    out_path = work / "scenario.log"
    started = time.monotonic()
    rc = run_logged(argv, out_path, spec.scenario_timeout, env=env)
    records = [json.loads(line[len("INTEROP_STEP "):])
               for line in out_path.read_text(errors="replace").splitlines()
               if line.startswith("INTEROP_STEP ")]
    if rc != 0:
        records.append({"step": "scenario process", "status": "error",
                        "error": "Timeout" if rc == 124 else f"Exit{rc}",
                        "message": f"see {out_path}", "seconds": 0.0})
    passed = sum(r["status"] == "ok" for r in records)
    log(f"{spec.name} / {client}: {passed}/{len(records)} ok in "
        f"{time.monotonic() - started:.0f}s")
    return records


# -- main -------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    p.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated")
    p.add_argument("--update-expected", action="store_true",
                   help="write this run's outcomes to interop/expected.json")
    p.add_argument("--install-only", action="store_true")
    a = p.parse_args(argv)
    servers = [SERVERS[n] for n in a.servers.split(",") if n]
    clients = [c for c in a.clients.split(",") if c]
    unknown = [c for c in clients if c not in CLIENTS]
    if unknown:
        p.error(f"unknown client(s) {unknown}; choose from {list(CLIENTS)}")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    atexit.register(stop_all)
    VENVS.mkdir(parents=True, exist_ok=True)
    logdir = Path(tempfile.mkdtemp(prefix="interop-"))
    log(f"logs in {logdir}")

    t0 = time.monotonic()
    try:
        client_venv = ensure_client_venv(logdir)
        venvs = {s.name: ensure_venv(s.name, s.python, s.install, logdir) for s in servers}
        model = ensure_model(venvs[servers[0].name], logdir) if servers else MODEL_DIR
    except RuntimeError as exc:
        log(f"install failed: {exc}")
        return 2
    log(f"installs ready in {time.monotonic() - t0:.0f}s")
    if a.install_only:
        return 0

    t1 = time.monotonic()
    results: report.Results = {}
    for spec in servers:
        results[spec.name] = {}
        for client in clients:
            results[spec.name][client] = run_pair(spec, venvs[spec.name], client_venv, client,
                                                  model, logdir)
    log(f"scenarios done in {time.monotonic() - t1:.0f}s")

    text = report.table(results, clients)
    print("\n" + text + "\n", flush=True)
    current = report.outcomes(results)
    (WORK / "last-results.json").write_text(json.dumps(results, indent=2))
    (WORK / "last-table.md").write_text(text + "\n")
    expected = report.load_expected(EXPECTED)
    if a.update_expected:
        report.save_expected(EXPECTED, current, expected)
        log(f"wrote {EXPECTED}")
        return 0
    regressions, notes = report.compare(current, expected)
    for n in notes:
        log(f"note: {n}")
    for r in regressions:
        log(f"REGRESSION: {r}")
    log(f"logs in {logdir}")
    # The plain closing line CI runners read: steps as expected vs regressions.
    checked = sum(len(steps) for by_client in current.values() for steps in by_client.values())
    passed = max(0, checked - len(regressions))
    print(f"interop: {passed} passed, {len(regressions)} failed", flush=True)
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
