"""Clients on Ray: the RL example, a SamplingClient in Ray tasks and actors, and the
sampling limit that Ray workers share (``tinker_async.ray.SharedLimit``).

A SamplingClient (or its sampler handle) is an ordinary argument of a Ray task or actor
method: Ray pickles it without the key, and the worker authenticates with its own
credential: its environment (here Ray's ``runtime_env``: a key or a credential command),
or ``tinker_async.configure()`` called in the worker. Without one, the worker's first
call fails with a ConfigurationError that says how to give one; unpickling never fails.

One local Ray cluster (2 CPUs) serves the module's tests and is shut down after them;
the example starts (and shuts down) its own, before that one starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip(
    "ray", reason="Ray is not installed (pip install 'tinker-async[ray]' to run these tests)")

import tinker_async as tinker  # noqa: E402
from tinker_async import SamplingStats  # noqa: E402
from tinker_async.local import LocalServer, SampleCapacity  # noqa: E402
from tinker_async.local._capacity import sample_slots  # noqa: E402
from tinker_async.ray import SharedLimit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "tml-test-0123456789abcdef"  # the shared server's key (conftest.py)
MODEL = "local/byte-lm"
PROMPT = [72, 105, 32]
GREEDY = tinker.SamplingParams(max_tokens=4, temperature=0.0)
CREDENTIAL_VARS = ("TINKER_API_KEY", "TINKER_CREDENTIAL_CMD", "TWINKLE_SERVER_TOKEN")

# Ray's workers cannot import this module (tests/ is not on their path): its remote
# functions travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_ray_rollouts_example_learns() -> None:
    """examples/ray_rollouts.py: rollouts in 2 Ray actor processes, the learner here."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ray_rollouts.py"), "--steps", "10"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)})
    out = proc.stdout
    assert proc.returncode == 0, f"failed ({proc.returncode}):\n{out}\n{proc.stderr}"
    assert len(re.findall(r"^step +\d+ +reward [\d.]+", out, re.M)) == 10, out
    match = re.search(r"first 3 steps ([\d.]+), last 3 steps ([\d.]+)", out)
    assert match, out
    head, tail = float(match[1]), float(match[2])
    assert head < 0.2 and tail > head + 0.3, out
    match = re.search(r"samples by rollout process: \[(\d+), (\d+)\] \(2 processes, "
                      r"none of them this one: True\)", out)
    assert match and int(match[1]) + int(match[2]) == 10 * 16 * 8, out
    # The workers sampled under one limit held by a Ray actor (the default).
    assert re.search(r"^shared limit \(adaptive\): at most \d+ sample calls", out, re.M), out


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster whose workers have no credential unless a test gives one."""
    with pytest.MonkeyPatch.context() as mp:
        for name in CREDENTIAL_VARS:
            mp.delenv(name, raising=False)
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture
def sampler(cluster: None, fresh_server: LocalServer) -> Iterator[tinker.SamplingClient]:
    with tinker.ServiceClient(base_url=fresh_server.url, api_key=API_KEY) as svc:
        yield svc.create_sampling_client(base_model=MODEL).result(30)


def _greedy_tokens(client: tinker.SamplingClient) -> list[int]:
    result = client.sample(tinker.ModelInput.from_ints(PROMPT), 1, GREEDY).result(60)
    return list(result.sequences[0].tokens)


@ray.remote
def sample_in_task(client: tinker.SamplingClient, handle: str,
                   keyfile: str | None = None) -> list[Any]:
    """Sample with the pickled client and with the handle; errors come back as text."""
    if keyfile is not None:
        tinker.configure(api_key=Path(keyfile).read_text())
    out: list[Any] = [os.getpid()]
    try:
        for copy in (client, tinker.SamplingClient.from_sampler_handle(handle)):
            try:
                out.append(_greedy_tokens(copy))
            except tinker.ConfigurationError as exc:
                out.append(f"ConfigurationError: {exc}")
    finally:
        tinker.configure(api_key=None)
    return out


@ray.remote
class Rollouts:
    """An async actor: its samples run concurrently on the actor's event loop."""

    async def sample_many(self, client: tinker.SamplingClient, count: int) -> list[list[int]]:
        async def one() -> list[int]:
            r = await client.sample_async(tinker.ModelInput.from_ints(PROMPT), 1, GREEDY)
            return list(r.sequences[0].tokens)

        return list(await asyncio.gather(*(one() for _ in range(count))))


