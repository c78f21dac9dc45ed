"""Analytics (docs/analytics.md).

counters.py   the in-process counters every component increments (`guard.counters`)
service.py    the Guard's MetricsService: drains the counters, writes them to Redis in batches, heartbeats
rates.py      rate-history buckets, mosquitto-style load averages, event-loop lag
prometheus.py /metrics of a broker (served on metrics.prometheus_bind)
health.py     /livez, /readyz, /healthz (with /metrics, or alone on metrics.health_bind) and the HTTP server
fleet.py      fleet-wide /metrics from Redis, for a non-broker process such as the sidecar
sys.py        the $SYS/broker/... topics (published by mqtt_guard/plugins/sys.py)
"""
