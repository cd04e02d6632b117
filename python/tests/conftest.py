"""Fixtures and helpers of the Python suite. The tests run against the real Docker engine with
the local test images (``bash scripts/build-test-images.sh``); no registry is needed.

Other suites may run chains on the same engine at the same time: each test has a workdir of its
own and looks only at what it left there, and at the containers whose ``/job`` mount came from
it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, List, Tuple

import pytest

IMAGE = "chainlink-test/busybox"
ENTRYPOINT_IMAGE = "chainlink-test/busybox-entrypoint"
LABEL_MANAGED = "org.chainlink.managed"


def stage(*argv: str, **keys) -> dict:
    """A stage of the busybox test image running ``argv`` (``sh -c`` when given one string)."""
    entrypoint = ["sh", "-c", argv[0]] if len(argv) == 1 else list(argv)
    return {"image": IMAGE, "entrypoint": entrypoint, **keys}


def _docker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)


def containers_of(workdir: Path) -> List[str]:
    """Containers labelled as chainlink's whose ``/job`` comes from a directory in ``workdir``."""
    listed = _docker("ps", "-aq", "--no-trunc", "--filter", f"label={LABEL_MANAGED}")
    ids = listed.stdout.split()
    if not ids:
        return []
    # A container may go between the listing and the inspection: inspect prints those it
    # found and complains about the others.
    inspected = _docker("inspect", *ids)
    try:
        found = json.loads(inspected.stdout or "[]")
    except json.JSONDecodeError:
        found = []
    roots = {str(workdir).rstrip("/") + "/", os.path.realpath(workdir).rstrip("/") + "/"}
    mine = []
    for container in found:
        for mount in container.get("Mounts") or []:
            if any(str(mount.get("Source", "")).startswith(root) for root in roots):
                mine.append(container.get("Name", container.get("Id", "?")))
    return mine


def leftovers(workdir: Path) -> Tuple[List[str], List[str]]:
    """What runs under ``workdir`` left: (containers, directory entries). The user's private
    directory stays between runs; what is in it is left."""
    private = f"chainlink-{os.geteuid()}"
    entries = [e for e in os.listdir(workdir) if e != private]
    if os.path.isdir(os.path.join(workdir, private)):
        entries += [os.path.join(private, e) for e in os.listdir(os.path.join(workdir, private))]
    return containers_of(workdir), sorted(entries)


def assert_no_leftovers(workdir: Path) -> None:
    containers, entries = leftovers(workdir)
    assert containers == [], f"containers left: {containers}"
    assert entries == [], f"left in the workdir: {entries}"


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def parse_time(text: str) -> datetime:
    # The engine's RFC 3339 times carry nanoseconds; fromisoformat takes microseconds.
    head, _, rest = text.partition(".")
    fraction = rest.rstrip("Z")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{head}.{fraction}+00:00")


def running_span(runs):
    """(whether all the containers ran at one moment, seconds from the first start to the last
    finish), by the engine's clock."""
    starts = [parse_time(run[0]["data"]["StartedAt"]) for run in runs]
    ends = [parse_time(run[0]["data"]["FinishedAt"]) for run in runs]
    return max(starts) < min(ends), (max(ends) - min(starts)).total_seconds()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A workdir of the test's own."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture(scope="session", autouse=True)
def engine_and_images() -> None:
    """The engine must answer and the test images exist: say so once, plainly."""
    info = _docker("version", "--format", "{{.Server.Version}}")
    if info.returncode != 0:
        pytest.exit(f"cannot talk to the Docker engine: {info.stderr.strip()}", returncode=2)
    for image in (IMAGE, ENTRYPOINT_IMAGE):
        if _docker("image", "inspect", image).returncode != 0:
            pytest.exit(f"test image {image} is missing: run bash scripts/build-test-images.sh", returncode=2)


@pytest.fixture(scope="session")
def privileged_probe(tmp_path_factory) -> Tuple[bool, BaseException | None]:
    """Runs one tiny privileged stage: (True, None) where the engine allows privileged
    containers, (False, the exception) where it refuses them (a sandbox without
    CAP_SYS_RESOURCE: "unable to apply caps")."""
    from chainlink import Chainlink, EngineError

    workdir = tmp_path_factory.mktemp("privileged-probe")
    chain = Chainlink([stage("true", privileged=True, timeout=20)], workdir=str(workdir))
    try:
        results = chain.run()
    except EngineError as refused:
        return False, refused
    assert results[0]["success"], results
    return True, None