def test_a_sampling_client_in_ray_tasks_and_actors_with_the_key_in_runtime_env(
    sampler: tinker.SamplingClient, fresh_server: LocalServer
) -> None:
    expected = _greedy_tokens(sampler)
    runtime_env = {"env_vars": {"TINKER_API_KEY": API_KEY}}
    pid, *results = ray.get(sample_in_task.options(runtime_env=runtime_env).remote(
        sampler, sampler.get_sampler_handle()), timeout=120)
    assert pid != os.getpid()
    assert results == [expected, expected]
    actor = Rollouts.options(runtime_env=runtime_env).remote()  # type: ignore[attr-defined]
    try:
        assert ray.get(actor.sample_many.remote(sampler, 16), timeout=120) == [expected] * 16
    finally:
        ray.kill(actor)
    # The copies joined this session (no new one) and numbered their own requests.
    assert fresh_server.count(r"/create_session$") == 1
    assert fresh_server.count(r"/asample$") == 1 + 2 + 16


def test_a_ray_worker_configures_its_key_in_code(
    sampler: tinker.SamplingClient, tmp_path: Path
) -> None:
    expected = _greedy_tokens(sampler)
    keyfile = tmp_path / "key"  # as a mounted secret would be
    keyfile.write_text(API_KEY)
    # Its own runtime_env (and so its own worker processes): no key in their environment.
    task = sample_in_task.options(runtime_env={"env_vars": {"CASE": "configure"}})
    _, *results = ray.get(task.remote(sampler, sampler.get_sampler_handle(), str(keyfile)),
                          timeout=120)
    assert results == [expected, expected]


def test_a_ray_worker_without_a_key_fails_at_its_first_call(
    sampler: tinker.SamplingClient,
) -> None:
    task = sample_in_task.options(runtime_env={"env_vars": {"CASE": "no-key"}})
    _, *results = ray.get(task.remote(sampler, sampler.get_sampler_handle()), timeout=120)
    assert len(results) == 2
    for message in results:
        assert isinstance(message, str) and message.startswith("ConfigurationError: "), message
        for hint in ("TINKER_API_KEY", "runtime_env", "tinker_async.configure(api_key=...)"):
            assert hint in message
        assert API_KEY not in message


def test_a_ray_worker_gets_its_credential_from_a_command(cluster: None, tmp_path: Path) -> None:
    """TINKER_CREDENTIAL_CMD in the worker's runtime_env, against a server in JWT mode: the
    worker runs the command and exchanges its output for a JWT of its own."""
    with LocalServer(api_key=API_KEY, client_config={"pjwt_auth_enabled": True},
                     require_jwt=True).in_thread() as srv, \
            tinker.ServiceClient(base_url=srv.url, api_key=API_KEY) as svc:
        sc = svc.create_sampling_client(base_model=MODEL).result(30)
        expected = _greedy_tokens(sc)
        keyfile = tmp_path / "key"
        keyfile.write_text(API_KEY)
        command = f"cat {shlex.quote(str(keyfile))}"
        task = sample_in_task.options(runtime_env={"env_vars": {"TINKER_CREDENTIAL_CMD": command}})
        _, *results = ray.get(task.remote(sc, sc.get_sampler_handle()), timeout=120)
        assert results == [expected, expected]
        exchanges = [r.status for r in srv.requests if r.path.endswith("/auth/token")]
        assert exchanges == [200, 200]  # the driver's, then the worker's (one for both copies)


# ------------------------------------------------------------------ the shared limit


@pytest.fixture(scope="module")
def capacity_server(cluster: None) -> Iterator[LocalServer]:
    """A zero-compute server that serves 8 samples at once, each taking 20 ms."""
    capacity = SampleCapacity(per_model=8, service_time_s=0.02)
    with LocalServer(zero_compute=True, api_key=API_KEY,
                     sample_capacity=capacity).in_thread() as srv:
        yield srv


