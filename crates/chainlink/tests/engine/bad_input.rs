//! Every row of docs/bad-input.md: a clear error before any container starts.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use chainlink::{parse_stages, Chain, ChainOptions, Error};
use serde_json::{json, Value};

use crate::common::*;

/// Builds a chain from `stages` in `workdir` and returns the error's text; asserts that the
/// error is invalid input and that no container was made.
async fn refusal(stages: Value, workdir: &Path) -> String {
    let parsed = match parse_stages(&stages) {
        Ok(stages) => stages,
        Err(problems) => return problems.to_string(),
    };
    let error = Chain::new(parsed, ChainOptions::default().workdir(workdir)).await.unwrap_err();
    assert!(matches!(error, Error::Invalid(_)), "expected invalid input, got: {error}");
    assert_nothing_left(workdir);
    error.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_row_of_the_bad_input_table_is_refused_with_its_message() {
    let dir = workdir();
    let ok = |extra: Value| {
        let mut stage = json!({"image": BUSYBOX});
        for (k, v) in extra.as_object().unwrap() {
            stage[k] = v.clone();
        }
        json!([stage])
    };
    let rows: Vec<(Value, &str)> = vec![
        (json!([{"entrypoint": ["true"]}]), "stages[0].image: expected an image name (the key is required), got nothing"),
        (json!([{"image": ""}]), "stages[0].image: expected an image name such as \"busybox:latest\", got \"\""),
        (ok(json!({"timout": 3})), "stages[0].timout: expected one of the stage keys (did you mean `timeout`?), got an unknown key"),
        (ok(json!({"timeout": "30s"})), "stages[0].timeout: expected a number of seconds above 0 and at most a year, such as 30 or 2.5, got \"30s\""),
        (ok(json!({"timeout": 0})), "stages[0].timeout: expected a number of seconds above 0 and at most a year, such as 30 or 2.5, got 0"),
        (ok(json!({"timeout": -1})), "stages[0].timeout: expected a number of seconds above 0 and at most a year, such as 30 or 2.5, got -1"),
        (ok(json!({"memory": "lots"})), "stages[0].memory: expected a memory size such as \"512m\", \"2g\" or a number of bytes, got \"lots\""),
        (ok(json!({"memory": "1m"})), "stages[0].memory: expected at least 6m, the engine's minimum, got 1m"),
        (ok(json!({"networking": "yes"})), "stages[0].networking: expected true or false, got \"yes\""),
        (ok(json!({"cpuset_cpus": "a-b"})), "stages[0].cpuset_cpus: expected a CPU list such as \"0-3\" or \"0,2\", got \"a-b\""),
        (ok(json!({"cpuset_cpus": "0-999"})), "stages[0].cpuset_cpus: expected CPUs the engine has (0-"),
        (ok(json!({"env": {"A=B": "1"}})), "stages[0].env: expected variable names that are not empty and hold no '=' or NUL, got \"A=B\""),
        (ok(json!({"env": {"N": 1}})), "stages[0].env: expected string values, got N: 1 (quote it: \"1\")"),
        (ok(json!({"entrypoint": []})), "stages[0].entrypoint: expected a non-empty list of strings (omit the key for the image's own), got []"),
        (ok(json!({"entrypoint": "sh -c x"})), "stages[0].entrypoint: expected a list of strings such as [\"sh\", \"-c\", \"echo hi\"], got \"sh -c x\""),
        (json!({"image": BUSYBOX}), "stages: expected a list of stages, got a mapping"),
        (json!([]), "stages: expected a non-empty list of stages, got []"),
        (json!(["busybox"]), "stages[0]: expected a mapping of stage keys, got \"busybox\""),
        (ok(json!({"pids_limit": 0})), "stages[0].pids_limit: expected a number of processes from 1 to 4194304, or null for no limit, got 0"),
        (ok(json!({"pids_limit": i64::MAX})), "stages[0].pids_limit: expected a number of processes from 1 to 4194304, or null for no limit, got 9223372036854775807"),
        (ok(json!({"output_limit": "lots"})), "stages[0].output_limit: expected a number of bytes from 1 to 1g, such as \"16m\" or 1048576, got \"lots\""),
        (ok(json!({"memory": "16000p"})), "stages[0].memory: expected less than 8192p, the engine's largest limit, got 16000p"),
        (ok(json!({"cpus": 0.001})), "stages[0].cpus: expected a number of CPUs of at least 0.01, such as 0.5 or 2, got 0.001"),
        (ok(json!({"entrypoint": [""]})), "stages[0].entrypoint: expected a program to run as the first element, got [\"\"]"),
        (ok(json!({"entrypoint": ["sh", "-c", "a\u{0}b"]})), "stages[0].entrypoint: expected text without NUL bytes, got \"a\\u0000b\""),
        (ok(json!({"user": "-1"})), "stages[0].user: expected a user such as \"1000\", \"1000:1000\" or \"nobody\""),
        (ok(json!({"tmpfs": {"/job/": "size=1m"}})), "stages[0].tmpfs: expected absolute, normalised mount paths other than /, and not in /job, /proc, /sys or /dev, got \"/job/\""),
        (ok(json!({"tmpfs": {"/scratch": "size=lots"}})), "stages[0].tmpfs: expected tmpfs options such as"),
        (ok(json!({"cap_add": ["NOT_A_CAP"]})), "stages[0].cap_add: expected capability names such as \"NET_ADMIN\" or \"CAP_NET_ADMIN\", or \"ALL\", got \"NOT_A_CAP\""),
        (ok(json!({"ulimits": {"bogus": 5}})), "stages[0].ulimits: expected limit names the engine knows"),
        (ok(json!({"ulimits": {"nofile": 99999999999i64}})), "stages[0].ulimits: expected a nofile limit from 0 to 1048576, the kernel's default most, got nofile: 99999999999"),
    ];
    for (input, expected) in rows {
        let message = refusal(input.clone(), dir.path()).await;
        assert!(message.contains(expected), "input {input}\nexpected {expected:?}\ngot {message:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_workdir_is_refused_with_the_stages_problems() {
    for (workdir, why) in [
        ("/nonexistent/chainlink", "got /nonexistent/chainlink (No such file or directory"),
        ("/sys", "got /sys (cannot create a directory in it:"),
        ("/etc/hostname", "got /etc/hostname (not a directory)"),
    ] {
        let error = Chain::new(vec![sh("true")], ChainOptions::default().workdir(workdir)).await.unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&format!("workdir: expected an existing directory this user can write to, {why}")), "{message}");
    }
    // Paths the engine's bind syntax would mangle, existing ones included: refused before any
    // directory is made or any container created (the engine used to mount a U+FFFD path of
    // its own making, and leak it, for the first; refuse the second with its own words).
    let dir = workdir();
    for (name, why) in [
        (std::ffi::OsStr::from_bytes(b"odd\xff"), "(not UTF-8: the engine cannot mount it)"),
        (std::ffi::OsStr::new("a:b"), "(holds ':', which the engine's mount syntax cannot take)"),
    ] {
        let bad = dir.path().join(name);
        std::fs::create_dir(&bad).unwrap();
        let error = Chain::new(vec![sh("true")], ChainOptions::default().workdir(&bad)).await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, chainlink::Error::Invalid(_)), "{message}");
        assert!(message.contains("workdir: expected an existing directory this user can write to") && message.contains(why), "{message}");
        assert_eq!(std::fs::read_dir(&bad).unwrap().count(), 0, "something was made in {}", bad.display());
        std::fs::remove_dir(&bad).unwrap();
    }
    // Problems of the stages and of the workdir come together.
    let mut bad = sh("true");
    bad.image.clear();
    let message = Chain::new(vec![bad], ChainOptions::default().workdir("/sys")).await.unwrap_err().to_string();
    assert!(message.starts_with("invalid chain: 2 problems in the chain:"), "{message}");
}

