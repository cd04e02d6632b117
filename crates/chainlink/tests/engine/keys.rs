//! Each stage key reaches the container, and each result field says what happened.

use chainlink::{parse_stages, Chain, ChainOptions, Error, Outcome, Stage};
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn results_carry_state_timestamped_output_and_separate_streams() {
    let dir = workdir();
    let chain = chain(vec![sh("echo to-out; echo to-err >&2; echo second-out; exit 0")], dir.path()).await;
    let results = run(&chain).await;
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Exited(0));
    assert!(r.success() && !r.killed() && !r.skipped_stage() && !r.truncated());
    assert_eq!(stdout(r), "to-out\nsecond-out");
    assert_eq!(stderr(r), "to-err");
    // Every line starts with the engine's RFC 3339 timestamp, as `docker logs --timestamps`.
    let raw = String::from_utf8(r.stdout.as_ref().unwrap().bytes.clone()).unwrap();
    for line in raw.lines() {
        let (stamp, _) = line.split_once(' ').unwrap();
        assert!(stamp.len() >= 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{line:?}");
    }
    let state = r.state.as_ref().unwrap();
    for key in ["Status", "Running", "OOMKilled", "Dead", "Pid", "ExitCode", "Error", "StartedAt", "FinishedAt"] {
        assert!(state.contains_key(key), "State lacks {key}: {state:?}");
    }
    assert_eq!(state["Status"], "exited");
    assert_eq!(state["ExitCode"], 0);
    let map = r.to_map_without_logs();
    assert_eq!(map["killed"], false);
    assert_eq!(map["success"], true);
    assert_eq!(map["skipped"], false);
    assert_eq!(map["data"]["ExitCode"], 0);
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_false_keeps_no_output() {
    let dir = workdir();
    let mut stage = sh("echo secret");
    stage.logs = false;
    let results = run(&chain(vec![stage], dir.path()).await).await;
    assert!(results[0].success());
    assert_eq!(results[0].stdout, None);
    assert_eq!(results[0].stderr, None);
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn env_is_layered_image_then_environ_then_stage() {
    let dir = workdir();
    let stage = sh("echo $CHAINLINK_IMAGE_VAR/$BASE_ONLY/$BOTH").env("BOTH", "from-stage");
    let chain = chain(vec![stage, sh("echo $CHAINLINK_IMAGE_VAR")], dir.path()).await;
    let results =
        run_env(&chain, &[("BASE_ONLY", "from-environ"), ("BOTH", "from-environ"), ("CHAINLINK_IMAGE_VAR", "from-environ")])
            .await;
    assert_eq!(stdout(&results[0]), "from-environ/from-environ/from-stage");
    assert_eq!(stdout(&results[1]), "from-environ");
    // Without a base value the image's own stays.
    let plain = run(&chain).await;
    assert_eq!(stdout(&plain[1]), "from-image");
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn hostname_defaults_to_container_and_can_be_set() {
    let dir = workdir();
    let mut named = sh("hostname");
    named.hostname = "grader-7".into();
    let results = run(&chain(vec![sh("hostname"), named], dir.path()).await).await;
    assert_eq!(stdout(&results[0]), "container");
    assert_eq!(stdout(&results[1]), "grader-7");
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_entrypoint_runs_when_none_is_given() {
    let dir = workdir();
    let results = run(&chain(vec![Stage::new(BUSYBOX_ENTRYPOINT)], dir.path()).await).await;
    assert_eq!(stdout(&results[0]), "image-entrypoint");
    // An explicit entrypoint replaces it, with the image's command dropped as with --entrypoint.
    let results =
        run(&chain(vec![Stage::new(BUSYBOX_ENTRYPOINT).entrypoint(["echo", "mine"])], dir.path()).await).await;
    assert_eq!(stdout(&results[0]), "mine");
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_cap_is_set_with_swap_off() {
    let dir = workdir();
    let stages = parse_stages(&json!([{
        "image": BUSYBOX, "memory": "48m",
        "entrypoint": ["sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory.swap.max"]
    }]))
    .unwrap();
    let results = run(&chain(stages, dir.path()).await).await;
    let out = stdout(&results[0]);
    let values: Vec<&str> = out.lines().collect();
    assert_eq!(values[0], (48u64 << 20).to_string(), "{out}");
    // cgroup v1 reports memory+swap (equal to memory: no swap); v2 reports swap alone (0).
    assert!(values.get(1) == Some(&values[0]) || values.get(1) == Some(&"0"), "{out}");
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_over_its_memory_cap_is_oom_killed() {
    let dir = workdir();
    let stages = parse_stages(&json!([
        {"image": BUSYBOX, "memory": "16m", "entrypoint": ["tail", "/dev/zero"]},
        {"image": BUSYBOX, "entrypoint": ["true"]}
    ]))
    .unwrap();
    let results = run(&chain(stages, dir.path()).await).await;
    assert_eq!(results[0].outcome, Outcome::OomKilled);
    assert!(!results[0].success() && !results[0].killed());
    let state = results[0].state.as_ref().unwrap();
    assert_eq!(state["OOMKilled"], true);
    assert_eq!(state["ExitCode"], 137);
    assert_eq!(results[1].outcome, Outcome::Skipped);
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn networking_false_leaves_only_loopback() {
    let dir = workdir();
    let mut offline = sh("ip -o link | cut -d: -f2");
    offline.networking = false;
    let online = sh("ip -o link | cut -d: -f2");
    let results = run(&chain(vec![offline, online], dir.path()).await).await;
    let offline_links: Vec<String> = stdout(&results[0]).lines().map(|l| l.trim().to_string()).collect();
    assert_eq!(offline_links, ["lo"]);
    let online_links = stdout(&results[1]);
    assert!(online_links.contains("lo") && online_links.contains("eth0"), "{online_links}");
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn cpuset_pins_the_stage_and_unknown_cpus_are_refused_before_any_container() {
    let dir = workdir();
    let stages = parse_stages(&json!([
        {"image": BUSYBOX, "cpuset_cpus": "0", "entrypoint": ["sh", "-c", "grep Cpus_allowed_list /proc/self/status; nproc"]},
    ]))
    .unwrap();
    let results = run(&chain(stages, dir.path()).await).await;
    let out = stdout(&results[0]);
    assert!(out.contains("Cpus_allowed_list:\t0\n") || out.starts_with("Cpus_allowed_list:\t0"), "{out:?}");
    assert!(out.ends_with("\n1"), "{out:?}");

    let too_many = parse_stages(&json!([{"image": BUSYBOX, "cpuset_cpus": "0-999"}])).unwrap();
    let error = Chain::new(too_many, ChainOptions::default().workdir(dir.path())).await.unwrap_err();
    let Error::Invalid(problems) = &error else { panic!("expected invalid input, got {error}") };
    assert_eq!(problems.0[0].location(), "stages[0].cpuset_cpus");
    assert!(error.to_string().contains("\"0-999\""), "{error}");
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn privileged_reaches_the_engine() {
    let dir = workdir();
    // Operations that need privilege: a mount namespace, and changing a link's MTU
    // (`ip link set lo up` would prove nothing: lo is already up).
    let ops = "unshare --mount true && ip link set lo mtu 1280 && echo privileged-ops-ok";
    let unprivileged = run(&chain(vec![sh(ops)], dir.path()).await).await;
    assert!(!unprivileged[0].success(), "ops must fail without privilege: {}", stdout(&unprivileged[0]));

    let mut privileged = sh(ops);
    privileged.privileged = true;
    let chain = chain(vec![sh("echo before"), privileged], dir.path()).await;
    if engine_allows_privileged() {
        let results = run(&chain).await;
        assert!(results[1].success(), "{}", stderr(&results[1]));
        assert_eq!(stdout(&results[1]), "privileged-ops-ok");
    } else {
        // This engine refuses privileged containers (a sandbox withholding a capability):
        // the flag reached it, and the refusal is an error naming the stage, not a pass.
        let error = expect_error(chain.run(&Default::default()).await);
        let Error::Stage { index, results, .. } = &error else { panic!("expected a stage error, got {error}") };
        assert_eq!(*index, 1);
        assert_eq!(results.len(), 1, "the stage before is kept");
        assert_eq!(stdout(&results[0]), "before");
        let message = error.to_string();
        assert!(message.starts_with("failed to run stages[1] (chainlink-test/busybox):"), "{message}");
        assert!(message.contains("caps") || message.contains("privileged"), "{message}");
    }
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn added_capabilities_allow_what_privilege_would() {
    let dir = workdir();
    let mut with_caps = sh("unshare --mount true && ip link set lo mtu 1280 && echo ok");
    with_caps.cap_add = vec!["SYS_ADMIN".into(), "NET_ADMIN".into()];
    let results = run(&chain(vec![with_caps], dir.path()).await).await;
    assert!(results[0].success(), "{}", stderr(&results[0]));
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn output_without_a_final_newline_is_kept_every_time() {
    // The engine's follow stream can end before it writes a last partial line; ten stages make
    // a lost line all but certain to show if the runner does not read the rest.
    let dir = workdir();
    let stages = (0..10).map(|i| sh(&format!("printf 'partial-{i}'; printf 'err-{i}' >&2"))).collect();
    let results = run(&chain(stages, dir.path()).await).await;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(stdout(r), format!("partial-{i}"), "stage {i}");
        assert_eq!(stderr(r), format!("err-{i}"), "stage {i}");
    }
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relative_workdir_is_taken_from_the_current_directory() {
    let dir = tempfile::Builder::new().prefix("chainlink-test-rel-").tempdir_in(".").unwrap();
    let relative = dir.path().strip_prefix(std::env::current_dir().unwrap()).unwrap_or(dir.path()).to_path_buf();
    assert!(relative.is_relative());
    let chain = chainlink::Chain::new(vec![sh("echo ok > /job/f; cat /job/f")], chainlink::ChainOptions::default().workdir(&relative))
        .await
        .unwrap();
    assert!(chain.options().workdir.is_absolute());
    let results = run(&chain).await;
    assert_eq!(stdout(&results[0]), "ok");
    assert_nothing_left(dir.path());
}
