"""What a hostile stage does to the runner process (issue 10): a /job tree made to crash the
cleanup used to kill a Python process with SIGSEGV, taking unrelated runs with it; a file that
cannot be removed must not lose the run's results."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest

from chainlink import Chainlink, CleanupWarning, gc

from conftest import assert_no_leftovers, stage, wait_for

# A fresh chain of 1,024 directories (a 2,047-byte path, under PATH_MAX) made with one
# `mkdir -p`, the tree so far moved to its bottom, 49 times over: 50,225 deep, with no path
# longer than PATH_MAX and a few process starts per 1,024 levels.
DEEP_TREE = (
    's=a; for i in 1 2 3 4 5 6 7 8 9 10; do s="$s/$s"; done; cd /job; mkdir acc; '
    'for i in $(seq 49); do mkdir -p "fresh/$s" && mv acc "fresh/$s/acc" && mv fresh acc || exit 1; done; echo made'
)


def test_a_deep_job_tree_does_not_crash_the_process_nor_its_other_runs(workdir: Path) -> None:
    # In a child process under a low descriptor limit, so that a crash would show as its exit
    # status rather than take the test runner with it.
    script = textwrap.dedent(
        f"""
        import asyncio, resource, sys
        from chainlink import Chainlink
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        deep = Chainlink([{{"image": "chainlink-test/busybox", "entrypoint": ["sh", "-c", {DEEP_TREE!r}]}}],
                         workdir={str(workdir)!r})
        other = Chainlink([{{"image": "chainlink-test/busybox", "entrypoint": ["sh", "-c", "sleep 2; echo other"]}}],
                          workdir={str(workdir)!r})
        async def main():
            return await asyncio.gather(deep.run_async(), other.run_async())
        deep_results, other_results = asyncio.run(main())
        assert deep_results[0]["success"], deep_results
        assert other_results[0]["logs"]["stdout"].endswith(b" other\\n"), other_results
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip() == "ok"
    assert_no_leftovers(workdir)


def test_a_file_that_cannot_be_removed_warns_and_keeps_the_results(workdir: Path) -> None:
    chain = Chainlink([stage("echo kept > /job/keep && touch /job/ready && sleep 2 && echo done")], workdir=str(workdir))
    ran: dict = {}

    def run() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ran["results"] = chain.run()
            ran["warnings"] = list(caught)

    runner = threading.Thread(target=run)
    runner.start()
    runs = f"chainlink-{os.geteuid()}/chainlink-run-*"
    assert wait_for(lambda: any((d / "job" / "ready").exists() for d in workdir.glob(runs)))
    keep = next(workdir.glob(runs)) / "job" / "keep"
    subprocess.run(["chattr", "+i", str(keep)], check=True)
    try:
        runner.join(60)
        assert not runner.is_alive()
        results = ran["results"]
        assert results[0]["success"] and results[0]["logs"]["stdout"].endswith(b" done\n"), results
        messages = [str(w.message) for w in ran["warnings"] if issubclass(w.category, CleanupWarning)]
        assert messages and str(keep) in messages[0], ran["warnings"]
    finally:
        subprocess.run(["chattr", "-i", str(keep)], check=True)
    report = gc(str(workdir))
    assert report["failures"] == [], report
    assert_no_leftovers(workdir)
