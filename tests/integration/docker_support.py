"""Helpers for tests against a real Docker daemon: the test image, free ports, waiting.

No registry is reachable in CI, so the test image is made locally with `docker import` from a
tarball holding the host's statically linked busybox (Debian package busybox-static, installed by
.ci/dockerd.sh start) and a small script. The script runs inside the container (busybox sh); the
reconciler itself never uses a shell.
"""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

import docker
import httpx
from docker.errors import ImageNotFound, NotFound

BUSYBOX = Path("/bin/busybox")
IMAGE_REPOSITORY = "reconciler-test-httpd"

# The test engine. It records what the reconciler gave it under /www, so tests can read it back
# over HTTP: /health (the health check), /args (one argument per line), /env, /model (a copy of
# MODEL_PATH when that is a file), /model-mount (whether MODEL_PATH can be written to). With
# EXIT_WITH set it exits with that code instead of serving (a crashing engine).
SERVE_SCRIPT = """\
#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /www
echo ok > /www/health
printf '%s\\n' "$@" > /www/args
$B env > /www/env
if [ -f "$MODEL_PATH" ]; then $B cp "$MODEL_PATH" /www/model; fi
if $B touch "$MODEL_PATH" 2>/dev/null; then mount=writable; else mount=read-only; fi
echo $mount > /www/model-mount
echo "test engine: port $PORT, args: $*"
if [ -n "$EXIT_WITH" ]; then echo "exiting with $EXIT_WITH"; exit "$EXIT_WITH"; fi
exec $B httpd -f -p "$PORT" -h /www
"""

T = TypeVar("T")


def ensure_test_image(client: docker.DockerClient) -> str:
    """The test image's tag, importing it when missing. The tag carries a hash of its content,
    so an edited script gives a new image and an unchanged one is reused across sessions."""
    if not BUSYBOX.is_file():
        raise RuntimeError(f"{BUSYBOX} is missing: install busybox-static (.ci/dockerd.sh start)")
    busybox = BUSYBOX.read_bytes()
    digest = hashlib.sha256(busybox + SERVE_SCRIPT.encode()).hexdigest()[:12]
    tag = f"{IMAGE_REPOSITORY}:{digest}"
    try:
        client.images.get(tag)
    except ImageNotFound:
        client.api.import_image_from_data(
            _rootfs(busybox),
            repository=IMAGE_REPOSITORY,
            tag=digest,
            changes=['ENTRYPOINT ["/bin/serve"]'],
        )
    return tag


def _rootfs(busybox: bytes) -> bytes:
    """A root file system tarball: /bin/busybox, /bin/serve and an empty /tmp."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _add_dir(tar, "bin", 0o755)
        _add_dir(tar, "tmp", 0o1777)
        _add_file(tar, "bin/busybox", busybox, 0o755)
        _add_file(tar, "bin/serve", SERVE_SCRIPT.encode(), 0o755)
    return buffer.getvalue()


def _add_dir(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def remove_containers(client: docker.DockerClient, label: str) -> None:
    """Remove every container carrying `label` (`key=value`), running or not."""
    for container in client.containers.list(all=True, filters={"label": label}):
        with suppress(NotFound):
            container.remove(force=True, v=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(probe: Callable[[], T | None], timeout_s: float = 15.0, what: str = "") -> T:
    """Poll `probe` until it returns something truthy (a response, a non-empty list...)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or probe}")
        time.sleep(0.1)


def http_get(port: int, path: str, timeout_s: float = 15.0) -> httpx.Response:
    """GET http://127.0.0.1:<port><path>, waiting until the engine answers."""

    def probe() -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2.0)
        except httpx.TransportError:
            return None

    return wait_until(probe, timeout_s, f"http://127.0.0.1:{port}{path} to answer")


def port_refuses(port: int) -> bool:
    """Whether nothing accepts connections on 127.0.0.1:<port>."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except OSError:
        return True
