"""The benchmark suite: ``python -m benchmarks.run`` (``--quick`` for a smoke run).

Runs every figure of issue 5 against the embedded zero-compute server in a process of its
own, each contender in a fresh subprocess, and prints the tables and the targets with
PASS/MISS. Every figure is measured in this run, side by side, because shared machines
are noisy: read the ratios, not the absolute numbers. See ``benchmarks/README.md``.

Options: ``--quick`` (tiny sizes, about a minute, for a smoke test), ``--rounds N`` (repeats of
the sampling figure, median taken; default 2), ``--only FIGS`` (e.g. ``--only 1,2``),
``--json PATH`` (raw results), ``--markdown PATH`` (the tables as Markdown).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._contenders import ALL_CONTENDERS, LABELS

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Config:
    import_repeat: int
    #: concurrency -> (samples, time cap in seconds for issuing them)
    levels: dict[int, tuple[int, float]]
    rounds: int
    warmup: int
    fb_datums: int
    fb_tokens: int
    fb_repeat: int
    count_concurrency: int
    count_samples: int
    count_delay_s: float
    inflight_n: int
    inflight_delay_s: float
    inflight_window_s: float
    idle_s: float
    worker_timeout_s: float = 180.0


FULL = Config(
    import_repeat=5,
    levels={1: (300, 4.0), 64: (1500, 6.0), 512: (2048, 8.0), 2048: (4096, 12.0)},
    rounds=2, warmup=20,
    fb_datums=1024, fb_tokens=1024, fb_repeat=3,
    count_concurrency=64, count_samples=512, count_delay_s=0.2,
    inflight_n=2048, inflight_delay_s=5.5, inflight_window_s=4.0,
    idle_s=8.0,
)
QUICK = Config(
    import_repeat=1,
    levels={1: (20, 2.0), 16: (80, 3.0)},
    rounds=1, warmup=4,
    fb_datums=8, fb_tokens=32, fb_repeat=1,
    count_concurrency=8, count_samples=32, count_delay_s=0.05,
    inflight_n=32, inflight_delay_s=1.5, inflight_window_s=0.8,
    idle_s=1.0, worker_timeout_s=60.0,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ processes


class Server:
    """``benchmarks/_server.py`` in its own process; JSON commands over its stdin."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._server", *args], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the benchmark server did not start (args {args})")
        info = json.loads(line)
        self.url: str = info["url"]
        self.api_key: str = info["api_key"]
        self.pid: int = info["pid"]
        self._lock = threading.Lock()

    def command(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            reply: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return reply

    def cpu_s(self) -> float:
        """The server process's CPU seconds so far (user + system)."""
        with open(f"/proc/{self.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(15)
            except Exception:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_worker(spec: dict[str, Any], timeout: float,
               on_probe: Callable[[dict[str, Any]], str | None] | None = None,
               ) -> dict[str, Any]:
    """Run one ``benchmarks._worker`` task in a fresh interpreter; its RESULT dict.

    ``on_probe`` sees each PROBE the worker prints; a string it returns is written back
    to the worker's stdin (the worker waits for it). On failure the dict has an
    ``"error"`` key instead (the tail of the worker's stderr).
    """
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._worker", json.dumps(spec)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        result: dict[str, Any] | None = None
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                kind, _, payload = line.partition(" ")
                if kind == "PROBE" and on_probe is not None:
                    reply = on_probe(json.loads(payload))
                    if reply is not None:
                        assert proc.stdin is not None
                        proc.stdin.write(reply + "\n")
                        proc.stdin.flush()
                elif kind == "RESULT":
                    result = json.loads(payload)
            proc.wait()
        finally:
            timer.cancel()
        if result is None:
            err.seek(0)
            tail = err.read()[-1500:]
            what = "timed out" if proc.returncode and proc.returncode < 0 else "failed"
            return {"error": f"worker {what} (rc {proc.returncode}): {tail}"}
        return result


# ------------------------------------------------------------------------------ figures


def fig_import(cfg: Config) -> dict[str, Any]:
    """(1) import wall time and RSS after import, fresh interpreters, median."""
    out: dict[str, Any] = {}
    for name in ("floor", "ours", "official"):
        run_worker({"task": "import", "contender": name}, 60)  # compile caches, untimed
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in ("floor", "ours", "official")}
    for _ in range(cfg.import_repeat):
        for name in runs:  # interleaved, so drift hits every contender alike
            runs[name].append(run_worker({"task": "import", "contender": name}, 60))
    for name, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            out[name] = {"error": results[0].get("error")}
            continue
        out[name] = {
            "wall_s": statistics.median(r["wall_s"] for r in ok),
            "rss_kib": statistics.median(r["rss_kib"] for r in ok),
            "rss_delta_kib": statistics.median(r["rss_delta_kib"] for r in ok),
            "threads": max(r["threads"] for r in ok),
            "modules": statistics.median(r["modules"] for r in ok),
            "walls": [r["wall_s"] for r in ok],
        }
    return out


def _sample_once(server: Server, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    marks: dict[str, float] = {}

    def probe(p: dict[str, Any]) -> str | None:
        marks[p["phase"]] = server.cpu_s()
        return None

    result = run_worker(spec, timeout, probe)
    if "error" not in result and "start" in marks and "end" in marks and result["n"]:
        server_cpu = marks["end"] - marks["start"]
        result["server_cpu_per_req_ms"] = 1000 * server_cpu / result["n"]
        result["server_util"] = server_cpu / result["wall_s"] if result["wall_s"] else 0.0
    return result


def _median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"] if runs else "not run"}
    out: dict[str, Any] = {}
    for key in ("throughput", "cpu_per_req_ms", "p50_ms", "p99_ms", "mean_ms", "rss_peak_kib",
                "server_cpu_per_req_ms", "server_util", "wall_s"):
        values = [r[key] for r in ok if key in r]
        if values:
            out[key] = statistics.median(values)
    for key in ("os_threads_peak", "py_threads_peak", "driver_threads"):
        out[key] = max(r[key] for r in ok)
    out["n"] = sum(r["n"] for r in ok)
    out["errors"] = sum(r["errors"] for r in ok) + (len(runs) - len(ok))
    firsts = [r.get("first_error") for r in ok if r.get("first_error")]
    firsts += [r["error"][-300:] for r in runs if "error" in r]
    out["first_error"] = firsts[0] if firsts else None
    out["runs"] = [{k: r.get(k) for k in ("throughput", "cpu_per_req_ms", "p50_ms", "n")}
                   for r in ok]
    return out


def fig_sampling(cfg: Config, server: Server, levels: dict[int, tuple[int, float]] | None = None,
                 contenders: tuple[str, ...] = ALL_CONTENDERS) -> dict[int, dict[str, Any]]:
    """(2) throughput, client CPU per sample, latency, threads, RSS per concurrency."""
    out: dict[int, dict[str, Any]] = {}
    for concurrency, (count, cap) in (levels or cfg.levels).items():
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
        for rnd in range(cfg.rounds):
            order = list(contenders)
            if rnd % 2:  # alternate the order between rounds
                order.reverse()
            for name in order:
                spec = {"task": "sample", "contender": name, "url": server.url,
                        "api_key": server.api_key, "concurrency": concurrency, "count": count,
                        "warmup": cfg.warmup, "deadline_s": cap}
                result = _sample_once(server, spec, cfg.worker_timeout_s)
                runs[name].append(result)
                if "error" in result:
                    log(f"  c={concurrency} {name}: {result['error'][-300:]}")
                else:
                    log(f"  c={concurrency} {name}: {result['throughput']:.0f}/s, "
                        f"{result['cpu_per_req_ms']:.2f} ms CPU/sample, "
                        f"p50 {result['p50_ms']:.1f} ms, n={result['n']}")
        out[concurrency] = {name: _median_runs(r) for name, r in runs.items()}
    return out


def fig_training(cfg: Config, server: Server) -> dict[str, Any]:
    """(3) forward_backward of datums x tokens: encode alone, and end to end."""
    out: dict[str, Any] = {"encode": {}, "fb": {}}
    for name in ("ours", "ours_np", "official"):
        out["encode"][name] = run_worker(
            {"task": "encode", "contender": name, "datums": cfg.fb_datums,
             "tokens": cfg.fb_tokens, "repeat": cfg.fb_repeat}, cfg.worker_timeout_s)
        log(f"  encode {name}: {out['encode'][name]}")
    for name in ("ours", "official"):
        out["fb"][name] = run_worker(
            {"task": "fb", "contender": name, "url": server.url, "api_key": server.api_key,
             "datums": cfg.fb_datums, "tokens": cfg.fb_tokens, "repeat": cfg.fb_repeat},
            cfg.worker_timeout_s)
        log(f"  forward_backward {name}: {out['fb'][name]}")
    return out


def fig_requests(cfg: Config) -> dict[str, Any]:
    """(4) HTTP requests per resolved future, with and without the batch long-poll."""
    out: dict[str, Any] = {}
    for mode, args in (("long_poll", ()), ("per_request", ("--no-long-poll",))):
        out[mode] = {}
        with Server("--record", "--sample-delay", str(cfg.count_delay_s), *args) as server:
            for name in ("floor", "ours", "ours_plain", "ours_sync", "official"):
                spec = {"task": "sample", "contender": name, "url": server.url,
                        "api_key": server.api_key, "concurrency": cfg.count_concurrency,
                        "count": cfg.count_samples, "warmup": cfg.warmup, "deadline_s": 60}
                result = run_worker(spec, cfg.worker_timeout_s)
                if "error" in result:
                    out[mode][name] = {"error": result["error"]}
                    continue
                # Requests that arrived during the measured phase (by arrival time).
                counts = server.command(cmd="counts", since=result["t_start"],
                                        until=result["t_end"])["counts"]
                server.command(cmd="clear")
                n = result["n"]
                polls = sum(v for k, v in counts.items() if "/retrieve_future" in k)
                out[mode][name] = {
                    "n": n, "counts": counts,
                    "polls_per_future": polls / n if n else float("nan"),
                    "requests_per_future": sum(counts.values()) / n if n else float("nan"),
                }
                log(f"  {mode} {name}: {out[mode][name]}")
    return out


def fig_inflight(cfg: Config) -> dict[str, Any]:
    """(5) RSS per in-flight sample, with the server holding every sample."""
    out: dict[str, Any] = {}
    with Server() as server:
        for name in ("floor", "ours", "ours_sync", "official"):

            def probe(p: dict[str, Any], server: Server = server) -> str:
                if p["phase"] == "arm":  # warm-up done: hold every sample from now on
                    server.command(cmd="sample_delay", seconds=cfg.inflight_delay_s)
                    return "go"
                pending = server.command(cmd="pending")["pending"]
                server.command(cmd="sample_delay", seconds=0)
                return str(pending)

            spec = {"task": "inflight", "contender": name, "url": server.url,
                    "api_key": server.api_key, "count": cfg.inflight_n,
                    "window_s": cfg.inflight_window_s}
            result = run_worker(spec, cfg.worker_timeout_s, probe)
            server.command(cmd="sample_delay", seconds=0)
            out[name] = result
            log(f"  in flight {name}: {result}")
            # Let the samples it left behind finish before the next contender counts.
            deadline = time.monotonic() + cfg.inflight_delay_s + 5
            while server.command(cmd="pending")["pending"] and time.monotonic() < deadline:
                time.sleep(0.2)
    return out


def fig_idle(cfg: Config, server: Server) -> dict[str, Any]:
    """(6) CPU of a client with a live session and nothing to do (all at once)."""
    out: dict[str, Any] = {}
    names = ("floor", "ours", "ours_plain", "ours_sync", "official")

    def run(name: str) -> None:
        out[name] = run_worker({"task": "idle", "contender": name, "url": server.url,
                                "api_key": server.api_key, "seconds": cfg.idle_s},
                               cfg.worker_timeout_s)

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in names:
        log(f"  idle {name}: {out[name]}")
    return out


# ------------------------------------------------------------------------------ report


def _fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:{spec}}{suffix}"


def _ratio(a: Any, b: Any) -> float | None:
    try:
        if a is None or b is None or b == 0:
            return None
        return float(a) / float(b)
    except (TypeError, ValueError):
        return None


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                     + " |")
    return "\n".join(lines)


