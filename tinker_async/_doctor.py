"""Probe a Tinker-compatible server: what it is, what it offers, what it lacks.

:func:`diagnose` sends only harmless requests: reads, and writes that name a session,
model or future that does not exist (``doctor-probe``), so the server refuses them
before doing anything. How a route answers tells whether it exists: a 404 or 405 whose
body is the framework's bare ``Not Found`` (FastAPI's ``{"detail": "Not Found"}``, or a
non-JSON page) means no such route; any other answer (a 404 naming the missing session,
a 422 listing missing fields, ...) means the route is there. With ``round_trip=True`` it
also creates a LoRA training client, runs one ``forward_backward``, samples once and
closes: the only probe that leaves something behind (a small training run).

Servers are named from their own answers: tuft by its OpenAPI title ("TuFT"), skyrl-tx
by its root page and OpenAPI title ("Tinker API Mock"), the embedded server by its
``health`` version (``tinker_async.local``); the protocol dialect from the handshake
(``client/config`` answers: official), tinkercloud's shapes, ``twinkle://`` paths,
strict request models (an unknown field is a 422), else legacy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import aiohttp

from ._config import NO_RETRY, PROTOCOL_SDK_VERSION
from .errors import APIError, TinkerError
from .rest import RestClient, transport_of
from .types import ClientConfigRequest

__all__ = ["DoctorReport", "Probe", "RoundTripStep", "diagnose"]

_ANY_ERROR = frozenset(range(400, 600))
_PROBE = "doctor-probe"
_HANDSHAKE = ClientConfigRequest(sdk_version=PROTOCOL_SDK_VERSION)
_BARE = {"not found", "method not allowed", "404: not found", "405: method not allowed"}


@dataclasses.dataclass
class Probe:
    """One request the doctor sent, and what came back."""

    method: str
    path: str
    status: int | None
    detail: str
    ms: float
    data: Any = None

    @property
    def route_exists(self) -> bool | None:
        """Whether the route is there (None: no answer at all)."""
        if self.status is None:
            return None
        if self.status in (404, 405):
            return self.detail.strip().lower() not in _BARE and self.detail != ""
        return True

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400


@dataclasses.dataclass
class RoundTripStep:
    """One step of ``--round-trip``."""

    step: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclasses.dataclass
class DoctorReport:
    """What :func:`diagnose` found."""

    base_url: str
    reachable: bool
    #: the server's software when recognised (tuft, skyrl-tx, tinker_async.local), else None
    server: str | None = None
    #: the protocol dialect: official, legacy, strict, tinkercloud or twinkle
    dialect: str = "unknown"
    #: the dialect to pass as ``dialect=`` (None: the client finds it by itself)
    use_dialect: str | None = None
    evidence: list[str] = dataclasses.field(default_factory=list)
    #: how to connect to it, for people
    advice: list[str] = dataclasses.field(default_factory=list)
    auth: str = "not checked"
    models: list[str] = dataclasses.field(default_factory=list)
    flags: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: feature -> True (has it), False (lacks it), None (could not tell)
    features: dict[str, bool | None] = dataclasses.field(default_factory=dict)
    #: REST route -> present?
    routes: dict[str, bool | None] = dataclasses.field(default_factory=dict)
    round_trip: list[RoundTripStep] | None = None
    probes: list[Probe] = dataclasses.field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Reachable, key accepted, and the round trip (if run) all ok."""
        return (self.reachable and not self.auth.startswith("refused")
                and all(s.ok for s in self.round_trip or ()))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for ``--json``)."""
        out = dataclasses.asdict(self)
        out["healthy"] = self.healthy
        out["probes"] = [{"method": p.method, "path": p.path, "status": p.status,
                          "detail": p.detail, "ms": round(p.ms, 1)} for p in self.probes]
        return out


def _detail(data: Any, text: str) -> str:
    if isinstance(data, dict):
        for key in ("detail", "error", "message", "status"):
            if key in data:
                value = data[key]
                return value if isinstance(value, str) else str(value)[:300]
        return ""
    return text[:300]


class _Prober:
    def __init__(self, rest: RestClient, timeout: float) -> None:
        self.rest = rest
        self.transport = transport_of(rest)
        self.timeout = timeout
        self.probes: list[Probe] = []

    async def api(self, method: str, endpoint: str, body: Any = None) -> Probe:
        """A request on the API surface (``/api/v1`` or the dialect's prefix), with auth."""
        started = time.perf_counter()
        path = self.transport.url(endpoint).removeprefix(self.transport.config.base_url)
        try:
            resp = await self.transport.request(
                method, endpoint, json=body, retry=NO_RETRY, timeout=self.timeout,
                ok_statuses=_ANY_ERROR)
        except APIError as exc:
            probe = Probe(method, path, None, str(exc), (time.perf_counter() - started) * 1e3)
        else:
            try:
                data = resp.json()
            except ValueError:
                data = None
            text = resp.body.decode("utf-8", "replace")
            probe = Probe(method, path, resp.status, _detail(data, text),
                          (time.perf_counter() - started) * 1e3, data)
        self.probes.append(probe)
        return probe

    async def raw(self, path: str, headers: dict[str, str] | None = None) -> Probe:
        """A GET outside the API prefix (``/``, ``/openapi.json``, ``/health``...)."""
        started = time.perf_counter()
        url = self.transport.config.base_url + path
        try:
            session = self.transport.session()
            async with session.get(url, headers=headers or {}, allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            probe = Probe("GET", path, None, f"{type(exc).__name__}: {exc}",
                          (time.perf_counter() - started) * 1e3)
        else:
            import json

            try:
                data = json.loads(body) if body else None
            except ValueError:
                data = None
            probe = Probe("GET", path, status, _detail(data, body.decode("utf-8", "replace")),
                          (time.perf_counter() - started) * 1e3, data)
        self.probes.append(probe)
        return probe


def _paths_in(data: Any) -> list[str]:
    """Every checkpoint-path-looking string in a JSON answer (for the path scheme)."""
    found: list[str] = []
    stack = [data]
    while stack and len(found) < 50:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and "://" in item and item.split("://")[0] in (
                "tinker", "twinkle"):
            found.append(item)
    return found


async def diagnose(
    base_url: str | None = None,
    api_key: str | None = None,
    *,
    dialect: str | None = None,
    timeout: float = 10.0,
    round_trip: bool = False,
    model: str | None = None,
) -> DoctorReport:
    """Probe the server at ``base_url`` (else ``TINKER_BASE_URL``) and report."""
    # Probes go to the server's own surfaces (/api/v1, /twinkle) whatever dialect is
    # forced; the forced one is used for the round trip and named in the advice.
    options: dict[str, Any] = {"base_url": base_url}
    no_key = False
    try:
        rest = RestClient(api_key=api_key, **options)
    except TinkerError as exc:
        if "API key" not in str(exc):
            raise
        # No key anywhere: still probe, with a stand-in that opens nothing.
        rest, no_key = RestClient(api_key="tml-doctor-no-key", **options), True
    try:
        report = await _diagnose(rest, timeout, no_key, dialect)
        if round_trip and report.reachable:
            report.round_trip = await _round_trip(rest, report, model, dialect, timeout)
        return report
    finally:
        await rest.close_async()


async def _diagnose(rest: RestClient, timeout: float, no_key: bool,
                    forced: str | None) -> DoctorReport:
    """Run the steps in order; each may end the report early (nothing there, key refused)."""
    p = _Prober(rest, timeout)
    t = transport_of(rest)
    report = DoctorReport(base_url=t.config.base_url, reachable=False)
    if no_key:
        report.auth = "no API key given (pass --api-key): probes that need one may fail"
    try:
        healthz = await _identify(p, report)
        if not report.reachable:
            return report
        config, dynamic, caps = await _handshake(p, report, no_key)
        if report.auth.startswith("refused"):
            _refused(report, forced)
            return report
        tinkercloud_caps = _list_models(report, caps)
        seen = await _probe_routes(p)
        seen.update(healthz=healthz, config=config, dynamic=dynamic, caps=caps)
        _fill_features(report, seen)
        _fill_routes(report, seen)
        _classify(report, seen, tinkercloud_caps)
        _advise(report, forced)
        return report
    finally:
        report.probes = p.probes


async def _identify(p: _Prober, report: DoctorReport) -> Probe:
    """Ask whether anything answers, and name the software from the pages that show it;
    gives the ``healthz`` probe (the dialect step reads it)."""
    root, openapi, health, healthz, detailed = await asyncio.gather(
        p.raw("/"), p.raw("/openapi.json"), p.raw("/health"),
        p.api("GET", "healthz"), p.api("GET", "health"))
    report.reachable = any(x.status is not None for x in (root, openapi, health, healthz))
    if not report.reachable:
        report.evidence.append(f"no answer: {healthz.detail}")
        return healthz
    title = ""
    openapi_paths: set[str] = set()
    if openapi.ok and isinstance(openapi.data, dict):
        info = openapi.data.get("info")
        title = str(info.get("title", "")) if isinstance(info, dict) else ""
        paths = openapi.data.get("paths")
        openapi_paths = set(paths) if isinstance(paths, dict) else set()
    root_name = root.data.get("name") if root.ok and isinstance(root.data, dict) else None
    version = detailed.data.get("version") if detailed.ok and isinstance(detailed.data, dict) \
        else None
    if title == "TuFT" or "/oai/api/v1/models" in openapi_paths:
        report.server = "tuft"
        report.evidence.append(f"its OpenAPI title is {title!r}")
    elif "Tinker API Mock" in (title, root_name):
        report.server = "skyrl-tx"
        report.evidence.append("it calls itself 'Tinker API Mock' (skyrl-tx's Tinker server)")
    elif version == "tinker_async.local":
        report.server = "tinker_async.local"
        report.evidence.append("its health page says version 'tinker_async.local'")
    elif title:
        report.evidence.append(f"its OpenAPI title is {title!r}")
    return healthz


async def _handshake(p: _Prober, report: DoctorReport,
                     no_key: bool) -> tuple[Probe, Probe, Probe]:
    """Send the handshake, then ask for the capabilities with the server's auth mode in
    place, noting whether the key was accepted; gives (config, dynamic_config, caps)."""
    t = p.transport
    config = await p.api("POST", "client/config", _HANDSHAKE)
    if config.status in (401, 403):
        report.auth = f"refused ({config.status}: {config.detail})"
    if config.ok and isinstance(config.data, dict):
        report.flags = dict(config.data)
        t.dialect.apply_client_config(config.data)
        if t.dialect.flag("pjwt_auth_enabled"):
            try:
                await t.start_jwt_mode()
            except APIError as exc:
                report.auth = f"refused (the JWT exchange failed: {exc})"
    dynamic = await p.api("POST", "client/dynamic_config", _HANDSHAKE)
    caps = await p.api("GET", "get_server_capabilities")
    if caps.status in (401, 403):
        report.auth = f"refused ({caps.status}: {caps.detail})"
    elif caps.ok and not no_key:
        report.auth = "accepted"
    return config, dynamic, caps


def _refused(report: DoctorReport, forced: str | None) -> None:
    """Finish the report of a server that refused the key (its routes cannot be probed)."""
    report.dialect = "unknown"
    report.evidence.append("the server refused the API key, so its routes cannot be "
                           "probed: pass the right one with --api-key")
    report.use_dialect = forced


def _list_models(report: DoctorReport, caps: Probe) -> bool:
    """Record the models the capabilities name; True if they come in tinkercloud's shape
    (plain names, or a ``features`` list)."""
    tinkercloud_caps = False
    if caps.ok and isinstance(caps.data, dict):
        for entry in caps.data.get("supported_models") or []:
            if isinstance(entry, str):
                tinkercloud_caps = True
                report.models.append(entry)
            elif isinstance(entry, dict) and entry.get("model_name"):
                report.models.append(str(entry["model_name"]))
        tinkercloud_caps = tinkercloud_caps or "features" in caps.data
    return tinkercloud_caps


async def _probe_routes(p: _Prober) -> dict[str, Probe]:
    """Send the harmless probes of the routes that set servers apart (all at once), then
    the Twinkle health check; gives each answer by name."""
    probe_ids = {"session_id": _PROBE}
    sent = {
        "strict": p.api("POST", "session_heartbeat", {**probe_ids, "doctor_probe": 1}),
        "batch_poll": p.api("POST", "retrieve_futures", {}),
        "forward": p.api("POST", "forward", {}),
        "sync_sample": p.api("POST", "sample", {}),
        "cloud_poll": p.api("POST", f"retrieve_future/{_PROBE}", {}),
        "cancel": p.api("POST", "cancel_future", {}),
        "create_load": p.api("POST", "load_weights", {
            **probe_ids, "model_seq_id": 0, "optimizer": False,
            "path": f"tinker://{_PROBE}/weights/{_PROBE}", "type": "load_weights"}),
        "runs": p.api("GET", "training_runs?limit=5"),
        "user_ckpts": p.api("GET", "checkpoints?limit=5"),
        "sessions": p.api("GET", "sessions?limit=1"),
        "capacity": p.api("GET", "capacity_info"),
        "archive": p.api("GET", f"training_runs/{_PROBE}/checkpoints/weights/{_PROBE}/archive"),
        "ext_urls": p.api("GET", f"training_runs/{_PROBE}/checkpoints/external_weights/{_PROBE}"
                                 "/external_weights_urls"),
        "weights_info": p.api("POST", "weights_info",
                              {"tinker_path": f"tinker://{_PROBE}/weights/{_PROBE}"}),
        "sampler": p.api("GET", f"samplers/{_PROBE}"),
        "storage": p.api("GET", "billing/usage/checkpoints/current"),
    }
    seen = dict(zip(sent, await asyncio.gather(*sent.values()), strict=True))
    key = p.transport.credentials.current()
    seen["twinkle"] = await p.raw("/twinkle/healthz", {
        "Authorization": f"Bearer {key}", "Twinkle-Authorization": f"Bearer {key}"})
    return seen


def _strict_fields(strict: Probe) -> bool:
    """Whether the server refused the heartbeat probe's unknown field (a 422 naming it)."""
    strict_fields = strict.status == 422 and any(
        word in strict.detail.lower() for word in ("extra", "not permitted", "unknown field",
                                                   "doctor_probe"))
    if strict.status == 422 and not strict.detail and isinstance(strict.data, dict):
        strict_fields = "doctor_probe" in str(strict.data)
    return strict_fields


def _fill_features(report: DoctorReport, seen: dict[str, Probe]) -> None:
    """Fill the features table (has it, lacks it, could not tell) from the probes."""
    has_config = seen["config"].ok
    batch_poll, create_load, twinkle = seen["batch_poll"], seen["create_load"], seen["twinkle"]
    wants_model_id = create_load.status in (400, 422) and "model_id" in str(create_load.data)
    f = report.features
    f["client/config handshake"] = has_config
    f["client/dynamic_config"] = seen["dynamic"].ok
    f["JWT auth (pjwt_auth_enabled)"] = bool(report.flags.get("pjwt_auth_enabled")) \
        if has_config else False
    f["retrieve_futures long-poll"] = bool(batch_poll.route_exists) and bool(
        report.flags.get("sample_use_retrieve_futures", batch_poll.route_exists))
    f["create via load_weights"] = (None if create_load.status is None
                                    else bool(create_load.route_exists) and not wants_model_id)
    f["separate /forward route"] = seen["forward"].route_exists
    f["cancel_future"] = seen["cancel"].route_exists
    f["blocking /sample (tinkercloud)"] = seen["sync_sample"].route_exists
    f["retrieve_future/{id} (tinkercloud)"] = seen["cloud_poll"].route_exists
    f["strict request models (extra fields refused)"] = _strict_fields(seen["strict"])
    f["Twinkle manager API at /twinkle"] = twinkle.route_exists if twinkle.status != 401 \
        else True


_ROUTES = (("GET training_runs", "runs"), ("GET checkpoints", "user_ckpts"),
           ("GET sessions", "sessions"), ("GET capacity_info", "capacity"),
           ("GET .../archive (before SDK 0.38)", "archive"),
           ("GET .../external_weights_urls", "ext_urls"),
           ("POST weights_info", "weights_info"), ("GET samplers/{id}", "sampler"),
           ("GET billing/usage/checkpoints/current", "storage"))


def _fill_routes(report: DoctorReport, seen: dict[str, Probe]) -> None:
    """Fill the REST routes table (present or not) from the probes."""
    for name, probe in _ROUTES:
        report.routes[name] = seen[probe].route_exists


def _classify(report: DoctorReport, seen: dict[str, Probe], tinkercloud_caps: bool) -> None:
    """Name the protocol dialect, with the evidence for it."""
    sync_sample, cloud_poll, twinkle = seen["sync_sample"], seen["cloud_poll"], seen["twinkle"]
    has_config = seen["config"].ok
    strict_fields = bool(report.features["strict request models (extra fields refused)"])
    schemes = {path.split("://")[0] for x in (seen["runs"], seen["user_ckpts"]) if x.ok
               for path in _paths_in(x.data)}
    if has_config:
        report.dialect = "official"
        report.evidence.append("it answers client/config (the official 0.38 handshake)")
    elif tinkercloud_caps or sync_sample.route_exists or cloud_poll.route_exists:
        report.dialect = "tinkercloud"
        report.evidence.append("tinkercloud shapes: " + ", ".join(
            w for w, on in (("capabilities as plain names/features", tinkercloud_caps),
                            ("blocking /sample", sync_sample.route_exists),
                            ("retrieve_future/{id}", cloud_poll.route_exists)) if on))
    elif "twinkle" in schemes:
        report.dialect = "twinkle"
        report.evidence.append("its checkpoint paths use twinkle://")
    elif strict_fields:
        report.dialect = "strict"
        report.evidence.append("it refuses unknown request fields (422) and has no client/config")
    elif seen["healthz"].route_exists is False and seen["caps"].route_exists is False \
            and twinkle.status is not None and twinkle.route_exists is not False:
        report.dialect = "twinkle"
        report.evidence.append("no /api/v1 surface, but a Twinkle one at /twinkle")
    else:
        report.dialect = "legacy"
        report.evidence.append("no client/config: an older JSON Tinker-compatible server")
    if has_config and strict_fields:
        report.evidence.append("its request models are strict (unknown fields are a 422)")


def _advise(report: DoctorReport, forced: str | None) -> None:
    """Say which dialect to pass (if any) and how to connect, for people."""
    if forced:
        report.use_dialect = forced
    elif report.dialect == "tinkercloud":
        # Its documented JSON bodies; the handshake alone would only say "legacy".
        report.use_dialect = "tinkercloud"
    if report.features["Twinkle manager API at /twinkle"]:
        report.advice.append("its Twinkle management API: TwinkleClient, or "
                             "RestClient(dialect='twinkle') / --dialect twinkle")
    if report.dialect in ("strict", "twinkle", "legacy"):
        report.advice.append("training and sampling: no dialect needed (a 404 on "
                             "client/config makes the client use the legacy JSON protocol)")


async def _round_trip(rest: RestClient, report: DoctorReport, model: str | None,
                      dialect: str | None, timeout: float) -> list[RoundTripStep]:
    from . import types as t
    from .service import ServiceClient

    steps: list[RoundTripStep] = []
    config = transport_of(rest).config
    service = ServiceClient(base_url=config.base_url, api_key=config.api_key.get() or None,
                            dialect=dialect or report.use_dialect, tags=["doctor"],
                            timeout=max(timeout, 60.0), max_retries=1)
    status: Any = "errored"

    async def step(name: str, work: Any) -> Any:
        started = time.perf_counter()
        try:
            value = await work
        except Exception as exc:  # a failed step is reported, not raised
            steps.append(RoundTripStep(name, False, time.perf_counter() - started,
                                       f"{type(exc).__name__}: {exc}"))
            raise _Stop from exc
        steps.append(RoundTripStep(name, True, time.perf_counter() - started))
        return value

    try:
        chosen = model or (report.models[0] if report.models else None)
        if chosen is None:
            steps.append(RoundTripStep("choose a model", False, 0.0,
                                       "the server lists no models; pass --model"))
            return steps
        training = await step(f"create LoRA training client ({chosen})",
                              service.create_lora_training_client_async(chosen, rank=4))
        tokens = [10, 11, 12, 13, 14, 15, 16, 17]
        datum = t.Datum(model_input=t.ModelInput.from_ints(tokens[:-1]),
                        loss_fn_inputs={"target_tokens": tokens[1:],
                                        "weights": [1.0] * (len(tokens) - 1)})

        async def forward_backward() -> Any:
            return await (await training.forward_backward_async([datum], "cross_entropy"))

        await step("forward_backward", forward_backward())

        async def sample() -> Any:
            sampler = await service.create_sampling_client_async(base_model=chosen)
            return await sampler.sample_async(t.ModelInput.from_ints(tokens[:4]), 1,
                                              t.SamplingParams(max_tokens=4, seed=0))

        await step("sample", sample())
        status = "success"
    except _Stop:
        pass
    finally:
        try:
            await step("close", service.close_async(status))
        except _Stop:
            pass
    return steps


class _Stop(Exception):
    """A round-trip step failed (already recorded)."""
