from __future__ import annotations

import pytest

from tests.sidecar.helpers import SidecarProcess


@pytest.fixture
def start_sidecar(redis_server, prefix):
    started: list[SidecarProcess] = []

    def start(*args: str) -> SidecarProcess:
        sidecar = SidecarProcess(redis_server.url, prefix, *args)
        started.append(sidecar)
        return sidecar.start()

    yield start
    for sidecar in started:
        sidecar.stop()