/// What only the engine's host can answer is refused right after connecting, every problem at
/// once, as invalid input naming the stage and the key, before any container exists.
#[tokio::test(flavor = "multi_thread")]
async fn values_beyond_the_engines_host_are_refused_before_any_container() {
    use chainlink::Engine as _;
    let dir = workdir();
    let info = chainlink::DockerEngine::connect().await.expect("engine").info().await.expect("engine info");
    let runtime = if info.runtimes.iter().any(|r| r == "runsc") { "no-such-runtime" } else { "runsc" };
    let stages = json!([
        {"image": BUSYBOX, "entrypoint": ["true"], "cpus": info.cpus + 1},
        {"image": BUSYBOX, "entrypoint": ["true"], "memory": info.mem_total * 2},
        {"image": BUSYBOX, "entrypoint": ["true"], "runtime": runtime},
        {"image": BUSYBOX, "entrypoint": ["true"], "cpus": info.cpus, "memory": "64m", "runtime": info.runtimes[0]},
    ]);
    let message = refusal(stages, dir.path()).await;
    let expected = [
        format!("stages[0].cpus: expected at most the engine's CPU count ({}), got {}", info.cpus, info.cpus + 1),
        "stages[1].memory: expected at most the engine's memory (".to_string(),
        format!("stages[2].runtime: expected a runtime the engine has ({}), got \"{runtime}\"", info.runtimes.join(", ")),
    ];
    for line in &expected {
        assert!(message.contains(line.as_str()), "expected {line:?} in:\n{message}");
    }
    assert!(message.starts_with("invalid chain: 3 problems in the chain:"), "{message}");
}
