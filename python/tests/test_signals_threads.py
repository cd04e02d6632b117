"""Ctrl-C and SIGTERM during run(), and run() where there is no event loop."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import subprocess
import sys
import textwrap
import threading
import time

from chainlink import Chainlink

from conftest import IMAGE, assert_no_leftovers, containers_of, leftovers, running_span, stage, wait_for

SCRIPT = textwrap.dedent(
    """
    import sys
    from chainlink import Chainlink

    chain = Chainlink(
        [{"image": %r, "entrypoint": ["sleep", "30"]}, {"image": %r, "entrypoint": ["true"]}],
        workdir=sys.argv[1],
    )
    print("running", flush=True)
    chain.run()
    print("finished", flush=True)
    """
) % (IMAGE, IMAGE)


def test_ctrl_c_during_run_cleans_up_and_raises_keyboard_interrupt(workdir):
    child = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job starts with SIGINT ignored, and Python then keeps it ignored:
        # give the child the default disposition, so that it installs its KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert child.stdout.readline().strip() == "running"
        assert wait_for(lambda: bool(containers_of(workdir)), timeout=20), "the stage never started"
        time.sleep(0.3)
        started = time.monotonic()
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # An uncaught KeyboardInterrupt: Python's traceback, and death by SIGINT (3.8+).
    assert "KeyboardInterrupt" in stderr, stderr
    assert child.returncode in (-signal.SIGINT, 130), (child.returncode, stderr)
    assert "finished" not in stdout
    assert took < 15, took
    assert_no_leftovers(workdir)


def test_ctrl_c_can_be_caught_and_the_chain_run_again(workdir):
    """In-process: the interrupt arrives while run() waits, the caller catches it, and the same
    chain still runs."""
    chain = Chainlink([stage("sleep", "30")], workdir=str(workdir))
    # Python's own handler, even where this process started with SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        chain.run()
    except KeyboardInterrupt:
        interrupted = True
    else:  # pragma: no cover
        interrupted = False
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert interrupted
    assert time.monotonic() - started < 15
    assert leftovers(workdir) == ([], [])
    assert Chainlink([stage("true")], workdir=str(workdir)).run()[0]["success"]
    assert_no_leftovers(workdir)


def test_run_needs_no_event_loop_in_a_plain_thread(workdir):
    outcome = {}

    def work():
        try:
            asyncio.get_event_loop()
        except RuntimeError:
            outcome["loop"] = None
        else:  # pragma: no cover - some Python versions make one on demand
            outcome["loop"] = "made one"
        chain = Chainlink([stage("echo threaded")], workdir=str(workdir))
        outcome["results"] = chain.run()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    assert outcome["loop"] is None
    assert outcome["results"][0]["success"]
    assert outcome["results"][0]["logs"]["stdout"].endswith(b" threaded\n")
    assert_no_leftovers(workdir)


def test_runs_in_threads_go_on_at_the_same_time_with_the_gil_released(workdir):
    chains = [Chainlink([stage("sleep", "2")], workdir=str(workdir)) for _ in range(3)]
    results = [None] * 3
    ticks = []

    def work(i):
        results[i] = chains[i].run()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    started = time.monotonic()
    for t in threads:
        t.start()
    # The main thread keeps running Python code while the runs wait: the GIL is free.
    while any(t.is_alive() for t in threads):
        ticks.append(time.monotonic())
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    assert all(r[0]["success"] for r in results)
    overlap, span = running_span(results)
    print(f"3 chains of sleep 2 in threads: {elapsed:.2f} s, containers running over {span:.2f} s")
    assert overlap and span < 4.0, span  # one after the other: over 6 s of sleep alone
    assert len(ticks) > 50
    assert_no_leftovers(workdir)


_INHERITED: dict = {}


def _run_in_child(_):
    return _INHERITED["chain"].run()[0]["logs"]["stdout"]


def test_forked_children_run_chains_made_before_the_fork(workdir):
    """multiprocessing's fork start method: the child has none of the runtime's threads and must
    make its own."""
    import multiprocessing

    chain = Chainlink([stage("echo forked")], workdir=str(workdir))
    assert chain.run()[0]["success"]  # the parent's runtime exists before the fork
    _INHERITED["chain"] = chain  # inherited by the children, not pickled
    context = multiprocessing.get_context("fork")
    try:
        with context.Pool(2) as pool:
            outputs = pool.map_async(_run_in_child, range(4)).get(60)
    finally:
        _INHERITED.clear()
    assert all(out.endswith(b" forked\n") for out in outputs)
    assert_no_leftovers(workdir)


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import asyncio, signal, sys
    from chainlink import Chainlink

    chain = Chainlink([{"image": %r, "entrypoint": ["sleep", "60"], "timeout": 120}], workdir=sys.argv[1])
    if sys.argv[2] == "own":
        def own(signum, frame):
            print("own handler", flush=True)
            raise SystemExit(7)
        signal.signal(signal.SIGTERM, own)
    print("running", flush=True)
    if sys.argv[2] == "async":
        asyncio.run(chain.run_async())
    else:
        chain.run()
    print("finished", flush=True)
    """
) % (IMAGE,)


