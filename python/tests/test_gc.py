"""chainlink.gc(): what a SIGKILLed process left is removed by the sweep of another."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import chainlink
from chainlink import EngineUnavailable, InvalidStage

from conftest import IMAGE, containers_of, leftovers, wait_for

SCRIPT = textwrap.dedent(
    """
    import sys
    from chainlink import Chainlink

    chain = Chainlink([{"image": %r, "entrypoint": ["sleep", "60"], "timeout": 120}], workdir=sys.argv[1])
    print("running", flush=True)
    chain.run()
    """
) % (IMAGE,)


def test_gc_removes_the_container_and_directory_of_a_sigkilled_run(workdir):
    child = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "running", child.stderr.read()
        assert wait_for(lambda: bool(containers_of(workdir)), timeout=30), "the stage never started"
    finally:
        child.kill()  # SIGKILL: no code of the child runs
        child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    private = os.path.join(str(workdir), f"chainlink-{os.geteuid()}")
    left = sorted(os.listdir(private))
    assert len(left) == 1 and left[0].startswith("chainlink-run-"), left
    run_dir = os.path.join(private, left[0])

    report = chainlink.gc(workdir, cleanup_images=[IMAGE])

    assert set(report) == {"containers", "directories", "failures"}
    assert report["failures"] == [], report
    assert run_dir in report["directories"], report
    assert all(isinstance(c, str) for c in report["containers"]), report
    # The container: gc removed it, unless a sweep of a concurrent suite got there first (its
    # owner is dead); either way it is gone.
    assert containers_of(workdir) == []
    assert leftovers(workdir)[1] == []

    again = chainlink.gc(str(workdir))
    assert run_dir not in again["directories"] and again["failures"] == [], again


def test_gc_refuses_a_workdir_that_is_not_a_directory(tmp_path):
    with pytest.raises(InvalidStage, match="workdir: expected an existing directory"):
        chainlink.gc(tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidStage, match="workdir: expected an existing directory"):
        chainlink.gc(tmp_path / "file")


def test_gc_raises_engine_unavailable_without_an_engine(workdir, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    with pytest.raises(EngineUnavailable, match="nonexistent.sock"):
        chainlink.gc(workdir)


def test_gc_is_exported():
    assert "gc" in chainlink.__all__ and "GcReport" in chainlink.__all__
