"""run_async(): same results as run(), real concurrency, cleanup on cancellation."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest

from chainlink import Chainlink, EngineError

from conftest import assert_no_leftovers, containers_of, leftovers, stage


def parse_time(text: str) -> datetime:
    # The engine's RFC 3339 times carry nanoseconds; fromisoformat takes microseconds.
    head, _, rest = text.partition(".")
    fraction = rest.rstrip("Z")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{head}.{fraction}+00:00")


def test_run_async_returns_what_run_returns(workdir):
    chain = Chainlink([stage("echo hi", env={"N": 1}), stage("exit 2"), stage("true")], workdir=str(workdir))
    results = asyncio.run(chain.run_async({"B": True}))
    assert [r["success"] for r in results] == [True, False, False]
    assert [r["skipped"] for r in results] == [False, False, True]
    assert results[0]["logs"]["stdout"].endswith(b" hi\n")
    assert results[1]["data"]["ExitCode"] == 2
    assert set(results[0]) == {"data", "killed", "logs", "success", "skipped", "truncated"}
    assert_no_leftovers(workdir)


def test_three_chains_gathered_run_at_the_same_time(workdir):
    chains = [Chainlink([stage("sleep", "2")], workdir=str(workdir)) for _ in range(3)]

    async def gather():
        return await asyncio.gather(*(chain.run_async() for chain in chains))

    started = time.monotonic()
    runs = asyncio.run(gather())
    elapsed = time.monotonic() - started
    print(f"3 chains of sleep 2 gathered in {elapsed:.2f} s")
    assert all(run[0]["success"] for run in runs)
    # The containers' own clocks: all three were running at one moment.
    starts = [parse_time(run[0]["data"]["StartedAt"]) for run in runs]
    ends = [parse_time(run[0]["data"]["FinishedAt"]) for run in runs]
    assert max(starts) < min(ends), (starts, ends)
    # Run one after the other, the sleeps alone take 6 s (and each container ~1 s more of the
    # engine's time): 3.6 s measured on an idle 2-core engine, 4.5 s with a load of 9.
    assert elapsed < 5.5, f"gather took {elapsed:.2f} s: not concurrent"
    assert_no_leftovers(workdir)


def test_cancelling_run_async_removes_everything_before_cancelled_error(workdir):
    chain = Chainlink([stage("sleep", "30"), stage("true")], workdir=str(workdir))

    async def scenario():
        task = asyncio.ensure_future(chain.run_async())
        # Wait until the stage's container exists and the run directory is there.
        deadline = time.monotonic() + 20
        while not containers_of(workdir):
            assert time.monotonic() < deadline, "the stage never started"
            assert not task.done(), task
            await asyncio.sleep(0.05)
        assert len(leftovers(workdir)[1]) == 1
        await asyncio.sleep(0.3)
        task.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Checked the moment CancelledError arrives, before anything else can run.
        containers, entries = leftovers(workdir)
        return time.monotonic() - started, containers, entries

    took, containers, entries = asyncio.run(scenario())
    assert containers == [] and entries == [], (containers, entries)
    assert took < 15, took


def test_a_timeout_around_run_async_cancels_and_cleans_up(workdir):
    chain = Chainlink([stage("sleep", "30")], workdir=str(workdir))

    async def scenario():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(chain.run_async(), timeout=1.5)
        return leftovers(workdir)

    containers, entries = asyncio.run(scenario())
    assert containers == [] and entries == []


def test_cancelling_one_gathered_run_leaves_the_others_running(workdir):
    chains = [Chainlink([stage("sleep", "1")], workdir=str(workdir)) for _ in range(2)]
    doomed = Chainlink([stage("sleep", "30")], workdir=str(workdir))

    async def scenario():
        tasks = [asyncio.ensure_future(c.run_async()) for c in chains]
        victim = asyncio.ensure_future(doomed.run_async())
        await asyncio.sleep(0.5)
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        return await asyncio.gather(*tasks)

    runs = asyncio.run(scenario())
    assert all(run[0]["success"] for run in runs)
    assert_no_leftovers(workdir)


def test_engine_errors_reach_the_awaiting_task(workdir):
    chain = Chainlink([stage("true"), stage("true", runtime="chainlink-no-such-runtime")], workdir=str(workdir))
    with pytest.raises(EngineError) as caught:
        asyncio.run(chain.run_async())
    assert caught.value.stage == 1 and len(caught.value.results) == 1
    assert_no_leftovers(workdir)