@ray.remote
class Fanout:
    """A rollout process: fires ``count`` samples at once, through a shared limit if given."""

    async def fire(self, client: tinker.SamplingClient, count: int,
                   limit: SharedLimit | None = None) -> tuple[list[str], SamplingStats]:
        if limit is not None:
            limit.attach(client)
        results = await asyncio.gather(
            *(client.sample_async(tinker.ModelInput.from_ints(PROMPT), 1, GREEDY)
              for _ in range(count)), return_exceptions=True)
        return [repr(r) for r in results if isinstance(r, BaseException)], client.stats()


def _fan_out(srv: LocalServer, client: tinker.SamplingClient, count: int,
             limit: SharedLimit | None) -> tuple[dict[str, int], list[SamplingStats]]:
    """Two Ray processes fire ``count`` samples each: the server's counts meanwhile, and
    the workers' stats. With a limit, the workers live until the keeper has their last
    report."""
    env = {"env_vars": {"TINKER_API_KEY": API_KEY}}
    workers = [Fanout.options(runtime_env=env).remote() for _ in range(2)]  # type: ignore[attr-defined]
    try:
        before = sample_slots(srv.context).counts()
        outcomes = ray.get([w.fire.remote(client, count, limit) for w in workers], timeout=300)
        after = sample_slots(srv.context).counts()
        for _ in range(200 if limit is not None else 0):  # reports come every 0.5 s
            if limit.snapshot()[client.sampling_session_id]["completed"] == 2 * count:
                break
            time.sleep(0.05)
    finally:
        for worker in workers:
            ray.kill(worker)
    for failures, _ in outcomes:
        assert failures == []
    delta = {k: after[k] - before[k] for k in ("admitted", "refused", "finished")}
    return delta, [stats for _, stats in outcomes]


def test_a_shared_fixed_limit_keeps_ray_workers_under_the_server_capacity(
    capacity_server: LocalServer,
) -> None:
    with tinker.ServiceClient(base_url=capacity_server.url, api_key=API_KEY) as svc:
        alone = svc.create_sampling_client(base_model=MODEL).result(30)
        shared = svc.create_sampling_client(base_model=MODEL).result(30)
        # Each process alone starts at its own limit of 32: together they overshoot.
        delta, _ = _fan_out(capacity_server, alone, 100, None)
        assert delta["admitted"] == 200 and delta["refused"] > 0
        # One limit of 8 held by a Ray actor, shared by both: the server never refuses.
        limit = SharedLimit.create(max_concurrency=8)
        delta, stats = _fan_out(capacity_server, shared, 100, limit)
        assert delta == {"admitted": 200, "refused": 0, "finished": 200}
        assert [s.completed for s in stats] == [100, 100]
        assert {s.limiter for s in stats} == {"RayLimiter"}
        assert sum(s.rate_limited for s in stats) == 0
        view = limit.snapshot()[shared.sampling_session_id]
        assert view["completed"] == 200 and view["throttled"] == 0
        assert view["limit"] == 8 and view["fixed"] and len(view["members"]) == 2
        assert view["peak_granted"] <= 8  # the shares never added up to more


def test_a_shared_adaptive_limit_serves_every_call_and_counts_what_the_server_counts(
    capacity_server: LocalServer,
) -> None:
    with tinker.ServiceClient(base_url=capacity_server.url, api_key=API_KEY) as svc:
        client = svc.create_sampling_client(base_model=MODEL).result(30)
        limit = SharedLimit.create()
        delta, stats = _fan_out(capacity_server, client, 150, limit)
        assert delta["admitted"] == delta["finished"] == 300
        assert [s.completed for s in stats] == [150, 150]
        # Each 429 the server sent is one the workers saw (and resubmitted).
        assert sum(s.rate_limited for s in stats) == delta["refused"]
        # ... and one the keeper heard of, by the workers' last reports.
        view = limit.snapshot()[client.sampling_session_id]
        assert view["completed"] == 300 and view["throttled"] == delta["refused"]
        assert not view["fixed"] and 1 <= view["limit"] < 32