@dataclass
class Target:
    name: str
    measured: str
    ok: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return "n/a" if self.ok is None else ("PASS" if self.ok else "MISS")


@dataclass
class Report:
    results: dict[str, Any]
    sections: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def add(self, title: str, body: str) -> None:
        self.sections.append(f"### {title}\n\n{body}\n")

    def target(self, name: str, measured: str, ok: bool | None) -> None:
        self.targets.append(Target(name, measured, ok))


def build_report(results: dict[str, Any]) -> Report:
    rep = Report(results)
    imp = results.get("import")
    if imp:
        rows = [[LABELS.get(n, n) if n != "floor" else "aiohttp (floor)",
                 _fmt(r.get("wall_s", None) and 1000 * r["wall_s"], ".0f", " ms"),
                 _fmt(r.get("rss_kib", None) and r["rss_kib"] / 1024, ".1f", " MiB"),
                 _fmt(r.get("rss_delta_kib", None) and r["rss_delta_kib"] / 1024, ".1f", " MiB"),
                 str(r.get("threads", "n/a")), _fmt(r.get("modules"), ".0f")]
                for n, r in imp.items()]
        rep.add("1. import (fresh interpreter, median)", _table(
            ["library", "import wall", "RSS after", "RSS added", "OS threads", "modules"], rows))
        ours, off = imp.get("ours", {}), imp.get("official", {})
        if "wall_s" in ours:
            rep.target("import <= 150 ms", _fmt(1000 * ours["wall_s"], ".0f", " ms"),
                       ours["wall_s"] <= 0.150)
        r = _ratio(ours.get("wall_s"), off.get("wall_s"))
        rep.target("import <= 1/4 of official", _fmt(r, ".2f", "x official"),
                   None if r is None else r <= 0.25)

    samp = results.get("sampling")
    if samp:
        rows = []
        for c, per in samp.items():
            for name in ALL_CONTENDERS:
                r = per.get(name, {})
                if "error" in r and "throughput" not in r:
                    rows.append([str(c), LABELS[name], "error: " + str(r["error"])[-60:]]
                                + [""] * 7)
                    continue
                threads = str(r.get("os_threads_peak", "n/a"))
                if r.get("driver_threads"):
                    threads += f" ({r['driver_threads']} driver)"
                errs = r.get("errors", 0)
                rows.append([
                    str(c), LABELS[name], _fmt(r.get("throughput"), ".0f"),
                    _fmt(r.get("cpu_per_req_ms"), ".3f"), _fmt(r.get("p50_ms"), ".1f"),
                    _fmt(r.get("p99_ms"), ".1f"), threads,
                    _fmt(r.get("rss_peak_kib", 0) / 1024, ".0f"),
                    _fmt(r.get("server_cpu_per_req_ms"), ".2f")
                    + f" ({_fmt(100 * r.get('server_util', float('nan')), '.0f')}%)",
                    f"{r.get('n', 0)}" + (f" ({errs} err)" if errs else ""),
                ])
        notes = []
        for c, per in samp.items():
            floor, off = per.get("floor", {}), per.get("official", {})
            r = _ratio(floor.get("throughput"), off.get("throughput"))
            notes.append(f"c={c}: {_fmt(r, '.1f')}x")
        rep.add("2. sampling: zero-compute server with the batch long-poll on (its default); "
                "median of rounds",
                _table(["c", "contender", "samples/s", "client CPU ms/sample", "p50 ms",
                        "p99 ms", "peak OS threads", "peak RSS MiB",
                        "server CPU ms/sample (util)", "samples"], rows)
                + "\n\nClient CPU counts every thread of the client process; p50/p99 are per "
                "sample, call to result. Server CPU is the server process over the same window "
                "(util = share of one core). Throughput ceiling on this machine, the raw floor "
                "over the official SDK: " + ", ".join(notes) + ".")
        for c, per in samp.items():
            ours, floor, off, sync = (per.get(k, {}) for k in
                                      ("ours", "floor", "official", "ours_sync"))
            r = _ratio(ours.get("cpu_per_req_ms"), floor.get("cpu_per_req_ms"))
            rep.target(f"c={c}: client CPU/sample <= 1.5x floor", _fmt(r, ".2f", "x"),
                       None if r is None else r <= 1.5)
            r = _ratio(ours.get("cpu_per_req_ms"), off.get("cpu_per_req_ms"))
            rep.target(f"c={c}: client CPU/sample <= 1/5 official", _fmt(r, ".3f", "x"),
                       None if r is None else r <= 0.2)
            if c >= 64:
                r = _ratio(ours.get("throughput"), off.get("throughput"))
                rep.target(f"c={c}: throughput >= 5x official", _fmt(r, ".2f", "x"),
                           None if r is None else r >= 5)
            rt = _ratio(sync.get("throughput"), ours.get("throughput"))
            rc = _ratio(sync.get("cpu_per_req_ms"), ours.get("cpu_per_req_ms"))
            ok = None if rt is None or rc is None else (rt >= 0.5 and rc <= 2.0)
            rep.target(f"c={c}: sync forms from threads within 2x of async",
                       f"throughput {_fmt(rt, '.2f', 'x')}, CPU/sample {_fmt(rc, '.2f', 'x')}",
                       ok)
        if 1 in samp:
            r = _ratio(samp[1].get("ours", {}).get("p50_ms"),
                       samp[1].get("floor", {}).get("p50_ms"))
            rep.target("c=1: p50 latency <= 1.5x floor", _fmt(r, ".2f", "x"),
                       None if r is None else r <= 1.5)
        peaks = [per.get("ours", {}).get("os_threads_peak") for per in samp.values()]
        counts = [int(t) for t in peaks if t is not None]
        if counts:
            rep.target("constant, small thread count (async)",
                       f"{min(counts)}..{max(counts)} OS threads over c="
                       + ",".join(str(c) for c in samp),
                       max(counts) <= 4 and max(counts) - min(counts) <= 1)
        top = max(samp)
        r = _ratio(samp[top].get("ours", {}).get("rss_peak_kib"),
                   samp[top].get("official", {}).get("rss_peak_kib"))
        rep.target(f"c={top}: peak RSS <= 1/2 official", _fmt(r, ".2f", "x"),
                   None if r is None else r <= 0.5)

    spr = results.get("sampling_per_request")
    if spr:
        rows = []
        for c, per in spr.items():
            for name, r in per.items():
                rows.append([str(c), LABELS[name], _fmt(r.get("throughput"), ".0f"),
                             _fmt(r.get("cpu_per_req_ms"), ".3f"), _fmt(r.get("p50_ms"), ".2f"),
                             _fmt(r.get("p99_ms"), ".2f"), str(r.get("n", 0))])
        ours, floor = spr[min(spr)].get("ours", {}), spr[min(spr)].get("floor", {})
        note = (f"\n\ntinker_async / floor here: client CPU "
                f"{_fmt(_ratio(ours.get('cpu_per_req_ms'), floor.get('cpu_per_req_ms')), '.2f')}x, "
                f"p50 {_fmt(_ratio(ours.get('p50_ms'), floor.get('p50_ms')), '.2f')}x "
                "(informational: the targets are judged on the default server above)")
        rep.add("2b. c=1 against a server without the batch long-poll "
                "(sample_use_retrieve_futures=false)",
                _table(["c", "contender", "samples/s", "client CPU ms/sample", "p50 ms",
                        "p99 ms", "samples"], rows) + note)

    tr = results.get("training")
    if tr:
        enc, fb = tr["encode"], tr["fb"]
        rows = []
        for name in ("ours", "ours_np", "official"):
            if name not in enc and name not in fb:
                continue
            e, f = enc.get(name, {}), fb.get(name, {})
            rows.append([LABELS[name],
                         _fmt(e.get("build_s", None) and 1000 * e["build_s"], ".0f"),
                         _fmt(e.get("wall_s", None) and 1000 * e["wall_s"], ".0f"),
                         _fmt(e.get("bytes", None) and e["bytes"] / 1e6, ".2f"),
                         _fmt(f.get("accepted_s", None) and 1000 * f["accepted_s"], ".1f"),
                         _fmt(f.get("wall_s", None) and 1000 * f["wall_s"], ".0f"),
                         _fmt(f.get("cpu_s", None) and 1000 * f["cpu_s"], ".0f"),
                         str(e.get("error", "") or f.get("error", ""))[-80:]])
        cfg_note = results.get("config", {})
        rep.add(f"3. forward_backward, {cfg_note.get('fb_datums')} datums x "
                f"{cfg_note.get('fb_tokens')} tokens (median)",
                _table(["client", "build datums ms", "encode ms", "encoded MB", "call returns ms",
                        "submit+result ms", "client CPU ms (submit+result)", "error"], rows)
                + "\n\nBuild: the datums made with each library's types from token lists "
                "and numpy arrays (`ModelInput.from_ints`, `TensorData.from_numpy`); the "
                "official types validate and copy every token here. Encode: those objects "
                "to request bytes. The numpy-tokens "
                "row gives the text chunks int32 arrays, which only tinker_async accepts "
                "(informational; the target is judged on token lists). Then the whole call "
                "against the server: `tc.forward_backward(...)` in both libraries, which "
                "returns a future at once (`call returns`), awaited to the result.")
        r = _ratio(enc.get("official", {}).get("wall_s"), enc.get("ours", {}).get("wall_s"))
        rep.target("forward_backward encode >= 5x faster than official", _fmt(r, ".1f", "x"),
                   None if r is None else r >= 5)

    rq = results.get("requests")
    if rq:
        rows = []
        for mode, per in rq.items():
            for name, r in per.items():
                if "error" in r:
                    rows.append([mode, LABELS[name], "error", "", ""])
                    continue
                detail = ", ".join(f"{k.split('/')[-1]} {v}" for k, v in sorted(
                    r["counts"].items(), key=lambda kv: -kv[1]))
                rows.append([mode.replace("_", "-"), LABELS[name],
                             _fmt(r["polls_per_future"], ".3f"),
                             _fmt(r["requests_per_future"], ".3f"), detail])
        rep.add("4. HTTP requests per resolved future (server request log)", _table(
            ["server mode", "contender", "polls/future", "all requests/future",
             "requests seen by the server"], rows))
        r = rq.get("long_poll", {}).get("ours", {}).get("polls_per_future")
        rep.target("<= 1.1 poll requests per future with the batch long-poll",
                   _fmt(r, ".3f"), None if r is None else r <= 1.1)

    inf = results.get("inflight")
    if inf:
        rows = []
        for name, r in inf.items():
            if "error" in r:
                rows.append([LABELS[name], "error: " + r["error"][-60:], "", "", "", ""])
                continue
            rows.append([LABELS[name], str(r["n"]), str(r.get("server_pending")),
                         _fmt(r["per_future_kib"], ".1f"),
                         _fmt((r["rss_peak_kib"] - r["rss_base_kib"]) / 1024, ".1f"),
                         str(r.get("os_threads_peak"))])
        rep.add("5. memory per in-flight sample (server holds each sample)", _table(
            ["contender", "in flight", "pending on server at peak", "KiB per in-flight sample",
             "RSS added MiB", "OS threads"], rows))

    idle = results.get("idle")
    if idle:
        rows = [[LABELS[n], _fmt(idle[n].get("cpu_ms_per_s"), ".2f"),
                 str(idle[n].get("threads", "n/a")), str(idle[n].get("error", ""))[-60:]]
                for n in ALL_CONTENDERS if n in idle]
        rep.add(f"6. idle client with a live session ({results.get('config', {}).get('idle_s')} s)",
                _table(["contender", "CPU ms per second", "OS threads", "error"], rows))
    return rep


