"""The swap robot PLC: its register contract, the port protocol and a Modbus TCP client."""
