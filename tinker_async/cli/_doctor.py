"""``tinker-async doctor``: print what :func:`tinker_async._doctor.diagnose` found."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._output import Context

if TYPE_CHECKING:
    from .._doctor import DoctorReport

__all__ = ["doctor", "render"]


def _mark(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "?"}[value]


def render(report: DoctorReport) -> list[str]:
    """The human report, as lines."""
    lines = [f"Server      {report.base_url}"]
    if not report.reachable:
        lines.append("Reachable   no: " + "; ".join(report.evidence))
        return lines
    kind = report.dialect
    if report.server is not None:
        kind = f"{report.server} ({report.dialect} dialect)"
    lines.append(f"Identified  {kind}")
    for why in report.evidence:
        lines.append(f"            - {why}")
    if report.dialect == "unknown":
        lines.append(f"API key     {report.auth}")
        return lines
    if report.use_dialect:
        lines.append(f"Connect     dialect={report.use_dialect!r} (--dialect {report.use_dialect})")
    else:
        lines.append("Connect     no dialect needed: the client finds it at the handshake")
    for advice in report.advice:
        lines.append(f"            - {advice}")
    lines.append(f"API key     {report.auth}")
    lines.append(f"Models      {', '.join(report.models) or '(none listed)'}")
    has = [name for name, on in report.features.items() if on]
    lacks = [name for name, on in report.features.items() if on is False]
    unknown = [name for name, on in report.features.items() if on is None]
    lines.append("")
    lines.append("Supports")
    lines.extend(f"  {name}" for name in has)
    lines.append("Lacks")
    lines.extend(f"  {name}" for name in lacks)
    if unknown:
        lines.append("Could not tell")
        lines.extend(f"  {name}" for name in unknown)
    lines.append("")
    lines.append("REST routes")
    width = max((len(n) for n in report.routes), default=0)
    lines.extend(f"  {name.ljust(width)}  {_mark(on)}" for name, on in report.routes.items())
    if report.flags:
        lines.append("")
        lines.append("client/config flags")
        lines.extend(f"  {k} = {v}" for k, v in sorted(report.flags.items()))
    if report.round_trip is not None:
        lines.append("")
        lines.append("Round trip")
        width = max((len(s.step) for s in report.round_trip), default=0)
        for s in report.round_trip:
            state = "ok" if s.ok else "FAILED"
            extra = f"  {s.detail}" if s.detail else ""
            lines.append(f"  {s.step.ljust(width)}  {state:6}  {s.seconds * 1000:7.0f} ms{extra}")
    return lines


async def doctor(ctx: Context) -> int:
    from .._doctor import diagnose

    a = ctx.args
    report = await diagnose(a.base_url, a.api_key, dialect=a.dialect,
                            timeout=a.timeout or 10.0, round_trip=a.round_trip, model=a.model)
    ctx.say(report.to_dict(), "\n".join(render(report)))
    return 0 if report.healthy else 1
