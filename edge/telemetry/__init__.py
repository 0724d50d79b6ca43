"""MQTT telemetry, events (store-and-forward outbox) and remote commands. See docs/mqtt.md."""
