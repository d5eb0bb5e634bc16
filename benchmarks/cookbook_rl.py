"""tinker-cookbook's RL loop on the embedded server: steps/s, official SDK vs tinker_async.

``python -m benchmarks.cookbook_rl`` from ``.venv-compat`` (``make compat`` builds it: the
cookbook, torch and the official SDK). Options: ``--quick`` (a smoke run), ``--steps N``,
``--groups G``, ``--group-size N``, ``--max-tokens T``, ``--rounds R``, ``--mode
sync|async|stream``, ``--json PATH``.

The workload is ``tinker_cookbook.rl.train.main`` itself, unchanged, on the compat suite's
toy task (``compat/_toy_env.py``: reward for a letter; ``role_colon`` renderer on the
server's byte tokenizer): each step samples ``groups x group_size`` rollouts of up to
``max_tokens`` tokens, scores them, trains one ``forward_backward`` + ``optim_step`` and
saves weights for the next sampler. It runs against two servers, each in a process of its
own: the zero-compute server of ``benchmarks/run.py`` (``run.Server``; every call answers at
once, so the client side, library and cookbook, is what is measured) and the embedded
server with the real numpy model (``python -m tinker_async.local``; the server's compute
then dominates). Each (server, library) pair runs in a fresh interpreter through the compat
harness (``compat._harness.run_child``), interleaved with the order reversed each round.

Per run: steps/s is 1 / the median of the cookbook's own per-step ``time/total`` metric,
step 0 left out (warm-up); client CPU per step is the child's ``time.process_time()`` (all
its threads, the cookbook's own work included) between the loop's logging of step 0's
metrics and of the last step's, divided by the steps between; server CPU per step is the server
process's CPU over the whole run (set-up and final checkpoint included) divided by the
steps. Read the ratios: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from compat._harness import ChildFailed, child_env, run_child

from .run import ROOT, Server, _fmt, _ratio, _table, log, machine

FLAVORS = ("official", "tinker_async")
LABELS = {"official": "official tinker 0.38", "tinker_async": "tinker_async (install_as_tinker)"}
MODEL_SERVER_KEY = "tml-bench-cookbook-0123456789"


class ModelServer(Server):
    """The embedded server with the real numpy model, ``python -m tinker_async.local``, in a
    process of its own; ``cpu_s()`` and the context manager come from ``run.Server``."""

    def __init__(self) -> None:  # not Server.__init__: another command, no JSON commands
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tinker_async.local", "--port", "0", "--api-key",
             MODEL_SERVER_KEY, "--session-timeout", "900"],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        found = re.search(r"listening on (http://\S+)", line)
        if found is None:
            self.proc.kill()
            raise RuntimeError(f"the model server did not start: {line!r}")
        self.url = found.group(1)
        self.api_key = MODEL_SERVER_KEY
        self.pid = self.proc.pid
        self._lock = threading.Lock()

    def command(self, **cmd: Any) -> dict[str, Any]:
        raise NotImplementedError("the model server takes no commands")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # it stops cleanly on SIGINT
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def one_run(server: Server, flavor: str, args: dict[str, Any], scratch: Path,
            timeout: float) -> dict[str, Any]:
    """The cookbook RL loop once, in a fresh interpreter; its per-step timings."""
    workdir = Path(tempfile.mkdtemp(prefix=f"rl-{flavor}-", dir=scratch))
    env = child_env(server.url, server.api_key, workdir)
    cpu_before = server.cpu_s()
    try:
        facts = run_child(flavor, "rl", workdir / "run", args, env, timeout,
                          workdir / "child.log")
    except ChildFailed as exc:
        return {"error": str(exc)[-800:]}
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    server_cpu = server.cpu_s() - cpu_before
    rows = [json.loads(line) for line in
            (workdir / "run" / "log" / "metrics.jsonl").read_text().splitlines() if line]
    step_times = [r["time/total"] for r in rows if "time/total" in r and "step" in r]
    steps = len(step_times)
    measured = step_times[1:] or step_times
    # Client CPU per step in the steady state: between the loop's logging of step 0 and of
    # the last step (process_time of the whole child, the cookbook's own work included).
    marks = [m for m in facts["step_marks"] if m[0] is not None and m[0] < steps]
    if len(marks) >= 2:
        client_cpu = (marks[-1][2] - marks[0][2]) / (len(marks) - 1)
    else:
        client_cpu = facts["main_cpu_s"] / steps
    return {
        "steps": steps,
        "step_times": step_times,
        "median_step_s": statistics.median(measured),
        "main_wall_s": facts["main_wall_s"],
        "main_cpu_s": facts["main_cpu_s"],
        "client_cpu_per_step_s": client_cpu,
        "server_cpu_per_step_s": server_cpu / steps,
        "reward": [r.get("env/all/reward/total") for r in rows if "env/all/reward/total" in r],
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"] if runs else "not run"}
    pooled = [t for r in ok for t in (r["step_times"][1:] or r["step_times"])]
    median_step = statistics.median(pooled)
    return {
        "steps_per_s": 1.0 / median_step if median_step > 0 else float("nan"),
        "median_step_s": median_step,
        "client_cpu_per_step_s": statistics.median(r["client_cpu_per_step_s"] for r in ok),
        "server_cpu_per_step_s": statistics.median(r["server_cpu_per_step_s"] for r in ok),
        "runs": len(ok),
        "errors": len(runs) - len(ok),
        "first_error": next((r["error"] for r in runs if "error" in r), None),
    }


def render(results: dict[str, Any], cfg: dict[str, Any]) -> str:
    rows = []
    for server_mode, per in results.items():
        off = per.get("official", {})
        for flavor in FLAVORS:
            r = per.get(flavor, {})
            if "steps_per_s" not in r:
                rows.append([server_mode, LABELS[flavor], "error: " + str(r.get("error"))[-70:],
                             "", "", "", ""])
                continue
            ratio = _ratio(r["steps_per_s"], off.get("steps_per_s"))
            rows.append([
                server_mode, LABELS[flavor], _fmt(r["steps_per_s"], ".2f"),
                _fmt(1000 * r["median_step_s"], ".0f"),
                _fmt(1000 * r["client_cpu_per_step_s"], ".0f"),
                _fmt(1000 * r["server_cpu_per_step_s"], ".0f"),
                _fmt(ratio, ".2f", "x") + (f" ({r['errors']} failed runs)" if r["errors"] else ""),
            ])
    return (
        f"Cookbook RL loop (rl.train.main, {cfg['mode']} mode): {cfg['groups']} groups x "
        f"{cfg['group_size']} rollouts x up to {cfg['max_tokens']} tokens per step, "
        f"{cfg['steps']} steps per run (step 0 not counted), {cfg['rounds']} round(s)\n\n"
        + _table(["server", "library", "steps/s", "median step ms", "client CPU ms/step",
                  "server CPU ms/step", "steps/s vs official"], rows)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cookbook_rl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--steps", type=int, help="RL steps per run (default 6)")
    parser.add_argument("--groups", type=int, help="groups per step (default 8)")
    parser.add_argument("--group-size", type=int, help="rollouts per group (default 8)")
    parser.add_argument("--max-tokens", type=int, help="tokens per rollout (default 16)")
    parser.add_argument("--rounds", type=int, help="runs per (server, library) (default 2)")
    parser.add_argument("--mode", default="sync", choices=["sync", "async", "stream"])
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args(argv)
    quick = args.quick
    cfg = {
        "steps": args.steps or (3 if quick else 6),
        "groups": args.groups or (2 if quick else 8),
        "group_size": args.group_size or (4 if quick else 8),
        "max_tokens": args.max_tokens or (8 if quick else 16),
        "rounds": args.rounds or (1 if quick else 2),
        "mode": args.mode,
    }
    child_args = {
        "mode": cfg["mode"], "kl_penalty": False, "batches": cfg["steps"],
        "groups_per_batch": cfg["groups"], "group_size": cfg["group_size"],
        "max_tokens": cfg["max_tokens"], "save_every": 0, "num_groups_to_log": 0,
        "rollout_json_export": False, "step_marks": True,
    }
    timeout = 600.0
    info = machine()
    log(f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}, "
        f"load {info['load_avg']}")
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="cookbook-rl-") as scratch_dir:
        scratch = Path(scratch_dir)
        for server_mode, make_server in (("zero-compute", Server), ("numpy model", ModelServer)):
            raw[server_mode] = {flavor: [] for flavor in FLAVORS}
            with make_server() as server:
                for rnd in range(cfg["rounds"]):
                    order = list(FLAVORS) if rnd % 2 == 0 else list(reversed(FLAVORS))
                    for flavor in order:
                        result = one_run(server, flavor, child_args, scratch, timeout)
                        raw[server_mode][flavor].append(result)
                        if "error" in result:
                            log(f"  {server_mode} {flavor}: {result['error'][-300:]}")
                        else:
                            log(f"  {server_mode} {flavor}: median step "
                                f"{1000 * result['median_step_s']:.0f} ms over "
                                f"{result['steps']} steps, client CPU "
                                f"{1000 * result['client_cpu_per_step_s']:.0f} ms/step")
            results[server_mode] = {f: summarize(runs) for f, runs in raw[server_mode].items()}
    elapsed = time.monotonic() - started
    print(f"Machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}; "
          f"tinker {info['versions']['tinker']}; {info['date']}; load average at start "
          f"{info['load_avg'][0]:.2f}; took {elapsed:.0f} s.\n")
    print(render(results, cfg))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"machine": info, "config": cfg, "results": results, "raw": raw}, indent=1,
            default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
