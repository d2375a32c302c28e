"""Fixtures shared by the integration tests that need a real Docker daemon."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest
from docker.errors import DockerException
from docker_support import ensure_test_image
from requests.exceptions import RequestException


@pytest.fixture(scope="session")
def client() -> Iterator[docker.DockerClient]:
    """The local Docker daemon; the test is skipped, with the reason, when none answers."""
    try:
        client = docker.from_env()
        client.ping()
    except (DockerException, RequestException) as exc:
        pytest.skip(f"no Docker daemon answers ({exc}); start one with .ci/dockerd.sh start")
    yield client
    client.close()


@pytest.fixture(scope="session")
def image(client: docker.DockerClient) -> str:
    """The locally built busybox httpd image (docker import; no registry)."""
    return ensure_test_image(client)
