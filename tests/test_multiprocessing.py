"""A SamplingClient and a sampler handle in multiprocessing workers: fork, spawn, forkserver.

Each case runs in a fresh interpreter with the environment under test (a forkserver keeps
the environment it started with, so one pytest process cannot vary it). That interpreter
unpickles a client made here, so it has no ServiceClient of its own to share, and hands
the client and its sampler handle to a ``ProcessPoolExecutor`` worker. The worker gets
its credential from its environment, from ``tinker_async.configure()`` (reading a key
file, as from a mounted secret), or not at all: then its first call, not the unpickling,
fails with a ConfigurationError that says how to fix it.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tinker_async as tinker
from tinker_async.local import LocalServer

API_KEY = "tml-test-0123456789abcdef"  # the shared server's key (conftest.py)
ROOT = Path(__file__).resolve().parent.parent
MODEL = "local/byte-lm"
PROMPT = [72, 105, 32]
START_METHODS = ["fork", "spawn", "forkserver"]

SCRIPT = r'''
import base64, concurrent.futures, json, multiprocessing, os, pickle, sys
from pathlib import Path
import tinker_async as tinker

def work(sc, handle, keyfile):
    if keyfile:
        tinker.configure(api_key=Path(keyfile).read_text())
    out = []
    for client in (sc, tinker.SamplingClient.from_sampler_handle(handle)):
        try:
            r = client.sample(tinker.ModelInput.from_ints({prompt}), 1,
                              tinker.SamplingParams(max_tokens=4, temperature=0.0)).result(60)
            out.append(["ok", r.sequences[0].tokens])
        except tinker.ConfigurationError as exc:
            out.append(["ConfigurationError", str(exc)])
    return os.getpid(), out

if __name__ == "__main__":
    method, keyfile = sys.argv[1], sys.argv[2] or None
    sc = pickle.loads(base64.b64decode({blob!r}))  # no key here unless in the environment
    handle = sc.get_sampler_handle()
    ctx = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        pid, out = pool.submit(work, sc, handle, keyfile).result(120)
    assert pid != os.getpid()
    print("RESULT", json.dumps(out))
'''


@pytest.fixture(scope="module")
def blob(server: LocalServer) -> Iterator[bytes]:
    """A pickled SamplingClient; its session lives (here) while the module's tests run."""
    with tinker.ServiceClient(base_url=server.url, api_key=_key()) as svc:
        sc = svc.create_sampling_client(base_model=MODEL).result(60)
        data = pickle.dumps(sc)
        assert _key().encode() not in data
        yield data


@pytest.fixture(scope="module")
def expected(server: LocalServer) -> list[int]:
    with tinker.ServiceClient(base_url=server.url, api_key=_key()) as svc:
        sc = svc.create_sampling_client(base_model=MODEL).result(60)
        r = sc.sample(tinker.ModelInput.from_ints(PROMPT), 1,
                      tinker.SamplingParams(max_tokens=4, temperature=0.0)).result(60)
    return list(r.sequences[0].tokens)


def _key() -> str:
    return API_KEY


def _run(tmp_path: Path, blob: bytes, method: str, *, env: dict[str, str],
         keyfile: str = "") -> list[list[object]]:
    """Run SCRIPT in a fresh interpreter with only ``env``'s credentials; its result."""
    script = tmp_path / "mp_case.py"  # a file: spawn and forkserver re-import the main module
    script.write_text(SCRIPT.replace("{prompt}", repr(PROMPT)).replace(
        "{blob!r}", repr(base64.b64encode(blob).decode())))
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("TINKER_API_KEY", "TINKER_CREDENTIAL_CMD")}
    full_env.update({"PYTHONPATH": str(ROOT), **env})
    proc = subprocess.run([sys.executable, str(script), method, keyfile], capture_output=True,
                          text=True, timeout=240, env=full_env)
    assert proc.returncode == 0, f"script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result: list[list[object]] = json.loads(line[len("RESULT "):])
    return result


@pytest.mark.parametrize("method", START_METHODS)
def test_worker_reads_the_key_from_its_environment(
    tmp_path: Path, blob: bytes, expected: list[int], method: str
) -> None:
    out = _run(tmp_path, blob, method, env={"TINKER_API_KEY": _key()})
    assert out == [["ok", expected], ["ok", expected]]


@pytest.mark.parametrize("method", START_METHODS)
def test_worker_configures_its_key_in_code(
    tmp_path: Path, blob: bytes, expected: list[int], method: str
) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text(_key() + "\n")
    # Neither the parent nor the worker has a key in its environment: the worker's
    # configure() call, made after its arguments were unpickled, is what serves them.
    out = _run(tmp_path, blob, method, env={}, keyfile=str(keyfile))
    assert out == [["ok", expected], ["ok", expected]]


@pytest.mark.parametrize("method", START_METHODS)
def test_worker_without_a_key_fails_at_the_first_call_saying_how_to_fix_it(
    tmp_path: Path, blob: bytes, method: str
) -> None:
    out = _run(tmp_path, blob, method, env={})
    assert [kind for kind, _ in out] == ["ConfigurationError", "ConfigurationError"]
    for _, message in out:
        assert isinstance(message, str)
        for hint in ("TINKER_API_KEY", "tinker_async.configure(api_key=...)", "runtime_env"):
            assert hint in message


def test_configure_checks_and_forgets_the_key(
    fresh_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(tinker.ConfigurationError, match="non-empty"):
        tinker.configure(api_key="  ")
    with pytest.raises(tinker.ConfigurationError, match="header"):
        tinker.configure(api_key="tml-two words")
    try:
        tinker.configure(api_key=_key())
        # A client made without api_key= uses the configured key, ahead of the environment.
        monkeypatch.setenv("TINKER_API_KEY", "tml-wrong-key-from-env")
        with tinker.ServiceClient(base_url=fresh_server.url) as svc:
            assert svc.connect().result(60)
        tinker.configure()  # no argument: nothing changes
        with tinker.ServiceClient(base_url=fresh_server.url) as svc:
            assert svc.connect().result(60)
    finally:
        tinker.configure(api_key=None)
    monkeypatch.delenv("TINKER_API_KEY")
    with pytest.raises(tinker.ConfigurationError, match="TINKER_API_KEY"):
        tinker.ServiceClient(base_url=fresh_server.url)


def test_an_unpickled_client_takes_a_key_configured_after_it_was_made(
    fresh_server: LocalServer, run_script: Callable[..., str]
) -> None:
    with tinker.ServiceClient(base_url=fresh_server.url, api_key=_key()) as svc:
        sc = svc.create_sampling_client(base_model=MODEL).result(60)
        blob = base64.b64encode(pickle.dumps(sc)).decode()
        out = run_script(
            "import base64, pickle\n"
            "import tinker_async as tinker\n"
            f"sc = pickle.loads(base64.b64decode({blob!r}))\n"
            "p, params = tinker.ModelInput.from_ints([72]), tinker.SamplingParams(max_tokens=2)\n"
            "try:\n"
            "    sc.sample(p, 1, params).result(60)\n"
            "except tinker.ConfigurationError as exc:\n"
            "    print('FIRST', type(exc).__name__)\n"
            f"tinker.configure(api_key={_key()!r})\n"
            "print('THEN', len(sc.sample(p, 1, params).result(60).sequences[0].tokens))\n")
    assert "FIRST ConfigurationError" in out and "THEN 2" in out
