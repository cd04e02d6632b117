"""run(): the seed's scenarios and the shape of its results."""

from __future__ import annotations

import json
import time

import pytest

from chainlink import Chainlink, EngineError

from conftest import ENTRYPOINT_IMAGE, IMAGE, assert_no_leftovers, stage

RESULT_KEYS = {"data", "killed", "logs", "success", "skipped", "truncated"}


def without_logs(results):
    return [{k: v for k, v in r.items() if k != "logs"} for r in results]


def test_env_printing_stage_then_a_sleep(workdir):
    """The seed's first integration scenario."""
    chain = Chainlink(
        [
            {"image": IMAGE, "entrypoint": ["env"], "env": {"VAR1": "1"}},
            {"image": IMAGE, "entrypoint": ["sleep", "1"]},
        ],
        workdir=str(workdir),
    )
    results = chain.run({"BASE": "base"})
    assert len(results) == 2
    printed, slept = results
    assert printed["success"] and not printed["killed"] and not printed["skipped"]
    lines = printed["logs"]["stdout"].splitlines()
    # `docker logs --timestamps`: every line starts with an RFC 3339 time.
    assert all(line[:4].isdigit() and b"T" in line.split(b" ", 1)[0] for line in lines), lines
    variables = {line.split(b" ", 1)[1] for line in lines}
    assert {b"VAR1=1", b"BASE=base", b"HOSTNAME=container", b"CHAINLINK_IMAGE_VAR=from-image"} <= variables
    assert printed["logs"]["stderr"] == b""
    assert slept["success"] and not slept["killed"]
    assert slept["data"]["ExitCode"] == 0
    assert_no_leftovers(workdir)


def test_results_have_the_seeds_shape(workdir):
    results = Chainlink([stage("echo out; echo err >&2")], workdir=str(workdir)).run()
    assert isinstance(results, list) and len(results) == 1
    result = results[0]
    assert set(result) == RESULT_KEYS
    assert isinstance(result["data"], dict)
    for key in ("Status", "ExitCode", "OOMKilled", "StartedAt", "FinishedAt"):
        assert key in result["data"], key
    assert result["data"]["Status"] == "exited"
    assert result["data"]["OOMKilled"] is False
    assert set(result["logs"]) == {"stdout", "stderr"}
    assert isinstance(result["logs"]["stdout"], bytes) and result["logs"]["stdout"].endswith(b" out\n")
    assert isinstance(result["logs"]["stderr"], bytes) and result["logs"]["stderr"].endswith(b" err\n")
    for flag in ("killed", "success", "skipped", "truncated"):
        assert isinstance(result[flag], bool), flag
    assert (result["killed"], result["success"], result["skipped"], result["truncated"]) == (False, True, False, False)


def test_a_failed_stage_stops_the_chain_and_the_rest_are_skipped(workdir):
    chain = Chainlink(
        [stage("echo before"), stage("exit 3"), stage("echo never"), stage("echo never", logs=False)],
        workdir=str(workdir),
    )
    results = chain.run()
    assert len(results) == 4
    assert results[0]["success"]
    failed = results[1]
    assert not failed["success"] and not failed["killed"] and not failed["skipped"]
    assert failed["data"]["ExitCode"] == 3
    for skipped in results[2:]:
        assert set(skipped) == RESULT_KEYS
        assert skipped["skipped"] and not skipped["success"] and not skipped["killed"]
        assert skipped["data"] is None
    assert results[2]["logs"] == {"stdout": b"", "stderr": b""}
    assert results[3]["logs"] == {"stdout": None, "stderr": None}
    assert_no_leftovers(workdir)


def test_results_without_logs_pass_json_dumps(workdir):
    results = Chainlink([stage("echo hi"), stage("exit 1"), stage("true")], workdir=str(workdir)).run()
    text = json.dumps(without_logs(results))
    assert json.loads(text) == without_logs(results)


def test_logs_false_gives_none(workdir):
    results = Chainlink([stage("echo secret", logs=False), stage("echo kept")], workdir=str(workdir)).run()
    assert results[0]["logs"] == {"stdout": None, "stderr": None}
    assert results[0]["success"]
    assert results[1]["logs"]["stdout"].endswith(b" kept\n")


