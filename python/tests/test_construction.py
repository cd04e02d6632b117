"""Construction: the module's surface, input validation, env conversion, images, the engine."""

from __future__ import annotations

import time

import pytest

import chainlink
from chainlink import (
    Chainlink,
    ChainlinkError,
    EngineError,
    EngineUnavailable,
    ImageNotFound,
    InvalidStage,
)

from conftest import IMAGE, assert_no_leftovers, stage


def test_the_module_exports_chainlink_and_a_small_exception_hierarchy():
    assert chainlink.Chainlink is Chainlink
    for exc in (EngineUnavailable, ImageNotFound, InvalidStage, EngineError):
        assert issubclass(exc, ChainlinkError)
    assert issubclass(InvalidStage, ValueError)
    assert not issubclass(EngineError, ValueError)
    assert issubclass(ChainlinkError, Exception)


def test_the_package_is_typed():
    from pathlib import Path

    package = Path(chainlink.__file__).parent
    assert (package / "py.typed").exists()
    assert (package / "_chainlink.pyi").exists()


def test_a_valid_chain_is_built_with_its_images_and_workdir(workdir):
    chain = Chainlink([stage("true"), stage("true"), {"image": "chainlink-test/busybox-entrypoint"}], workdir=str(workdir))
    assert len(chain) == 3
    assert chain.images == [IMAGE, "chainlink-test/busybox-entrypoint"]
    assert chain.workdir == str(workdir)
    # A pathlib.Path is a workdir too.
    assert Chainlink([stage("true")], workdir=workdir).workdir == str(workdir)
    assert_no_leftovers(workdir)


def test_invalid_stages_raise_invalid_stage_listing_every_problem(workdir):
    stages = [
        {"image": IMAGE, "timout": 3, "memory": "lots"},
        {"timeout": "30s", "networking": "yes"},
        {"image": IMAGE, "entrypoint": [], "cpuset_cpus": "a-b"},
    ]
    with pytest.raises(InvalidStage) as caught:
        Chainlink(stages, workdir=str(workdir))
    error = caught.value
    assert isinstance(error, ValueError) and isinstance(error, ChainlinkError)
    message = str(error)
    for expected in (
        "stages[0].timout",
        "did you mean `timeout`",
        "stages[0].memory",
        "stages[1].image",
        "stages[1].timeout",
        "stages[1].networking",
        "stages[2].entrypoint",
        "stages[2].cpuset_cpus",
    ):
        assert expected in message, f"{expected!r} missing from:\n{message}"
    assert message.startswith("7 problems in the chain:"), message
    assert len(error.problems) == 7
    assert all(line in message for line in error.problems)
    # ValueError handlers catch it, as the seed's callers may expect.
    with pytest.raises(ValueError):
        Chainlink([{"image": ""}], workdir=str(workdir))


def test_stages_must_be_a_non_empty_list_of_dicts(workdir):
    with pytest.raises(InvalidStage, match=r"stages: expected a non-empty list of stages, got \[\]"):
        Chainlink([], workdir=str(workdir))
    with pytest.raises(InvalidStage, match="stages: expected a list of stages, got a mapping"):
        Chainlink({"image": IMAGE}, workdir=str(workdir))
    with pytest.raises(InvalidStage, match=r"stages\[0\]: expected a mapping of stage keys"):
        Chainlink([IMAGE], workdir=str(workdir))
    # A tuple is a list.
    assert len(Chainlink((stage("true"),), workdir=str(workdir))) == 1


def test_values_without_a_json_form_are_problems_of_their_key(workdir):
    with pytest.raises(InvalidStage) as caught:
        Chainlink([{"image": IMAGE, "entrypoint": {"sh"}, "hostname": b"box"}, {"image": object()}], workdir=str(workdir))
    message = str(caught.value)
    assert "stages[0].entrypoint: expected str, int, float, bool, None" in message and "type set" in message
    assert "stages[0].hostname" in message and "type bytes" in message
    # Reported once, not again as a missing image.
    assert message.count("stages[1].image") == 1, message


def test_a_bad_workdir_is_invalid(tmp_path):
    with pytest.raises(InvalidStage, match="workdir"):
        Chainlink([stage("true")], workdir=str(tmp_path / "does-not-exist"))


def test_env_values_that_are_int_float_or_bool_become_str(workdir):
    chain = Chainlink(
        [stage("echo \"$I $F $T $S $N\"", env={"I": 1, "F": 2.5, "T": True, "S": "text", "N": False})],
        workdir=str(workdir),
    )
    results = chain.run({"BASE": 10**20})
    out = results[0]["logs"]["stdout"]
    assert out.rstrip().endswith(b"1 2.5 True text False"), out


def test_env_values_of_other_types_raise_type_error_naming_stage_and_key(workdir):
    with pytest.raises(TypeError, match=r"^stages\[0\]\.env\.FOO: expected str, int, float or bool, got list$"):
        Chainlink([{"image": IMAGE, "env": {"FOO": ["a"]}}], workdir=str(workdir))
    with pytest.raises(TypeError, match=r"^stages\[1\]\.env\.BAR: expected str, int, float or bool, got NoneType$"):
        Chainlink([{"image": IMAGE}, {"image": IMAGE, "env": {"BAR": None}}], workdir=str(workdir))
    with pytest.raises(TypeError, match=r"^stages\[0\]\.env: expected str keys, got int$"):
        Chainlink([{"image": IMAGE, "env": {1: "x"}}], workdir=str(workdir))
    chain = Chainlink([stage("true")], workdir=str(workdir))
    with pytest.raises(TypeError, match=r"^environ\.X: expected str, int, float or bool, got dict$"):
        chain.run({"X": {}})
    with pytest.raises(TypeError, match=r"^environ: expected a dict"):
        chain.run([("X", "1")])
    assert_no_leftovers(workdir)


