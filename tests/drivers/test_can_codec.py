"""The DBC + codec against frames computed by hand from docs/gbt27930.md's byte tables."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from drivers.can.codec import (
    CanFrame,
    MalformedFrameError,
    UnknownFrameError,
    brm_put_text,
    brm_text_fields,
    cts_signals,
    decode_bmt,
    decode_bmv,
    default_codec,
    encode_bmt,
    encode_bmv,
)

C = default_codec()


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def test_ids_priorities_and_lengths_match_the_message_table() -> None:
    table = {
        "CHM": (0x1826F456, 3),
        "BHM": (0x182756F4, 2),
        "CRM": (0x1801F456, 8),
        "BRM": (0x1C0256F4, 49),
        "BCP": (0x1C0656F4, 13),
        "CTS": (0x1807F456, 7),
        "CML": (0x1808F456, 8),
        "BRO": (0x100956F4, 1),
        "CRO": (0x100AF456, 1),
        "BCL": (0x181056F4, 5),
        "BCS": (0x1C1156F4, 9),
        "CCS": (0x1812F456, 8),
        "BSM": (0x181356F4, 7),
        "BST": (0x101956F4, 4),
        "CST": (0x101AF456, 4),
        "BSD": (0x181C56F4, 7),
        "CSD": (0x181DF456, 8),
        "BEM": (0x081E56F4, 4),
        "CEM": (0x081FF456, 4),
    }
    for name, (fid, length) in table.items():
        assert C.frame_id(name) == fid, name
        assert C.length(name) == length, name


def test_encode_single_frames_byte_exact() -> None:
    assert C.encode("CHM", {"CHM_ProtocolVersion": 0x000101}) == h("01 01 00")
    assert C.encode("BHM", {"BHM_MaxChargeVoltage": 426.1}) == h("A5 10")
    crm = {"CRM_RecognitionResult": 0xAA, "CRM_ChargerNumber": 0x01010101}
    assert C.encode("CRM", crm | {"CRM_RegionCode": 0x333231}) == h("AA 01010101 313233")
    # Region code not used: 0xFFFFFF.
    assert C.encode("CRM", {"CRM_RecognitionResult": 0x00, "CRM_ChargerNumber": 1}) == h(
        "00 01000000 FFFFFF"
    )
    cml = {
        "CML_MaxOutputVoltage": 450.0,
        "CML_MinOutputVoltage": 200.0,
        "CML_MaxOutputCurrent": -120.0,
        "CML_MinOutputCurrent": -0.6,
    }
    assert C.encode("CML", cml) == h("94 11 D0 07 F0 0A 9A 0F")
    assert C.encode("CRO", {"CRO_Ready": 0xAA}) == h("AA")
    # 200 A charging = -200 A = raw 2000.
    bcl = {"BCL_VoltageDemand": 405.6, "BCL_CurrentDemand": -200.0, "BCL_ChargeMode": 2}
    assert C.encode("BCL", bcl) == h("D8 0F D0 07 02")
    ccs = {
        "CCS_OutputVoltage": 352.0,
        "CCS_OutputCurrent": -117.0,
        "CCS_ChargeTime": 0,
        "CCS_ChargePermitted": 1,
    }
    # Byte 7: 01 with the 6 unused bits filled with 1 = FD; byte 8 unused = FF.
    assert C.encode("CCS", ccs) == h("C0 0D 0E 0B 00 00 FD FF")
    assert C.encode("CCS", ccs | {"CCS_ChargePermitted": 0}) == h("C0 0D 0E 0B 00 00 FC FF")
    bsm = {
        "BSM_MaxCellNumber": 41,
        "BSM_MaxTemperature": 29,
        "BSM_MaxTempProbe": 4,
        "BSM_MinTemperature": 27,
        "BSM_MinTempProbe": 27,
        "BSM_CellVoltageState": 0,
        "BSM_SOCState": 0,
        "BSM_OverCurrent": 0,
        "BSM_OverTemperature": 0,
        "BSM_Insulation": 0,
        "BSM_ConnectorState": 0,
        "BSM_ChargePermitted": 1,
    }
    assert C.encode("BSM", bsm) == h("28 4F 03 4D 1A 00 D0")
    zero_bst = {s.name: 0 for s in C.db.get_message_by_name("BST").signals}
    assert C.encode("BST", zero_bst | {"BST_ChargerStopped": 1}) == h("40 00 00 F0")
    zero_cst = {s.name: 0 for s in C.db.get_message_by_name("CST").signals}
    assert C.encode("CST", zero_cst) == h("00 00 F0 F0")
    assert C.encode("CST", zero_cst | {"CST_ManualStop": 1}) == h("04 00 F0 F0")
    assert C.encode("CST", zero_cst | {"CST_FaultStop": 1, "CST_ConnectorFault": 1}) == h(
        "10 04 F0 F0"
    )
    zero_cem = {s.name: 0 for s in C.db.get_message_by_name("CEM").signals}
    assert C.encode("CEM", zero_cem) == h("FC F0 C0 FC")
    assert C.encode("CEM", zero_cem | {"CEM_BRMTimeout": 1}) == h("FD F0 C0 FC")
    assert C.encode("CEM", zero_cem | {"CEM_BCLTimeout": 1}) == h("FC F0 C4 FC")
    assert C.encode("CEM", zero_cem | {"CEM_BSTTimeout": 1}) == h("FC F0 D0 FC")
    zero_bem = {s.name: 0 for s in C.db.get_message_by_name("BEM").signals}
    assert C.encode("BEM", zero_bem) == h("F0 F0 F0 FC")
    assert C.encode("BEM", zero_bem | {"BEM_CCSTimeout": 1}) == h("F0 F0 F1 FC")
    csd = {"CSD_ChargeTime": 0, "CSD_Energy": 0.1, "CSD_ChargerNumber": 0x01010101}
    assert C.encode("CSD", csd) == h("00 00 01 00 01 01 01 01")


def test_cts_packed_bcd_time() -> None:
    ts = datetime(2024, 7, 9, 8, 5, 3, tzinfo=UTC)
    assert C.encode("CTS", cts_signals(ts)) == h("03 05 08 09 07 24 20")
    assert C.encode("CTS") == h("FF FF FF FF FF FF FF")  # not supported: all FF


def test_encode_tp_payloads_byte_exact() -> None:
    bcs = {
        "BCS_ChargeVoltage": 378.1,
        "BCS_ChargeCurrent": 0.0,
        "BCS_MaxCellVoltage": 3.32,
        "BCS_MaxCellGroup": 6,
        "BCS_SOC": 77,
        "BCS_RemainingTime": 0,
    }
    assert C.encode("BCS", bcs) == h("C5 0E A0 0F 4C 61 4D 00 00")
    bcp = {
        "BCP_MaxCellVoltage": 3.70,
        "BCP_MaxChargeCurrent": -250.2,
        "BCP_NominalEnergy": 55.4,
        "BCP_MaxChargeVoltage": 426.1,
        "BCP_MaxTemperature": 65,
        "BCP_SOC": 77.6,
        "BCP_BatteryVoltage": 378.2,
    }
    assert C.encode("BCP", bcp) == h("72 01 DA 05 2A 02 A5 10 73 08 03 C6 0E")


REAL_BRM = h(
    "01 01 00 03 F0 05 40 0E 01 00 00 00 01 00 00 00 63 0B 08 95 00 00 01 FF"
    "4C 31 4E 53 50 47 48 39 38 4E 41 31 39 36 32 30 32 00 01 04 E7 07 FF FF 00"
)


def test_decode_real_brm_49_bytes_and_vin() -> None:
    d = C.decode_payload(0x0200, REAL_BRM)
    s = d.signals
    assert d.name == "BRM"
    assert s["BRM_ProtocolVersion"] == 0x000101
    assert s["BRM_BatteryType"] == 3
    assert s["BRM_RatedCapacity"] == pytest.approx(152.0)
    assert s["BRM_RatedVoltage"] == pytest.approx(364.8)
    assert s["BRM_PackSerial"] == 1
    assert s["BRM_ProductionYear"] == 2084  # raw 99: decoded leniently, not validated
    assert (s["BRM_ProductionMonth"], s["BRM_ProductionDay"]) == (11, 8)
    assert s["BRM_ChargeCount"] == 149
    assert s["BRM_Ownership"] == 1
    assert (s["BRM_SwBuildYear"], s["BRM_SwBuildMonth"], s["BRM_SwBuildDay"]) == (2023, 4, 1)
    manufacturer, vin = brm_text_fields(REAL_BRM)
    assert vin == "L1NSPGH98NA196202"
    assert manufacturer == ""  # raw 01 00 00 00 is not ASCII
    # 41-byte BRM (the 2015 table's length) still decodes.
    short = C.decode_payload(0x0200, REAL_BRM[:41])
    assert "BRM_SwBuildYear" not in short.signals
    assert short.signals["BRM_BatteryType"] == 3


def test_brm_encode_fills_reserved_and_text() -> None:
    payload = C.encode(
        "BRM",
        {
            "BRM_ProtocolVersion": 0x000101,
            "BRM_BatteryType": 6,
            "BRM_RatedCapacity": 150.0,
            "BRM_RatedVoltage": 350.0,
        },
    )
    payload = brm_put_text(payload, "CATL", "LNBSCU3H8JR000001")
    assert payload[:8] == h("01 01 00 06 DC 05 AC 0D")
    assert payload[8:12] == b"CATL"
    assert payload[23] == 0xFF  # reserved byte
    assert payload[24:41] == b"LNBSCU3H8JR000001"
    assert payload[46:49] == h("FF FF FF")
    assert brm_text_fields(payload) == ("CATL", "LNBSCU3H8JR000001")


def test_decode_real_single_frames() -> None:
    d = C.decode_frame(CanFrame(0x1812F456, h("C0 0D 0E 0B 00 00 01")))  # DLC 7
    assert d.signals["CCS_OutputVoltage"] == pytest.approx(352.0)
    assert d.signals["CCS_OutputCurrent"] == pytest.approx(-117.0)
    assert d.signals["CCS_ChargePermitted"] == 1
    d = C.decode_frame(CanFrame(0x1812F456, h("24 0B A0 0F 00 00 FD")))
    assert d.signals["CCS_ChargePermitted"] == 1
    d = C.decode_frame(CanFrame(0x1812F456, h("24 0B A0 0F 00 00")))  # 2011 CCS, DLC 6
    assert "CCS_ChargePermitted" not in d.signals
    d = C.decode_frame(CanFrame(0x181356F4, h("28 4F 03 4D 1A 00 D0")))
    s = d.signals
    assert (s["BSM_MaxCellNumber"], s["BSM_MaxTemperature"], s["BSM_MaxTempProbe"]) == (41, 29, 4)
    assert (s["BSM_MinTemperature"], s["BSM_MinTempProbe"]) == (27, 27)
    assert s["BSM_ChargePermitted"] == 1 and s["BSM_Insulation"] == 0
    d = C.decode_frame(CanFrame(0x181C56F4, h("4D 4D 01 4E 01 35 36")))
    assert d.signals == pytest.approx(
        {
            "BSD_StopSOC": 77,
            "BSD_MinCellVoltage": 3.33,
            "BSD_MaxCellVoltage": 3.34,
            "BSD_MinTemperature": 3,
            "BSD_MaxTemperature": 4,
        }
    )
    d = C.decode_frame(CanFrame(0x101956F4, h("40 00 00 00")))  # reserved bits left at 0
    assert d.signals["BST_ChargerStopped"] == 1
    d = C.decode_payload(0x0600, h("72 01 DA 05 2A 02 A5 10 73 08 03 C6 0E"))
    assert d.signals["BCP_MaxChargeCurrent"] == pytest.approx(-250.2)
    assert d.signals["BCP_SOC"] == pytest.approx(77.6)
    assert d.signals["BCP_MaxTemperature"] == 65


def test_value_tables_present() -> None:
    m = C.db.get_message_by_name("BCL")
    assert m.decode(h("D8 0F D0 07 02"))["BCL_ChargeMode"] == "constant_current"
    crm = C.db.get_message_by_name("CRM")
    assert crm.decode(h("AA 01010101 313233"))["CRM_RecognitionResult"] == "recognised"
    bsm = C.db.get_message_by_name("BSM")
    assert bsm.decode(h("28 4F 03 4D 1A 02 D0"))["BSM_CellVoltageState"] == "too_low"


def test_bad_frames_raise_typed_errors() -> None:
    with pytest.raises(UnknownFrameError):
        C.decode_frame(CanFrame(0x0070F4B5, h("00 00 B5")))
    with pytest.raises(MalformedFrameError):
        C.decode_frame(CanFrame(0x181056F4, h("D8 0F D0")))  # BCL needs 5 bytes
    with pytest.raises(MalformedFrameError):
        C.decode_frame(CanFrame(0x1812F456, h("24 0B A0")))
    with pytest.raises(MalformedFrameError):
        C.decode_payload(0x1100, h("C5 0E A0 0F"))


def test_variable_length_bmv_bmt() -> None:
    # cell 1: 3.32 V group 6 -> 0x614C little-endian = 4C 61
    assert encode_bmv([(3.32, 6), (3.30, 0)]) == h("4C 61 4A 01")
    assert decode_bmv(h("4C 61 4A 01")) == [(3.32, 6), (3.30, 0)]
    assert encode_bmt([25, -10]) == h("4B 28")
    assert decode_bmt(h("4B 28 FF")) == [25, -10]
    with pytest.raises(MalformedFrameError):
        decode_bmv(h("4C 61 4A"))