def test_a_timeout_shorter_than_the_stage_kills_it(workdir):
    chain = Chainlink([stage("sleep", "30", timeout=1), stage("true")], workdir=str(workdir))
    started = time.monotonic()
    results = chain.run()
    elapsed = time.monotonic() - started
    assert results[0]["killed"] and not results[0]["success"]
    assert results[1]["skipped"]
    assert 1.0 <= elapsed < 15, elapsed
    assert_no_leftovers(workdir)


def test_a_timeout_much_shorter_than_the_stage_kills_it(workdir):
    chain = Chainlink([stage("sleep", "30", timeout=0.05)], workdir=str(workdir))
    started = time.monotonic()
    results = chain.run()
    assert results[0]["killed"] and not results[0]["success"] and not results[0]["skipped"]
    assert results[0]["data"]["Status"] == "exited"
    assert time.monotonic() - started < 15
    assert_no_leftovers(workdir)


def test_job_is_shared_between_stages_and_removed_after(workdir):
    chain = Chainlink(
        [
            stage("echo from-stage-0 > /job/note && mkdir /job/dir && echo deep > /job/dir/file"),
            stage("cat /job/note /job/dir/file"),
        ],
        workdir=str(workdir),
    )
    results = chain.run()
    assert [r["success"] for r in results] == [True, True]
    out = [line.split(b" ", 1)[1] for line in results[1]["logs"]["stdout"].splitlines()]
    assert out == [b"from-stage-0", b"deep"]
    assert_no_leftovers(workdir)


def test_each_run_has_a_fresh_job_directory(workdir):
    chain = Chainlink([stage("test ! -e /job/mark && touch /job/mark")], workdir=str(workdir))
    assert chain.run()[0]["success"]
    assert chain.run()[0]["success"]


def test_stage_env_overrides_environ_which_overrides_the_image(workdir):
    chain = Chainlink(
        [stage("echo \"$A $B $CHAINLINK_IMAGE_VAR\"", env={"A": "stage"})],
        workdir=str(workdir),
    )
    out = chain.run({"A": "base", "B": "base", "CHAINLINK_IMAGE_VAR": "base"})[0]["logs"]["stdout"]
    assert out.rstrip().endswith(b"stage base base"), out


def test_seed_keys_hostname_entrypoint_networking_memory_cpuset(workdir):
    chain = Chainlink(
        [
            stage("hostname", hostname="somehost"),
            {"image": ENTRYPOINT_IMAGE},
            stage("ip -o link | grep -v ' lo:' | wc -l", networking=False),
            stage("cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes", memory="64m"),
            stage("true", cpuset_cpus="0"),
        ],
        workdir=str(workdir),
    )
    results = chain.run()
    assert all(r["success"] for r in results), without_logs(results)
    last_word = [r["logs"]["stdout"].rstrip().rsplit(b" ", 1)[-1] for r in results]
    assert last_word[0] == b"somehost"
    assert last_word[1] == b"image-entrypoint"
    assert last_word[2] == b"0"
    assert last_word[3] == str(64 << 20).encode()


def test_extra_keys_output_limit_marks_truncated(workdir):
    chain = Chainlink([stage("for i in $(seq 200); do echo line-$i; done", output_limit="1k")], workdir=str(workdir))
    result = chain.run()[0]
    assert result["success"] and result["truncated"]
    assert b"[chainlink] output truncated" in result["logs"]["stdout"]
    assert len(result["logs"]["stdout"]) < 2048


def test_engine_failure_raises_engine_error_with_partial_results(workdir):
    chain = Chainlink(
        [stage("echo first"), stage("true", tmpfs={"/etc/passwd": ""}), stage("true")],
        workdir=str(workdir),
    )
    with pytest.raises(EngineError) as caught:
        chain.run()
    error = caught.value
    assert "stages[1]" in str(error)
    assert error.stage == 1
    assert len(error.results) == 1
    assert error.results[0]["success"] and error.results[0]["logs"]["stdout"].endswith(b" first\n")
    assert_no_leftovers(workdir)


def test_a_program_that_cannot_start_is_a_failed_stage_not_an_error(workdir):
    chain = Chainlink([stage("true", entrypoint=["/job/a.out"]), stage("true")], workdir=str(workdir))
    results = chain.run()
    assert len(results) == 2
    assert not results[0]["success"] and not results[0]["killed"]
    assert results[0]["data"]["ExitCode"] == 127
    assert b"[chainlink] the stage could not start: " in results[0]["logs"]["stderr"]
    assert results[1]["skipped"]
    assert_no_leftovers(workdir)
