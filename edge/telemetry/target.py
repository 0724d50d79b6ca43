"""What the MQTT route asks of the station's command service (`edge.operator.service`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from edge.command_types import Origin, Rejected, Signature

__all__ = ["CommandTarget", "Rejected"]


class CommandTarget(Protocol):
    """The command service, as the MQTT route uses it: `admit` (known command, remote policy)
    runs before the envelope is validated, `execute` does the rest; `refuse` logs a refusal the
    route made itself. Both raise `Rejected(code, message)`."""

    def admit(self, name: str, params: Mapping[str, Any], origin: Origin) -> None: ...

    async def execute(
        self,
        name: str,
        params: Mapping[str, Any],
        origin: Origin,
        *,
        signature: Signature | None = None,
    ) -> dict[str, Any]: ...

    def refuse(self, name: str, origin: Origin, e: Rejected) -> None: ...