def _sigterm_mid_stage(workdir, mode):
    """Runs SIGTERM_SCRIPT in `mode`, sends SIGTERM once its stage runs: (returncode, stdout,
    stderr, seconds from the signal to the end)."""
    child = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT, str(workdir), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "running"
        assert wait_for(lambda: bool(containers_of(workdir)), timeout=30), "the stage never started"
        time.sleep(0.3)
        started = time.monotonic()
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=30)
        return child.returncode, stdout, stderr, time.monotonic() - started
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("how", ["sync", "async"])
def test_sigterm_during_a_run_cleans_up_and_the_process_dies_by_sigterm(workdir, how):
    code, stdout, stderr, took = _sigterm_mid_stage(workdir, how)
    assert code == -signal.SIGTERM, (code, stderr)
    assert "finished" not in stdout
    assert took < 15, took
    assert_no_leftovers(workdir)


def test_a_programs_own_sigterm_handler_is_kept(workdir):
    """Its handler runs (raising SystemExit inside run(), which stops the run and cleans up)."""
    code, stdout, stderr, took = _sigterm_mid_stage(workdir, "own")
    assert code == 7, (code, stderr)
    assert "own handler" in stdout and "finished" not in stdout
    assert took < 15, took
    assert_no_leftovers(workdir)


def test_the_sigterm_handler_is_installed_only_from_the_main_thread(workdir):
    script = textwrap.dedent(
        """
        import signal, sys, threading
        from chainlink import Chainlink

        chain = Chainlink([{"image": %r, "entrypoint": ["true"]}], workdir=sys.argv[1])
        thread = threading.Thread(target=chain.run)
        thread.start()
        thread.join()
        print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
        chain.run()
        print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
        """
    ) % (IMAGE,)
    done = subprocess.run([sys.executable, "-c", script, str(workdir)], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"], done.stdout
    assert_no_leftovers(workdir)


def test_signals_sent_to_the_process_reach_the_main_thread(workdir):
    """The native threads block the signals a process is sent, so the kernel hands them to the
    main thread, the only one where Python runs handlers: otherwise a main thread blocked in a
    lock (a multiprocessing worker told to stop with SIGTERM) might never see one."""
    chain = Chainlink([stage("true")], workdir=str(workdir))
    assert chain.run()[0]["success"]
    native = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as comm:
            if not comm.read().startswith("chainlink"):
                continue
        with open(f"/proc/self/task/{tid}/status") as status:
            blocked = next(int(line.split()[1], 16) for line in status if line.startswith("SigBlk:"))
        native.append(blocked)
    assert native, "no native threads found"
    for blocked in native:
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            assert blocked & (1 << (number - 1)), (hex(blocked), number)
        assert not blocked & (1 << (signal.SIGSEGV - 1))
    assert_no_leftovers(workdir)


EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from chainlink import Chainlink
    chains = [Chainlink([{"image": "chainlink-test/busybox", "entrypoint": ["sh", "-c", "echo $0", str(i)]}] * 3,
                        workdir=sys.argv[1]) for i in range(8)]
    async def main(in_flight):
        if in_flight:
            # Started, never awaited: still running when the interpreter exits.
            for chain in chains:
                asyncio.get_running_loop().create_task(chain.run_async())
            await asyncio.sleep(0.5)
            return "left"
        return [r[2]["success"] for r in await asyncio.gather(*(c.run_async() for c in chains))]
    print(asyncio.run(main(sys.argv[2] == "in-flight")), flush=True)
    """
)


@pytest.mark.parametrize("mode", ["awaited", "in-flight"])
def test_the_interpreter_exits_cleanly_after_runs_on_an_event_loop(workdir, mode):
    """8 chains of 3 stages under asyncio.gather, then the script returns: its exit used to
    abort one time in four to eight (SIGABRT, "PyGILState_Release: thread state ... must be
    current when releasing", a result delivered while the interpreter finalized). With runs
    still in flight at exit, they are cancelled and cleaned up before it finalizes."""
    for attempt in range(6):
        done = subprocess.run(
            [sys.executable, "-c", EXIT_SCRIPT, str(workdir), mode], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"attempt {attempt}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert "Fatal Python error" not in done.stderr, done.stderr
        assert done.stdout.strip() == ("left" if mode == "in-flight" else str([True] * 8)), done.stdout
        assert_no_leftovers(workdir)
