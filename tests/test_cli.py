"""The ``tinker-async`` command line, run as a subprocess against the embedded server.

Every command, both places for the global options, the tables and JSON, the exit
statuses (0 ok, 1 server/network/file, 2 usage, 130 Ctrl-C) with their one-line errors,
checkpoint deletion with its confirmation, downloads (with a progress bar, a dropped
connection, and Ctrl-C then a resume), ``serve`` and ``doctor``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from _flaky_proxy import FlakyProxy
from _waiting import wait_until

from tinker_async.local import LocalServer

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = "adapter_model.safetensors"
HANG_GUARD_S = 180  # only so that a hung child fails the test instead of the whole run


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m tinker_async ARGS`` in a fresh interpreter (the environment is the
    test's: no TINKER_* variables, an empty HOME)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tinker_async", *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=HANG_GUARD_S,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed command, checked to be exactly one readable line."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture
def conn(fresh_server: LocalServer, api_key: str) -> list[str]:
    return ["--base-url", fresh_server.url, "--api-key", api_key]


@pytest.fixture
def seeded(fresh_server: LocalServer) -> dict[str, str]:
    run = fresh_server.seed_training_run(lora_rank=4, user_metadata={"purpose": "cli"})
    return {
        "run": run,
        "weights": fresh_server.seed_checkpoint(run, "c1", size_bytes=5_000_000),
        "sampler": fresh_server.seed_checkpoint(run, "s1", kind="sampler_weights",
                                                size_bytes=2048),
        "external": fresh_server.seed_checkpoint(run, "e1", kind="external_weights",
                                                 size_bytes=3_000_000),
    }


def fill_with_random_bytes(srv: LocalServer, run: str, name: str) -> Path:
    directory = srv.state.checkpoint_dir(run, "external_weights", name)
    weights = directory / WEIGHTS
    weights.write_bytes(os.urandom(weights.stat().st_size))
    return directory


# --------------------------------------------------------------------------------- help


COMMANDS: Sequence[Sequence[str]] = (
    ["run", "list"], ["run", "info"], ["checkpoint", "list"], ["checkpoint", "info"],
    ["checkpoint", "publish"], ["checkpoint", "unpublish"], ["checkpoint", "set-ttl"],
    ["checkpoint", "delete"], ["checkpoint", "download"], ["session", "list"],
    ["session", "info"], ["model", "list"], ["billing", "usage"],
    ["billing", "checkpoint-storage"], ["serve"], ["doctor"], ["version"],
    ["health"], ["models"], ["runs"], ["checkpoints"],
)


def test_every_command_has_help_with_an_example_and_help_imports_almost_nothing() -> None:
    script = f"""
import contextlib, io, json, sys
from tinker_async.cli import main
out = {{}}
for command in {[list(c) for c in COMMANDS]!r} + [[]]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = main([*command, "--help"])
    out[" ".join(command)] = [status, buffer.getvalue()]
heavy = [m for m in ("aiohttp", "msgspec", "numpy", "tinker_async.rest", "tinker_async.local")
         if m in sys.modules]