def render(rep: Report) -> str:
    parts = list(rep.sections)
    if rep.targets:
        rows = [[t.name, t.measured, t.verdict] for t in rep.targets]
        parts.append("### Targets (tinker_async async forms unless stated)\n\n"
                     + _table(["target", "measured", "verdict"], rows) + "\n")
    return "\n".join(parts)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for dist in ("tinker", "tinker-async", "aiohttp", "numpy", "msgspec"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:
            versions[dist] = "missing"
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(), "load_avg": os.getloadavg(), "versions": versions,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--rounds", type=int, help="repeats of figure 2 (median)")
    parser.add_argument("--only", help="comma-separated figure numbers, e.g. 1,2")
    parser.add_argument("--json", help="write raw results here")
    parser.add_argument("--markdown", help="write the tables here (Markdown)")
    args = parser.parse_args(argv)

    cfg = QUICK if args.quick else FULL
    if args.rounds:
        cfg.rounds = args.rounds
    only = {int(x) for x in args.only.split(",")} if args.only else {1, 2, 3, 4, 5, 6}
    started = time.monotonic()
    info = machine()
    results: dict[str, Any] = {"machine": info, "config": cfg.__dict__ | {
        "levels": {str(k): v for k, v in cfg.levels.items()}}}
    log(f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}, "
        f"load {info['load_avg']}")

    if 1 in only:
        log("figure 1: import")
        results["import"] = fig_import(cfg)
    if only & {2, 3, 6}:
        with Server() as server:
            if 2 in only:
                log(f"figure 2: sampling at c={list(cfg.levels)} ({cfg.rounds} rounds)")
                results["sampling"] = fig_sampling(cfg, server)
            if 3 in only:
                log("figure 3: forward_backward")
                results["training"] = fig_training(cfg, server)
            if 6 in only:
                log("figure 6: idle")
                results["idle"] = fig_idle(cfg, server)
    if 2 in only and 1 in cfg.levels:
        # The same c=1 exchange against a server without the batch long-poll: what the
        # long-poll's extra round trip costs at low concurrency.
        log("figure 2b: c=1 with per-request polling")
        with Server("--no-long-poll") as server:
            results["sampling_per_request"] = fig_sampling(
                cfg, server, {1: cfg.levels[1]}, ("floor", "ours", "official"))
    if 4 in only:
        log("figure 4: requests per future")
        results["requests"] = fig_requests(cfg)
    if 5 in only:
        log("figure 5: memory per in-flight future")
        results["inflight"] = fig_inflight(cfg)

    results["elapsed_s"] = time.monotonic() - started
    rep = build_report(results)
    text = render(rep)
    head = (f"Machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}; "
            f"tinker {info['versions']['tinker']}, aiohttp {info['versions']['aiohttp']}; "
            f"{info['date']}; load average at start {info['load_avg'][0]:.2f}; "
            f"suite took {results['elapsed_s']:.0f} s.\n")
    print(head)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if args.markdown:
        Path(args.markdown).write_text(head + "\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
