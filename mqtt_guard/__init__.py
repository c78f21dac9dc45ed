"""mqtt-guard: a guarded MQTT broker."""

__version__ = "0.1.0"
