"""Fixtures shared by the integration tests that need a real Docker daemon."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest
from components import missing, require_file
from docker.errors import DockerException
from docker_support import BUSYBOX, ensure_test_image
from requests.exceptions import RequestException

DOCKERD_HINT = "bash .ci/dockerd.sh start (installs docker.io with apt-get and starts dockerd)"


@pytest.fixture(scope="session")
def client() -> Iterator[docker.DockerClient]:
    """The local Docker daemon; the test is skipped (strict mode: fails) when none answers."""
    try:
        client = docker.from_env()
        client.ping()
    except (DockerException, RequestException):
        missing("a Docker daemon", DOCKERD_HINT)
    yield client
    client.close()


@pytest.fixture(scope="session")
def image(client: docker.DockerClient) -> str:
    """The locally built busybox httpd image (docker import; no registry)."""
    require_file(BUSYBOX, "apt-get install -y busybox-static (the test image is built from it)")
    return ensure_test_image(client)
