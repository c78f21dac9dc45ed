"""Differential harness: the same scenarios against a real mosquitto 2.0 and mqtt-guard (see ../README.md)."""