print(json.dumps({{"help": out, "heavy": heavy}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"},
                          timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["heavy"] == []  # --help needs none of the client's dependencies
    for command, (status, text) in data["help"].items():
        assert status == 0, command
        assert "example" in text and "tinker-async" in text, command
        assert "``" not in text, command  # no reStructuredText quoting in help
    top = data["help"][""][1]
    for group in ("run", "checkpoint", "session", "model", "billing", "serve", "doctor",
                  "version"):
        assert f"\n    {group} " in top


def test_python_dash_m_and_the_entry_point_print_the_version() -> None:
    from tinker_async import __version__

    assert cli("version").stdout.startswith(f"tinker-async {__version__}")
    entry = Path(sys.executable).with_name("tinker-async")
    if entry.exists():
        proc = subprocess.run([str(entry), "--version"], capture_output=True, text=True,
                              timeout=HANG_GUARD_S)
        assert proc.returncode == 0 and __version__ in proc.stdout
    assert json.loads(cli("version", "--json").stdout)["version"] == __version__


# ------------------------------------------------------------------------ read commands


def test_global_options_work_before_or_after_the_command(
        conn: list[str], seeded: dict[str, str]) -> None:
    before = cli(*conn, "--json", "run", "list", "--limit", "0")
    after = cli("run", "list", "--limit", "0", "--json", *conn)
    mixed = cli("--json", "runs", *conn)  # the old name too
    for proc in (before, after, mixed):
        assert proc.returncode == 0, proc.stderr
        assert seeded["run"] in {r["training_run_id"] for r in json.loads(proc.stdout)["runs"]}


def test_run_list_and_info_print_aligned_tables_with_relative_times(
        conn: list[str], seeded: dict[str, str]) -> None:
    listing = cli("run", "list", "--limit", "0", *conn)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("RUN ID"))
    row = next(line for line in lines if line.startswith(seeded["run"]))
    assert lines[header].index("BASE MODEL") == row.index("local/byte-lm")  # aligned
    assert "rank 4" in row and ("just now" in row or " ago" in row)
    info = cli("run", "info", seeded["run"], *conn)
    assert info.returncode == 0
    assert "rank 4" in info.stdout and "purpose" in info.stdout and seeded["weights"] in info.stdout
    cols = cli("run", "list", "-c", "id,checkpoint", "--limit", "0", *conn).stdout
    assert "LAST CHECKPOINT" in cols and "LORA" not in cols


def test_checkpoint_list_and_info_show_sizes_and_times(
        conn: list[str], seeded: dict[str, str]) -> None:
    listing = cli("checkpoint", "list", "--run-id", seeded["run"], *conn)
    assert listing.returncode == 0, listing.stderr
    assert "3 checkpoints of run" in listing.stdout
    row = next(line for line in listing.stdout.splitlines() if line.startswith("weights/c1"))
    assert "4.8 MB" in row and "training" in row and "never" in row
    everything = json.loads(cli("checkpoint", "list", "--limit", "0", "--json", *conn).stdout)
    assert seeded["sampler"] in {c["tinker_path"] for c in everything["checkpoints"]}
    info = cli("checkpoint", "info", seeded["external"], *conn)
    assert "2.9 MB" in info.stdout and "rank 4" in info.stdout
    data = json.loads(cli("checkpoint", "info", seeded["weights"], "--json", *conn).stdout)
    assert data["size_bytes"] == 5_000_000 and data["lora_rank"] == 4 and data["public"] is False
    old = cli("checkpoints", seeded["run"], *conn)
    assert old.returncode == 0 and seeded["external"] in old.stdout


def test_publish_unpublish_and_set_ttl(conn: list[str], seeded: dict[str, str]) -> None:
    path = seeded["weights"]

    def info() -> dict[str, object]:
        proc = cli("checkpoint", "info", path, "--json", *conn)
        result: dict[str, object] = json.loads(proc.stdout)
        return result

    assert cli("checkpoint", "publish", path, *conn).stdout.startswith("published")
    assert info()["public"] is True
    assert json.loads(cli("checkpoint", "unpublish", path, "--json", *conn).stdout) == {
        "tinker_path": path, "public": False}
    assert info()["public"] is False
    ttl = cli("checkpoint", "set-ttl", path, "--ttl", "2d", *conn)
    assert ttl.returncode == 0 and "expires in 1 day" in ttl.stdout  # 2 days less a moment
    assert info()["expires_at"] is not None
    assert cli("checkpoint", "set-ttl", path, "--remove", *conn).returncode == 0
    assert info()["expires_at"] is None
    for bad in ([], ["--ttl", "3600", "--remove"], ["--ttl", "soon"]):
        proc = cli("checkpoint", "set-ttl", path, *bad, *conn)
        assert proc.returncode == 2
        one_line_error(proc)


def test_delete_asks_first_with_a_size_summary(
        fresh_server: LocalServer, conn: list[str], seeded: dict[str, str]) -> None:
    path = seeded["weights"]
    declined = cli("checkpoint", "delete", path, *conn, stdin="n\n")
    assert declined.returncode == 0
    assert "4.8 MB" in declined.stderr and "Total size" in declined.stderr
    assert "nothing was deleted" in declined.stderr
    assert path in cli("checkpoint", "list", "--run-id", seeded["run"], *conn).stdout
    accepted = cli("checkpoint", "delete", path, *conn, stdin="y\n")
    assert accepted.returncode == 0 and "deleted 1 checkpoint (4.8 MB)" in accepted.stdout
    assert path not in cli("checkpoint", "list", "--run-id", seeded["run"], *conn).stdout


def test_delete_by_run_with_filters_and_yes(conn: list[str], seeded: dict[str, str]) -> None:
    proc = cli("checkpoint", "delete", "--run-id", seeded["run"], "--type", "sampler", "-y",
               "--json", *conn)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"deleted_count": 1, "failed": []}
    left = cli("checkpoint", "list", "--run-id", seeded["run"], *conn).stdout
    assert seeded["sampler"] not in left and seeded["weights"] in left
    nothing = cli("checkpoint", "delete", "--run-id", seeded["run"], "--before", "2000-01-01",
                  "-y", *conn)
    assert nothing.returncode == 0 and "match" in nothing.stdout
    missing = cli("checkpoint", "delete", f"tinker://{seeded['run']}/weights/nope", "-y", *conn)
    assert missing.returncode == 1 and "failed:" in missing.stderr


def test_models_sessions_billing_and_health(conn: list[str], seeded: dict[str, str]) -> None:
    models = cli("model", "list", "BYTE", *conn)
    assert models.returncode == 0 and "local/byte-lm" in models.stdout
    none = cli("model", "list", "no-such-model", *conn)
    assert none.returncode == 1 and "local/byte-lm" in one_line_error(none)
    assert {"model_name": "local/byte-lm"}.items() <= json.loads(
        cli("models", "--json", *conn).stdout)["models"][0].items()
    sessions = json.loads(cli("session", "list", "--limit", "0", "--json", *conn).stdout)
    mine = [s for s in sessions["sessions"] if seeded["run"] in s.get("training_run_ids", [])]
    assert len(mine) == 1
    info = cli("session", "info", mine[0]["session_id"], *conn)
    assert info.returncode == 0 and seeded["run"] in info.stdout
    usage = cli("billing", "usage", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "--json",
                *conn)
    assert usage.returncode == 0 and "data" in json.loads(usage.stdout)
    storage = cli("billing", "checkpoint-storage", *conn)
    assert storage.returncode == 0, storage.stderr
    too_long = cli("billing", "usage", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", *conn)
    assert too_long.returncode == 2 and "14 days" in one_line_error(too_long)
    assert cli("health", *conn).stdout.strip() == "healthy"


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("args", "status", "says"), [
    (["runs", "--limit", "-1"], 2, "must be 0 (all) or more"),
    (["run", "info"], 2, "RUN_ID"),
    (["run"], 2, "a command is required"),
    (["frobnicate"], 2, "invalid choice"),
    (["run", "list", "-c", "id,bogus"], 2, "bogus"),
    (["checkpoint", "info", "not-a-path"], 2, "not-a-path"),
    (["checkpoint", "download", "tinker://r/sampler_weights/x"], 2, "sampler"),
    (["checkpoint", "delete"], 2, "--run-id"),
    (["checkpoint", "delete", "--type", "sampler", "tinker://r/weights/x"], 2, "need --run-id"),
    (["run", "info", "no-such-run"], 1, "404"),
    (["checkpoint", "info", "tinker://no-such-run/weights/x"], 1, "404"),
])
def test_errors_are_one_line_with_the_right_exit_status(
        conn: list[str], args: list[str], status: int, says: str) -> None:
    proc = cli(*args, *conn)
    assert proc.returncode == status, proc.stderr
    assert says in one_line_error(proc)


def test_a_server_that_is_down_is_one_line_and_exit_1(api_key: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = cli("run", "list", "--base-url", f"http://127.0.0.1:{port}", "--api-key", api_key)
    assert proc.returncode == 1
    assert "Cannot connect" in one_line_error(proc)


def test_a_missing_key_names_the_option(fresh_server: LocalServer) -> None:
    proc = cli("run", "list", "--base-url", fresh_server.url)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "--api-key" in line and "api_key=" not in line


def test_debug_adds_the_traceback(conn: list[str]) -> None:
    proc = cli("run", "info", "no-such-run", "--debug", *conn)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("error:")


# --------------------------------------------------------------------------- download


def test_download_with_progress_then_an_existing_target_needs_force(
        fresh_server: LocalServer, conn: list[str], seeded: dict[str, str], tmp_path: Path) -> None:
    source = fill_with_random_bytes(fresh_server, seeded["run"], "e1")
    path = seeded["external"]
    target = tmp_path / (path.removeprefix("tinker://").replace("/", "_"))
    proc = cli("checkpoint", "download", path, "-o", str(tmp_path), "--progress", *conn)
    assert proc.returncode == 0, proc.stderr
    assert "100%" in proc.stderr and "/s" in proc.stderr  # the bar: percent and rate
    assert f"Downloaded to  {target}" in proc.stdout and "2.9 MB" in proc.stdout
    assert (target / WEIGHTS).read_bytes() == (source / WEIGHTS).read_bytes()
    assert sorted(p.name for p in target.iterdir()) == ["adapter_config.json", WEIGHTS]
    again = cli("checkpoint", "download", path, "-o", str(tmp_path), *conn)
    assert again.returncode == 1 and "--force" in one_line_error(again)
    forced = cli("checkpoint", "download", path, "-o", str(tmp_path), "--force", "--json", *conn)
    assert forced.returncode == 0 and forced.stderr == ""  # no bar without a terminal
    data = json.loads(forced.stdout)
    assert data["destination"] == str(target) and data["file_size_bytes"] == 3_000_000


def test_download_resumes_after_a_dropped_connection(
        fresh_server: LocalServer, api_key: str, seeded: dict[str, str], tmp_path: Path) -> None:
    source = fill_with_random_bytes(fresh_server, seeded["run"], "e1")
    with FlakyProxy(fresh_server.url).running() as proxy:
        proxy.cut(after_bytes=1_000_000)  # the weights file's connection breaks once
        proc = cli("checkpoint", "download", seeded["external"], "-o", str(tmp_path),
                   "--base-url", proxy.url, "--api-key", api_key, "--json")
    assert proc.returncode == 0, proc.stderr
    assert proxy.cuts_done == 1
    target = Path(json.loads(proc.stdout)["destination"])
    assert (target / WEIGHTS).read_bytes() == (source / WEIGHTS).read_bytes()
    ranges = [r.headers.get("Range") for r in fresh_server.requests if r.path.startswith("/files/")]
    assert "bytes=1000000-" in ranges


def test_ctrl_c_stops_a_download_quietly_and_running_it_again_resumes(
        fresh_server: LocalServer, api_key: str, seeded: dict[str, str], tmp_path: Path) -> None:
    source = fill_with_random_bytes(fresh_server, seeded["run"], "e1")
    args = [sys.executable, "-m", "tinker_async", "checkpoint", "download", seeded["external"],
            "-o", str(tmp_path), "--api-key", api_key, "--parallel", "1"]
    target = tmp_path / seeded["external"].removeprefix("tinker://").replace("/", "_")
    part = target / (WEIGHTS + ".part")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    with FlakyProxy(fresh_server.url).running() as proxy:
        proxy.stall(after_bytes=600_000)
        child = subprocess.Popen([*args, "--base-url", proxy.url], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Ctrl-C once the download is waiting on the stalled connection, its first block
        # on disk (not while that block is still being written).
        wait_until(lambda: proxy.stalls_begun > 0 and part.exists() and part.stat().st_size > 0,
                   "the download to stall with its first block on disk")
        child.send_signal(signal.SIGINT)
        try:
            out, err = child.communicate(timeout=60)  # a hang guard, under pytest's 120 s
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGABRT)  # faulthandler prints where the child hangs
            out, err = child.communicate(timeout=HANG_GUARD_S)
            raise AssertionError(f"the CLI did not stop on Ctrl-C:\n{err}") from None
        assert child.returncode == 130
        assert out == "" and err == ""  # quietly
        kept = part.stat().st_size  # what arrived before Ctrl-C is kept
        # Not "<= 600_000": on a loaded machine the stalled read can time out and its
        # retry (a new range, stalled in turn) add bytes before the Ctrl-C lands.
        assert 0 < kept < (source / WEIGHTS).stat().st_size
        proxy.release()
        fresh_server.clear_requests()
        again = subprocess.run([*args, "--base-url", proxy.url], env=env, text=True,
                               capture_output=True, timeout=HANG_GUARD_S)
    assert again.returncode == 0, again.stderr
    assert "Resumed" in again.stdout
    assert (target / WEIGHTS).read_bytes() == (source / WEIGHTS).read_bytes()
    ranges = [r.headers.get("Range") for r in fresh_server.requests if r.path.startswith("/files/")]
    assert ranges == [f"bytes={kept}-"]


# ------------------------------------------------------------------------------- serve


def test_serve_on_a_busy_port_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = cli("serve", "--port", str(busy.getsockname()[1]))
    assert proc.returncode == 1
    assert "address already in use" in one_line_error(proc)


def test_serve_answers_until_interrupted(api_key: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", "tinker_async", "serve", "--port", "0", "--api-key", api_key,
         "--dialect", "legacy"],
        env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert child.stdout is not None
        first = child.stdout.readline()
        url = first.rsplit(" ", 1)[-1].strip()
        assert first.startswith("Tinker-compatible server listening on http://127.0.0.1:")
        assert cli("health", "--base-url", url, "--api-key", api_key).returncode == 0
        doctor = json.loads(cli("doctor", "--base-url", url, "--api-key", api_key,
                                "--json").stdout)
        assert doctor["dialect"] == "legacy"
    finally:
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=HANG_GUARD_S)
    assert child.returncode == 0 and "stopped" in out


# ------------------------------------------------------------------------------ doctor


@pytest.fixture(params=["official", "legacy", "strict", "tinkercloud", "twinkle"])
def dialect_server(request: pytest.FixtureRequest, api_key: str) -> Iterator[LocalServer]:
    with LocalServer(api_key=api_key, dialect=request.param).in_thread() as srv:
        yield srv


def test_doctor_names_each_dialect_the_embedded_server_plays(
        dialect_server: LocalServer, api_key: str) -> None:
    played = dialect_server.config.dialect.name
    if played == "twinkle":  # it shows in the twinkle:// paths of what the server holds
        run = dialect_server.seed_training_run()
        dialect_server.seed_checkpoint(run, "c1")
    proc = cli("doctor", "--base-url", dialect_server.url, "--api-key", api_key, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["dialect"] == played and report["server"] == "tinker_async.local"
    assert report["auth"] == "accepted" and report["models"] == ["local/byte-lm"]
    features = report["features"]
    assert features["client/config handshake"] is (played == "official")
    assert features["retrieve_futures long-poll"] is (played == "official")
    assert features["create via load_weights"] is (played == "official")
    assert features["strict request models (extra fields refused)"] is (played == "strict")
    assert features["blocking /sample (tinkercloud)"] is (played == "tinkercloud")
    assert report["routes"]["GET .../archive (before SDK 0.38)"] is (played == "official")


def test_doctor_round_trip_and_human_report(fresh_server: LocalServer, conn: list[str]) -> None:
    proc = cli("doctor", "--round-trip", *conn)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "Identified  tinker_async.local (official dialect)" in text
    assert "Supports" in text and "Lacks" in text and "REST routes" in text
    steps = [line.split() for line in text.split("Round trip", 1)[1].splitlines() if line.strip()]
    assert [s[0] for s in steps] == ["create", "forward_backward", "sample", "close"]
    assert all("ok" in s for s in steps)


def test_doctor_on_a_server_that_is_down(api_key: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = cli("doctor", "--base-url", f"http://127.0.0.1:{port}", "--api-key", api_key)
    assert proc.returncode == 1 and "Reachable   no" in proc.stdout


def test_doctor_without_the_right_key_says_so(fresh_server: LocalServer) -> None:
    proc = cli("doctor", "--base-url", fresh_server.url)
    assert proc.returncode == 1
    assert "refused (401" in proc.stdout and "--api-key" in proc.stdout
