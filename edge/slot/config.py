"""`safety:` in the station config: the one model of the station's safety limits.

A leaf module (pydantic only). The slot core reads the windows (the pack's own BCP limits win
when they are tighter); the slot service hands the BMS timers to the GB/T session
(`drivers.can.session.SessionTimers`) and the windows to its field checks. Unknown keys are
errors.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SafetyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pack_temp_c: Annotated[float, Field(gt=0, le=80)] = 55.0
    min_pack_temp_c: Annotated[float, Field(ge=-40, le=20)] = 0.0
    max_cell_voltage_v: Annotated[float, Field(gt=0, le=5)] = 4.25
    min_cell_voltage_v: Annotated[float, Field(gt=0, le=5)] = 2.5
    # A cell may read this much above the limit before it counts (measurement noise).
    cell_voltage_margin_v: Annotated[float, Field(ge=0, le=0.2)] = 0.02
    # How long a charging BMS may stay silent (its BCL demand) before the output goes off.
    bms_timeout_s: Annotated[float, Field(gt=0, le=10)] = 1.0
    # Re-handshakes after a BMS timeout before the slot latches unavailable.
    max_rehandshakes: Annotated[int, Field(ge=0, le=3)] = 3

    @model_validator(mode="after")
    def _windows(self) -> SafetyConfig:
        if self.min_pack_temp_c >= self.max_pack_temp_c:
            raise ValueError("min_pack_temp_c must be below max_pack_temp_c")
        if self.min_cell_voltage_v >= self.max_cell_voltage_v:
            raise ValueError("min_cell_voltage_v must be below max_cell_voltage_v")
        return self
