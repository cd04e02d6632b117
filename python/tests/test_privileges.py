"""Privileged mode, and the namespace and network operations the seed's tests made with it.

This suite's engine may refuse privileged containers (a sandbox without CAP_SYS_RESOURCE:
"unable to apply caps"); a probe finds out once. Where refused, the refusal must come back as an
EngineError naming the stage, and the same operations are shown with ``cap_add`` instead."""

from __future__ import annotations

import pytest

from chainlink import Chainlink, EngineError

from conftest import assert_no_leftovers, stage

NAMESPACE_OPS = "unshare -m true && mkdir -p /mnt/t && mount -t tmpfs none /mnt/t"
NETWORK_OPS = "ip link set lo down && ip link set lo up"


def test_privileged_stage_runs_or_is_refused_as_an_engine_error_naming_the_stage(workdir, privileged_probe):
    allowed, _ = privileged_probe
    chain = Chainlink(
        [stage("echo before"), stage(NAMESPACE_OPS + " && " + NETWORK_OPS, privileged=True)],
        workdir=str(workdir),
    )
    if allowed:
        results = chain.run()
        assert [r["success"] for r in results] == [True, True]
    else:
        with pytest.raises(EngineError) as caught:
            chain.run()
        error = caught.value
        assert "stages[1]" in str(error), str(error)
        assert error.stage == 1
        assert [r["success"] for r in error.results] == [True]
    assert_no_leftovers(workdir)


def test_the_probe_refusal_names_stage_zero(privileged_probe):
    allowed, refusal = privileged_probe
    if allowed:
        pytest.skip("this engine runs privileged containers")
    assert isinstance(refusal, EngineError)
    assert "stages[0]" in str(refusal) and refusal.stage == 0 and refusal.results == []


@pytest.mark.parametrize(
    "ops, capability",
    [(NAMESPACE_OPS, "SYS_ADMIN"), (NETWORK_OPS, "NET_ADMIN")],
    ids=["namespace", "network"],
)
def test_namespace_and_network_operations_need_their_capability(workdir, ops, capability):
    with_cap = Chainlink([stage(ops, cap_add=[capability])], workdir=str(workdir)).run()[0]
    assert with_cap["success"], with_cap["logs"]
    without = Chainlink([stage(ops)], workdir=str(workdir)).run()[0]
    assert not without["success"] and not without["killed"]
    assert without["data"]["ExitCode"] != 0
    assert b"not permitted" in without["logs"]["stderr"] or b"denied" in without["logs"]["stderr"], without["logs"]
    assert_no_leftovers(workdir)


def test_network_operations_work_without_networking(workdir):
    result = Chainlink([stage(NETWORK_OPS, networking=False, cap_add=["NET_ADMIN"])], workdir=str(workdir)).run()[0]
    assert result["success"], result["logs"]