def test_environ_names_are_checked_by_the_library(workdir):
    chain = Chainlink([stage("true")], workdir=str(workdir))
    with pytest.raises(InvalidStage, match="environ"):
        chain.run({"A=B": "1"})
    assert_no_leftovers(workdir)


def test_a_missing_image_raises_image_not_found(workdir):
    missing = "chainlink-test/no-such-image:nope"
    started = time.monotonic()
    with pytest.raises(ImageNotFound) as caught:
        Chainlink([stage("true"), {"image": missing}], workdir=str(workdir))
    assert missing in str(caught.value)
    assert "not pullable and not on the engine" in str(caught.value)
    assert caught.value.images == [missing]
    assert time.monotonic() - started < 30
    assert_no_leftovers(workdir)


def test_an_unreachable_engine_raises_engine_unavailable(workdir, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{workdir}/no-docker.sock")
    with pytest.raises(EngineUnavailable) as caught:
        Chainlink([stage("true")], workdir=str(workdir))
    assert "no-docker.sock" in str(caught.value) or "connect" in str(caught.value)


def test_exceptions_keep_their_attributes_through_pickle():
    import pickle

    for error in (
        InvalidStage("2 problems", problems=["a", "b"]),
        ImageNotFound("gone", images=["x"]),
        EngineError("failed", results=[{"success": True}], stage=1),
        EngineUnavailable("no engine"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert copy.__dict__ == error.__dict__


def test_a_lone_surrogate_is_invalid_at_its_place(workdir):
    with pytest.raises(InvalidStage) as caught:
        Chainlink([{"image": IMAGE, "entrypoint": ["echo", "a\udcff"], "hostname": "h\ud800"}], workdir=str(workdir))
    message = str(caught.value)
    assert "stages[0].entrypoint: expected text that is valid Unicode (no lone surrogates), got " in message, message
    assert "stages[0].hostname: expected text that is valid Unicode" in message, message
    with pytest.raises(InvalidStage, match=r"stages\[0\]\.env: expected text that is valid Unicode .*, got X: 'x\\udcff'"):
        Chainlink([{"image": IMAGE, "env": {"X": "x\udcff"}}], workdir=str(workdir))
    with pytest.raises(InvalidStage, match=r"stages\[0\]: expected keys that are valid Unicode"):
        Chainlink([{"image": IMAGE, "\udcff": 1}], workdir=str(workdir))
    chain = Chainlink([stage("true")], workdir=str(workdir))
    with pytest.raises(InvalidStage, match=r"environ: expected keys that are valid Unicode"):
        chain.run({"A\udcff": "x"})
    with pytest.raises(InvalidStage, match=r"environ: expected text that is valid Unicode"):
        chain.run({"A": "\ud800"})
    assert_no_leftovers(workdir)


def test_numbers_that_are_not_finite_are_invalid_at_their_key(workdir):
    with pytest.raises(InvalidStage) as caught:
        Chainlink(
            [{"image": IMAGE, "timeout": float("nan"), "pids_limit": float("inf")}, {"image": IMAGE, "cpus": float("-inf")}],
            workdir=str(workdir),
        )
    assert caught.value.problems == [
        "stages[0].timeout: expected a finite number, got nan",
        "stages[0].pids_limit: expected a finite number, got inf",
        "stages[1].cpus: expected a finite number, got -inf",
    ]


def test_workdir_may_be_str_bytes_or_path_like(workdir):
    import pathlib

    for given in (str(workdir), bytes(workdir), pathlib.Path(workdir)):
        assert Chainlink([stage("true")], workdir=given).workdir == str(workdir)
    with pytest.raises(TypeError):
        Chainlink([stage("true")], workdir=3)


def test_nul_in_the_runs_environ_is_invalid_before_anything_runs(workdir):
    chain = Chainlink([stage("true")], workdir=str(workdir))
    with pytest.raises(InvalidStage, match=r"environ: expected variable names that are not empty and hold no '=' or NUL, got \"A\\u0000B\""):
        chain.run({"A\0B": "x"})
    with pytest.raises(InvalidStage, match=r"environ: expected values without NUL bytes, got A: "):
        chain.run({"A": "x\0y"})
    assert_no_leftovers(workdir)


def test_an_environ_too_large_for_execve_fails_fast(workdir):
    chain = Chainlink([stage("true")], workdir=str(workdir))
    environ = {f"VAR{i}": "value" for i in range(100_000)}
    started = time.monotonic()
    with pytest.raises(InvalidStage, match=r"environ: expected at most 1048576 bytes of entrypoint and environment for stages\[0\]"):
        chain.run(environ)
    assert time.monotonic() - started < 2
    assert_no_leftovers(workdir)
