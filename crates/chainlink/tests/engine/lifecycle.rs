//! The life of a run: /job, stopping on failure, timeouts, engine errors, cancellation,
//! concurrency, and cleanup on each of those paths.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chainlink::engine::Engine;
use chainlink::{CancellationToken, DockerEngine, Error, Event, Outcome, RunControl};

use chainlink::workspace::private_dir;
use std::os::unix::fs::PermissionsExt;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn job_is_shared_between_stages_and_gone_after_the_run() {
    let dir = workdir();
    let chain = chain(
        vec![
            sh("mkdir -p /job/out && echo 41 > /job/out/n && chmod 000 /job/out/n"),
            sh("echo $(( $(cat /job/out/n) + 1 )) > /job/answer"),
            sh("cat /job/answer; ls -ld /job | cut -c1-10"),
        ],
        dir.path(),
    )
    .await;
    let results = run(&chain).await;
    assert!(results.iter().all(|r| r.success()), "{results:?}");
    assert_eq!(stdout(&results[2]), "42\ndrwxrwxrwx");
    // A second run starts from an empty /job.
    let again = run(&crate::common::chain(vec![sh("ls -A /job | wc -l")], dir.path()).await).await;
    assert_eq!(stdout(&again[0]).trim(), "0");
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_failing_stage_stops_the_chain() {
    let dir = workdir();
    let chain = chain(vec![sh("echo one"), sh("echo two; exit 3"), sh("echo three"), sh("echo four")], dir.path()).await;
    let results = run(&chain).await;
    assert_eq!(results.len(), 4, "one result per stage");
    assert_eq!(results.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(results[0].outcome, Outcome::Exited(0));
    assert_eq!(results[1].outcome, Outcome::Exited(3));
    assert_eq!(stdout(&results[1]), "two", "a failed stage keeps its output");
    assert_eq!(results[1].state.as_ref().unwrap()["ExitCode"], 3);
    for skipped in &results[2..] {
        assert_eq!(skipped.outcome, Outcome::Skipped);
        assert!(skipped.skipped_stage() && !skipped.success() && !skipped.killed());
        assert_eq!(skipped.state, None);
        assert_eq!(stdout(skipped), "");
        assert_eq!(skipped.to_map_without_logs()["data"], serde_json::Value::Null);
    }
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_kills_the_stage_and_keeps_its_output() {
    let dir = workdir();
    let chain = chain(
        vec![sh("echo started; sleep 20").timeout(secs(2.0)), sh("echo never")],
        dir.path(),
    )
    .await;
    let begun = Instant::now();
    let results = run(&chain).await;
    let took = begun.elapsed();
    assert!(took < Duration::from_millis(4500), "a 2 s timeout took {took:?}");
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert_eq!(results[0].outcome, Outcome::TimedOut);
    assert!(results[0].killed() && !results[0].success());
    assert_eq!(results[0].to_map_without_logs()["killed"], true);
    assert_eq!(stdout(&results[0]), "started");
    assert_eq!(results[0].state.as_ref().unwrap()["ExitCode"], 137);
    assert_eq!(results[1].outcome, Outcome::Skipped);
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn fractional_timeouts_and_child_processes_are_killed_too() {
    let dir = workdir();
    let chain = chain(vec![sh("sleep 100 & sleep 100").timeout(secs(0.5))], dir.path()).await;
    let begun = Instant::now();
    let results = run(&chain).await;
    assert!(results[0].killed());
    assert!(begun.elapsed() < Duration::from_secs(3), "{:?}", begun.elapsed());
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_error_names_the_stage_and_keeps_earlier_results() {
    // A configuration the engine refuses when it starts the container: a tmpfs over a file.
    fn refused_at_start() -> Stage {
        let mut stage = Stage::new(BUSYBOX).entrypoint(["true"]);
        stage.tmpfs.insert("/etc/passwd".into(), String::new());
        stage
    }
    let dir = workdir();
    let chain = chain(
        vec![sh("echo fine > /job/f; echo fine"), refused_at_start(), sh("true")],
        dir.path(),
    )
    .await;
    let error = expect_error(chain.run(&Default::default()).await);
    let Error::Stage { index, image, results, source } = &error else { panic!("expected a stage error, got {error}") };
    assert_eq!((*index, image.as_str()), (1, BUSYBOX));
    assert_eq!(results.len(), 1);
    assert_eq!(stdout(&results[0]), "fine");
    assert!(source.message.contains("/etc/passwd"), "{source}");
    assert!(error.to_string().starts_with("failed to run stages[1] (chainlink-test/busybox): "), "{error}");
    assert_nothing_left(dir.path());
}

use chainlink::Stage;

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_engine_is_named_with_what_to_check() {
    let error = DockerEngine::connect_to("unix:///nonexistent/docker.sock").await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("unix:///nonexistent/docker.sock"), "{message}");
    assert!(message.contains("daemon is running"), "{message}");
    assert!(message.contains("docker group"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_fails_construction_with_the_pull_reason() {
    let dir = workdir();
    let error = chainlink::Chain::new(
        vec![sh("true"), Stage::new("chainlink-test/does-not-exist:1")],
        chainlink::ChainOptions::default().workdir(dir.path()),
    )
    .await
    .unwrap_err();
    let Error::ImagesUnavailable(failures) = &error else { panic!("expected an image error, got {error}") };
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].image, "chainlink-test/does-not-exist:1");
    assert!(!failures[0].reason.is_empty());
    assert!(error.to_string().contains("chainlink-test/does-not-exist:1"), "{error}");
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_input_is_refused_whole_before_the_engine_is_touched() {
    let missing = std::path::PathBuf::from("/nonexistent/workdir");
    let mut bad = Stage::new("");
    bad.timeout = Duration::ZERO;
    let error = chainlink::Chain::new(vec![sh("true"), bad], chainlink::ChainOptions::default().workdir(&missing))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("stages[1].image"), "{message}");
    assert!(message.contains("stages[1].timeout"), "{message}");
    assert!(message.contains("workdir: expected an existing directory"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_run_removes_the_running_container_and_the_job_directory() {
    let dir = workdir();
    let chain = chain(vec![sh("touch /job/x; sleep 30")], dir.path()).await;
    let cancel = CancellationToken::new();
    let started = Arc::new(tokio::sync::Notify::new());
    let notify = started.clone();
    let control = RunControl {
        cancel: cancel.clone(),
        events: Some(Arc::new(move |event: &Event| {
            if matches!(event, Event::StageStarted { .. }) {
                notify.notify_one();
            }
        })),
    };
    let running = tokio::spawn(async move { chain.run_with(&Default::default(), control).await });
    started.notified().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!leftovers(dir.path()).is_empty(), "the stage should be running");
    let begun = Instant::now();
    cancel.cancel();
    let error = running.await.unwrap().unwrap_err();
    assert!(matches!(error, Error::Cancelled { .. }), "{error}");
    assert!(begun.elapsed() < Duration::from_secs(5));
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_run_future_still_cleans_up() {
    let dir = workdir();
    let chain = chain(vec![sh("touch /job/x; sleep 30")], dir.path()).await;
    let outcome = tokio::time::timeout(Duration::from_secs(2), chain.run(&Default::default())).await;
    assert!(outcome.is_err(), "the run should still be going when dropped");
    // The guard's Drop removed everything before the drop returned.
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn several_chains_run_at_once_each_with_its_own_job() {
    let dir = workdir();
    let chains: Vec<_> = futures_util::future::join_all((0..4).map(|i| {
        let path = dir.path().to_path_buf();
        async move {
            chain(vec![sh(&format!("echo chain-{i} > /job/id; sleep 2")), sh("cat /job/id; ls /job | wc -l")], &path).await
        }
    }))
    .await;
    let all = futures_util::future::join_all(chains.iter().map(|c| run(c))).await;
    for (i, results) in all.iter().enumerate() {
        assert_eq!(stdout(&results[1]), format!("chain-{i}\n1"));
    }
    // The engine's own clock says the four sleeping stages ran at the same time: the latest
    // start comes before the earliest finish.
    let (starts, finishes): (Vec<f64>, Vec<f64>) = all
        .iter()
        .map(|results| {
            let state = results[0].state.as_ref().unwrap();
            (seconds_of_day(&state["StartedAt"]), seconds_of_day(&state["FinishedAt"]))
        })
        .unzip();
    let latest_start = starts.iter().cloned().fold(f64::MIN, f64::max);
    let earliest_finish = finishes.iter().cloned().fold(f64::MAX, f64::min);
    assert!(latest_start < earliest_finish, "not concurrent: starts {starts:?}, finishes {finishes:?}");
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn events_tell_the_life_of_each_stage_in_order() {
    let dir = workdir();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink_seen = seen.clone();
    let chain = chain(vec![sh("echo a; echo b"), sh("exit 1"), sh("true")], dir.path()).await;
    let control = RunControl {
        events: Some(Arc::new(move |event: &Event| {
            let line = match event {
                Event::StageStarted { index, total, .. } => format!("start {index}/{total}"),
                Event::Output { index, bytes, .. } => format!("out {index} {}", text(bytes)),
                Event::StageFinished { index, outcome, .. } => format!("end {index} {outcome:?}"),
                Event::StageSkipped { index, .. } => format!("skip {index}"),
                other => format!("{other:?}"),
            };
            sink_seen.lock().unwrap().push(line);
        })),
        ..Default::default()
    };
    chain.run_with(&Default::default(), control).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, ["start 0/3", "out 0 a", "out 0 b", "end 0 Exited(0)", "start 1/3", "end 1 Exited(1)", "skip 2"]);
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_removes_runs_whose_lock_is_free_and_never_a_live_one() {
    let dir = workdir();
    // A run directory as a runner makes it, whose runner is gone: its lock is free.
    let run = "999999999-00000000000000ab";
    let run_dir = private_dir(dir.path()).join(format!("chainlink-run-{run}"));
    std::fs::create_dir_all(run_dir.join("job/nested")).unwrap();
    std::fs::set_permissions(private_dir(dir.path()), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(run_dir.join("lock"), format!("{run}\n{}\n", u64::MAX)).unwrap();
    // Its container is labelled with a deadline far ahead: the free lock alone proves it over.
    let id = docker(&[
        "create", "--label", "org.chainlink.managed=true", "--label", &format!("org.chainlink.run={run}"),
        "--label", &format!("org.chainlink.run-dir={}", run_dir.display()),
        "--label", &format!("org.chainlink.deadline={}", u64::MAX / 2),
        "-v", &format!("{}:/job", run_dir.join("job").display()), BUSYBOX, "true",
    ]);
    let id = id.trim();
    // A live run of this process must survive the sweep.
    let chain = chain(vec![sh("sleep 3")], dir.path()).await;
    let live = tokio::spawn({
        let chain = chain.clone();
        async move { chain.run(&Default::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let engine = DockerEngine::connect().await.unwrap();
    let report = chainlink::sweep_dead_runs(&engine, dir.path(), &[BUSYBOX.to_string()]).await.unwrap();
    assert!(report.containers.iter().any(|c| c.starts_with(id) || id.starts_with(c.as_str())), "{report:?}");
    assert_eq!(report.directories, [run_dir]);
    assert!(report.failures.is_empty(), "{report:?}");
    let results = live.await.unwrap().expect("the live run was not disturbed");
    assert!(results[0].success());
    assert!(engine.list_labelled(&format!("org.chainlink.run={run}")).await.unwrap().is_empty());
    assert_nothing_left(dir.path());
}

/// Seconds since midnight of an engine timestamp such as `2026-11-28T14:02:03.123456789Z`.
fn seconds_of_day(stamp: &serde_json::Value) -> f64 {
    let text = stamp.as_str().expect("a timestamp");
    let time = text.split_once('T').expect("a date and a time").1.trim_end_matches('Z');
    let parts: Vec<f64> = time.split(':').map(|p| p.parse().expect("a number")).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

#[tokio::test(flavor = "multi_thread")]
async fn one_image_under_two_spellings_is_pulled_once() {
    let dir = workdir();
    let pulls = Arc::new(Mutex::new(Vec::new()));
    let seen = pulls.clone();
    let options = chainlink::ChainOptions::default().workdir(dir.path()).events(Arc::new(move |event: &Event| {
        if let Event::PullFinished { image, .. } = event {
            seen.lock().unwrap().push(image.clone());
        }
    }));
    let stages = vec![sh("true"), Stage::new(format!("{BUSYBOX}:latest")).entrypoint(["true"]), sh("true")];
    let chain = chainlink::Chain::new(stages, options).await.unwrap();
    assert_eq!(chain.images(), [BUSYBOX]);
    assert_eq!(*pulls.lock().unwrap(), [BUSYBOX]);
    assert!(run(&chain).await.iter().all(|r| r.success()));
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_at_any_early_moment_leaves_nothing() {
    // The riskiest moments are while a create is in flight: the engine makes the container
    // even when the request's future is gone. Cancel at a spread of moments around them.
    let dir = workdir();
    let chain = chain(vec![sh("sleep 5"), sh("true")], dir.path()).await;
    let runs = [0u64, 2, 5, 10, 15, 20, 30, 45, 60, 90].map(|delay_ms| {
        let chain = chain.clone();
        async move {
            let cancel = CancellationToken::new();
            let control = RunControl { cancel: cancel.clone(), events: None };
            let run = tokio::spawn(async move { chain.run_with(&Default::default(), control).await });
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            cancel.cancel();
            let error = run.await.unwrap().unwrap_err();
            assert!(matches!(error, Error::Cancelled { .. }), "{error}");
        }
    });
    futures_util::future::join_all(runs).await;
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_run_at_any_early_moment_leaves_nothing() {
    let dir = workdir();
    let chain = chain(vec![sh("sleep 5"), sh("true")], dir.path()).await;
    for delay_ms in [0u64, 3, 8, 15, 30, 60] {
        let _ = tokio::time::timeout(Duration::from_millis(delay_ms), chain.run(&Default::default())).await;
    }
    assert_nothing_left(dir.path());
}
