//! Every row of docs/bad-input.md: a clear error before any container starts.

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
        (ok(json!({"pids_limit": 0})), "stages[0].pids_limit: expected a positive number of processes, or null for no limit, got 0"),
        (ok(json!({"output_limit": "lots"})), "stages[0].output_limit: expected a number of bytes such as \"16m\" or 1048576, got \"lots\""),
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
    // Problems of the stages and of the workdir come together.
    let mut bad = sh("true");
    bad.image.clear();
    let message = Chain::new(vec![bad], ChainOptions::default().workdir("/sys")).await.unwrap_err().to_string();
    assert!(message.starts_with("invalid chain: 2 problems in the chain:"), "{message}");
}
