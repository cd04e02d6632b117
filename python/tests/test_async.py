"""run_async(): same results as run(), real concurrency, cleanup on cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from chainlink import Chainlink, EngineError

from conftest import assert_no_leftovers, containers_of, leftovers, running_span, stage


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
    asyncio.run(chains[0].run_async())
    alone = time.monotonic() - started
    started = time.monotonic()
    runs = asyncio.run(gather())
    elapsed = time.monotonic() - started
    overlap, span = running_span(runs)
    print(f"one chain of sleep 2: {alone:.2f} s; 3 gathered: {elapsed:.2f} s, containers running over {span:.2f} s")
    assert all(run[0]["success"] for run in runs)
    # One after the other, the sleeps alone would take 6 s. The engine's clock is the sure
    # measure; the wall clock also counts the engine's API latency, which other suites sharing
    # the engine can stretch (3.6 s idle, 4.5 s at load 9, 6.1 s at load 15 on 2 cores).
    assert overlap, "the three containers never ran at the same moment"
    assert span < 4.0, f"the containers ran over {span:.2f} s"
    assert elapsed < 2 * alone, f"gather took {elapsed:.2f} s, one chain alone {alone:.2f} s"
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


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.01, 0.02, 0.05, 0.1])
def test_cancelling_right_after_the_start_leaves_nothing(workdir, delay):
    """Cancelled while the first container's create is in flight: the engine still makes the
    container, and the cleanup must wait for it rather than remove a name not yet there."""
    chain = Chainlink([stage("sleep", "30"), stage("sleep", "30")], workdir=str(workdir))

    async def scenario():
        task = asyncio.ensure_future(chain.run_async())
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return leftovers(workdir)

    assert asyncio.run(scenario()) == ([], [])


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
    chain = Chainlink([stage("true"), stage("true", tmpfs={"/etc/passwd": ""})], workdir=str(workdir))
    with pytest.raises(EngineError) as caught:
        asyncio.run(chain.run_async())
    assert caught.value.stage == 1 and len(caught.value.results) == 1
    assert_no_leftovers(workdir)
