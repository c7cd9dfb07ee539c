"""The core's own hook implementations; plugins override them by answering first."""

from __future__ import annotations

from corral.errors import BackendUnavailableError
from corral.hookspecs import hookimpl
from corral.types import BackendInfo


def describe_candidates(candidates: list[BackendInfo]) -> str:
    """One line per candidate: name, usable or not, priority and reason."""
    if not candidates:
        return "  (no backend plugins are installed)"
    rows = []
    for c in sorted(candidates, key=lambda c: (-c.priority, c.name)):
        state = "usable" if c.usable else "unusable"
        rows.append(f"  {c.name:<10} {state:<9} priority {c.priority:<4} {c.reason}")
    return "\n".join(rows)


@hookimpl(trylast=True)
def corral_select_backend(candidates: list[BackendInfo], requested: str | None) -> str | None:
    """The requested backend if usable, else the usable one with the highest priority."""
    if requested:
        match = next((c for c in candidates if c.name == requested), None)
        if match is None or not match.usable:
            why = "is not installed" if match is None else f"is not usable here: {match.reason}"
            raise BackendUnavailableError(
                f"backend {requested!r} {why}\n{describe_candidates(candidates)}"
            )
        return requested
    usable = sorted((c for c in candidates if c.usable), key=lambda c: (-c.priority, c.name))
    if not usable:
        raise BackendUnavailableError("no usable backend\n" + describe_candidates(candidates))
    return usable[0].name
