"""Benchmark harness for mqtt-guard (issue 7). Not collected by pytest; see README.md."""
