//! The isolation keys beyond the seed's reach the container and do what `docker run` does.

use chainlink::{parse_stages, Outcome};
use serde_json::{json, Value};

use crate::common::*;

async fn run_json(stages: Value) -> Vec<chainlink::StageResult> {
    let dir = workdir();
    let stages = parse_stages(&stages).unwrap_or_else(|e| panic!("{e}"));
    let results = run(&chain(stages, dir.path()).await).await;
    assert_nothing_left(dir.path());
    results
}

#[tokio::test(flavor = "multi_thread")]
async fn defaults_limit_processes_and_switch_core_dumps_off() {
    let results = run_json(json!([{"image": BUSYBOX, "entrypoint": ["sh", "-c",
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; grep 'core file' /proc/self/limits | tr -s ' ' | cut -d' ' -f5,6"]}]))
    .await;
    assert_eq!(stdout(&results[0]), "1024\n0 0");
}

#[tokio::test(flavor = "multi_thread")]
async fn pids_limit_cpus_and_ulimits_are_applied() {
    let results = run_json(json!([{"image": BUSYBOX, "pids_limit": 64, "cpus": 0.5, "ulimits": {"nofile": 256, "core": {"soft": 0, "hard": 1024}},
        "entrypoint": ["sh", "-c",
        "cat /sys/fs/cgroup/pids/pids.max; cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max; ulimit -n; grep 'core file' /proc/self/limits | tr -s ' ' | cut -d' ' -f5,6"]}]))
    .await;
    let out = stdout(&results[0]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "64", "{out}");
    // Half a CPU: quota is half the period (v1: two lines; v2: "quota period").
    let numbers: Vec<f64> = lines[1..lines.len() - 2].join(" ").split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(numbers[0] / numbers[1], 0.5, "{out}");
    assert_eq!(lines[lines.len() - 2], "256");
    assert_eq!(lines[lines.len() - 1], "0 1024", "core: soft 0, hard 1024 bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn user_runs_the_stage_as_that_user_and_job_stays_writable() {
    let results = run_json(json!([{"image": BUSYBOX, "user": "65534:65534",
        "entrypoint": ["sh", "-c", "id -u; id -g; echo hi > /job/mine && cat /job/mine"]}]))
    .await;
    assert_eq!(stdout(&results[0]), "65534\n65534\nhi");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_root_keeps_job_and_a_small_tmp_writable() {
    let results = run_json(json!([{"image": BUSYBOX, "read_only": true, "entrypoint": ["sh", "-c",
        "touch /etc/x 2>/dev/null && echo root-writable || echo root-read-only; touch /tmp/x && echo tmp-ok; touch /job/x && echo job-ok"]}]))
    .await;
    assert_eq!(stdout(&results[0]), "root-read-only\ntmp-ok\njob-ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn tmpfs_mounts_are_made() {
    let results = run_json(json!([{"image": BUSYBOX, "tmpfs": {"/scratch": "size=8m"},
        "entrypoint": ["sh", "-c", "grep ' /scratch ' /proc/mounts | cut -d' ' -f1,3"]}]))
    .await;
    assert_eq!(stdout(&results[0]), "tmpfs tmpfs");
}

#[tokio::test(flavor = "multi_thread")]
async fn cap_drop_and_no_new_privileges_are_applied() {
    let results = run_json(json!([{"image": BUSYBOX, "cap_drop": ["CHOWN"], "no_new_privileges": true,
        "entrypoint": ["sh", "-c", "grep NoNewPrivs /proc/self/status | tr -d '\\t'; touch /tmp/f; chown 65534 /tmp/f && echo chown-ok || echo chown-denied"]}]))
    .await;
    assert_eq!(stdout(&results[0]).replace(' ', ""), "NoNewPrivs:1\nchown-denied");
}

/// What only the image can tell (a user name, whether the program exists and can run) is the
/// stage's failure, never the engine's: a failed stage with the exit code a shell would give,
/// the engine's reason in its stderr, and the later stages skipped.
#[tokio::test(flavor = "multi_thread")]
async fn a_program_that_cannot_start_is_a_failed_stage() {
    let dir = workdir();
    for (stage, code, reason) in [
        (json!({"image": BUSYBOX, "user": "no-such-user", "entrypoint": ["true"]}), 126, "unable to find user no-such-user"),
        (json!({"image": BUSYBOX, "entrypoint": ["/job/a.out"]}), 127, "no such file or directory"),
        (json!({"image": BUSYBOX, "entrypoint": ["/etc/passwd"]}), 126, "permission denied"),
    ] {
        let stages = parse_stages(&json!([stage, {"image": BUSYBOX, "entrypoint": ["true"]}])).unwrap();
        let results = run(&chain(stages, dir.path()).await).await;
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].outcome, chainlink::Outcome::StartFailed(code), "{}", stderr(&results[0]));
        assert!(!results[0].success() && !results[0].killed());
        assert_eq!(results[0].exit_code(), Some(code));
        let said = stderr(&results[0]);
        assert!(said.starts_with("[chainlink] the stage could not start: ") && said.contains(reason), "{said}");
        assert!(results[1].skipped_stage());
        assert_nothing_left(dir.path());
    }
}

/// A configuration the engine refuses at start (here a tmpfs over a file of the image) stays
/// an engine error naming the stage.
#[tokio::test(flavor = "multi_thread")]
async fn a_configuration_the_engine_refuses_at_start_is_an_engine_error_naming_the_stage() {
    let dir = workdir();
    let stages = parse_stages(&json!([{"image": BUSYBOX, "tmpfs": {"/etc/passwd": ""}, "entrypoint": ["true"]}])).unwrap();
    let error = expect_error(chain(stages, dir.path()).await.run(&Default::default()).await);
    let message = error.to_string();
    assert!(message.starts_with("failed to run stages[0]"), "{message}");
    assert!(message.contains("/etc/passwd"), "{message}");
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn tty_merges_the_streams_into_stdout() {
    let results = run_json(json!([
        {"image": BUSYBOX, "tty": true, "entrypoint": ["sh", "-c", "echo out; echo err >&2; [ -t 1 ] && echo is-a-tty"]}
    ]))
    .await;
    let out = stdout(&results[0]).replace('\r', "");
    assert_eq!(out, "out\nerr\nis-a-tty");
    assert_eq!(stderr(&results[0]), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn output_past_the_limit_is_dropped_and_marked() {
    let results = run_json(json!([{"image": BUSYBOX, "output_limit": "4k",
        "entrypoint": ["sh", "-c", "seq 1 5000; echo small >&2"]}]))
    .await;
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Exited(0), "the stage keeps running past the limit");
    assert!(r.truncated());
    let out = r.stdout.as_ref().unwrap();
    assert!(out.bytes.len() <= 4096 + 200, "{}", out.bytes.len());
    let text = stdout(r);
    assert!(text.starts_with("1\n2\n3\n"), "the beginning is kept");
    let last = text.lines().last().unwrap();
    assert!(last.starts_with("[chainlink] output truncated:") && last.contains(&format!("{} bytes dropped", out.dropped)), "{last}");
    assert!(out.dropped > 0);
    assert!(!r.stderr.as_ref().unwrap().truncated(), "each stream has its own limit");
    assert_eq!(r.to_map_without_logs()["truncated"], true);
}
