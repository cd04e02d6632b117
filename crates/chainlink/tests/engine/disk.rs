//! `disk_limit`: what a stage writes into `/job` and its writable layer is measured while it
//! runs, and a stage that goes over is killed within 5 s.

use chainlink::{Outcome, Stage, StageResult};

use crate::common::*;

const MIB: u64 = 1 << 20;

/// Appends 4 MiB to `file` `steps` times, printing the MiB written after each step (the
/// engine stamps each line, which tells when the stage passed its limit).
fn writer(file: &str, steps: u32, pause: &str) -> String {
    format!(
        "i=0; while [ $i -lt {steps} ]; do dd if=/dev/zero bs=1M count=4 2>/dev/null >> {file} || exit 9; \
         i=$((i+1)); echo wrote $((i*4)); sleep {pause}; done"
    )
}

fn limited(script: &str, limit: Option<u64>) -> Stage {
    let mut stage = sh(script);
    stage.disk_limit = limit;
    stage
}

/// (engine timestamp in seconds since the epoch, MiB) of each `wrote N` line of stdout.
fn progress(result: &StageResult) -> Vec<(f64, u64)> {
    let raw = String::from_utf8_lossy(&result.stdout.as_ref().expect("stdout kept").bytes).into_owned();
    raw.lines()
        .filter_map(|line| {
            let (stamp, rest) = line.split_once(' ')?;
            Some((epoch_seconds(stamp)?, rest.strip_prefix("wrote ")?.trim().parse().ok()?))
        })
        .collect()
}

/// `2026-11-28T14:02:03.123456789Z` (the engine's form) as seconds since the epoch.
fn epoch_seconds(stamp: &str) -> Option<f64> {
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let d: Vec<i64> = date.split('-').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    // Days since 1970-01-01 from a civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    Some(secs as f64 + format!("0.{fraction}").parse::<f64>().ok()?)
}

/// Checks a stage killed for its disk limit and the skipped stage after it; returns how many
/// MiB it had reported written when it was killed.
fn assert_killed_for_disk(results: &[StageResult], limit_mib: u64) -> u64 {
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::DiskLimit, "stderr: {}", stderr(r));
    assert!(!r.success() && !r.killed() && !r.skipped_stage());
    let map = r.to_map_without_logs();
    assert_eq!((map["success"].as_bool(), map["killed"].as_bool()), (Some(false), Some(false)));
    let err = stderr(r);
    let marker = err.lines().last().unwrap_or_default();
    assert!(marker.starts_with("[chainlink] disk_limit exceeded: the stage wrote at least "), "{err}");
    assert!(marker.ends_with(&format!("(disk_limit {}); killed", limit_mib * MIB)), "{err}");
    let written: u64 = marker.split_whitespace().nth(8).and_then(|n| n.parse().ok()).expect("bytes in the marker");
    assert!(written > limit_mib * MIB, "{marker}");
    // Timestamped like the engine's lines.
    let raw = String::from_utf8_lossy(&r.stderr.as_ref().unwrap().bytes).into_owned();
    assert!(raw.lines().last().and_then(|l| epoch_seconds(l.split_once(' ')?.0)).is_some(), "{raw}");
    assert_eq!(results[1].outcome, Outcome::Skipped);

    // Killed within 5 s of passing the limit: the limit was passed after the last line at or
    // under it, and the engine's FinishedAt is when the killed container stopped.
    let steps = progress(r);
    let under = steps.iter().rev().find(|(_, mib)| *mib <= limit_mib).expect("a line under the limit");
    assert!(steps.iter().any(|(_, mib)| *mib > limit_mib), "never passed the limit: {steps:?}");
    let finished = r.state.as_ref().unwrap()["FinishedAt"].as_str().and_then(epoch_seconds).expect("FinishedAt");
    let after = finished - under.0;
    assert!(after < 5.0, "killed {after:.2} s after passing the limit ({steps:?})");
    let last = steps.last().unwrap().1;
    eprintln!("killed {after:.2} s after passing {limit_mib} MiB, {last} MiB written, marker: {marker}");
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_writing_past_its_limit_into_job_is_killed() {
    let dir = workdir();
    // 512 MiB at about 40 MiB/s if nothing stopped it.
    let stage = limited(&writer("/job/big", 128, "0.1"), Some(64 * MIB));
    let results = run(&chain(vec![stage, sh("echo never")], dir.path()).await).await;
    let written = assert_killed_for_disk(&results, 64);
    assert!(written < 256, "{written} MiB written before the kill");
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_writing_past_its_limit_into_its_root_filesystem_is_killed() {
    let dir = workdir();
    let stage = limited(&writer("/tmp/big", 128, "0.1"), Some(64 * MIB));
    let results = run(&chain(vec![stage, sh("echo never")], dir.path()).await).await;
    let written = assert_killed_for_disk(&results, 64);
    assert!(written < 256, "{written} MiB written before the kill");
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn under_the_limit_or_without_one_a_stage_succeeds() {
    let dir = workdir();
    // Both run past the first measurements (about 3 s each).
    let under = limited(&writer("/job/small", 3, "1"), Some(64 * MIB));
    let unlimited = limited(&writer("/job/unlimited", 24, "0.1"), None);
    let results = run(&chain(vec![under, unlimited], dir.path()).await).await;
    for r in &results {
        assert_eq!(r.outcome, Outcome::Exited(0), "stderr: {}", stderr(r));
        assert!(!stderr(r).contains("[chainlink]"), "{}", stderr(r));
    }
    assert_eq!(progress(&results[0]).last().map(|s| s.1), Some(12));
    assert_eq!(progress(&results[1]).last().map(|s| s.1), Some(96));
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn files_of_earlier_stages_do_not_count_against_a_later_stage() {
    let dir = workdir();
    // 96 MiB from stage 0 (the default limit), then a stage with 64 MiB of its own that runs
    // through a few measurements and writes 12 MiB more.
    let first = sh(&writer("/job/first", 24, "0"));
    let second = limited(&writer("/job/second", 3, "1"), Some(64 * MIB));
    let results = run(&chain(vec![first, second, sh("du -sm /job")], dir.path()).await).await;
    for r in &results {
        assert_eq!(r.outcome, Outcome::Exited(0), "stage {} stderr: {}", r.index, stderr(r));
    }
    let total: u64 = stdout(&results[2]).split_whitespace().next().and_then(|n| n.parse().ok()).expect("du");
    assert!(total >= 108, "/job holds {total} MiB");
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_writing_as_fast_as_it_can_is_stopped() {
    let dir = workdir();
    // 384 MiB as fast as the disk takes them, the file's size printed every 50 ms until the
    // stage is killed (the loop never ends by itself).
    let script = "dd if=/dev/zero of=/job/big bs=1M count=384 2>/dev/null & \
                  while :; do echo size $(stat -c %s /job/big 2>/dev/null || echo 0); sleep 0.05; done";
    let results = run(&chain(vec![limited(script, Some(64 * MIB)), sh("echo never")], dir.path()).await).await;
    assert_eq!(results[0].outcome, Outcome::DiskLimit, "stderr: {}", stderr(&results[0]));
    assert!(stderr(&results[0]).ends_with("; killed"), "{}", stderr(&results[0]));
    assert_eq!(results[1].outcome, Outcome::Skipped);
    let sizes: Vec<u64> = stdout(&results[0]).lines().filter_map(|l| l.strip_prefix("size ")?.parse().ok()).collect();
    let first_over = sizes.iter().position(|&s| s > 64 * MIB).expect("passed the limit");
    let last = *sizes.last().unwrap();
    // What the measurements let through: as much as the stage writes in about a second.
    eprintln!(
        "fast writer: over the limit after {} ms, {} MiB on disk at the last print before the kill",
        first_over * 50,
        last / MIB
    );
    assert_nothing_left(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_that_exits_soon_after_passing_its_limit_still_fails() {
    let dir = workdir();
    // Done well before the first measurement of a running stage; the check after its exit
    // catches what it left in /job.
    let stage = limited("dd if=/dev/zero of=/job/big bs=1M count=128 2>/dev/null", Some(64 * MIB));
    let results = run(&chain(vec![stage, sh("echo never")], dir.path()).await).await;
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::DiskLimit, "stderr: {}", stderr(r));
    assert!(!r.success() && !r.killed());
    let err = stderr(r);
    assert!(err.starts_with("[chainlink] disk_limit exceeded: the stage wrote at least "), "{err}");
    // Killed by a measurement if the disk was slow, else found over after its exit.
    assert!(err.ends_with("; it had already exited") || err.ends_with("; killed"), "{err}");
    eprintln!("exits soon after: {err}");
    assert_eq!(results[1].outcome, Outcome::Skipped);
    assert_nothing_left(dir.path());
}

/// An image's `VOLUME` line makes the engine create a volume the stage may write, outside its
/// layer and `/job` (and writable with a read-only root too): it counts against the limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_stage_writing_past_its_limit_into_an_image_volume_is_killed() {
    let dir = workdir();
    let image = "chainlink-test/busybox-volume";
    // The test image with a `VOLUME /data` line, made from it here.
    let base = docker(&["create", "--label", "org.chainlink.test-probe=true", BUSYBOX, "true"]);
    let made = docker(&["commit", "--change", "VOLUME /data", base.trim(), image]);
    docker(&["rm", "-f", base.trim()]);
    assert!(!made.trim().is_empty(), "could not make {image}");
    let mut stage = limited(&writer("/data/big", 128, "0.1"), Some(64 * MIB));
    stage.image = image.to_string();
    stage.read_only = true;
    let chain = chainlink::Chain::new(
        vec![stage, sh("echo never")],
        chainlink::ChainOptions::default().workdir(dir.path()).pull(chainlink::PullPolicy::Never),
    )
    .await
    .expect("chain");
    let results = run(&chain).await;
    let written = assert_killed_for_disk(&results, 64);
    assert!(written < 256, "{written} MiB written before the kill");
    assert_nothing_left(dir.path());
    docker(&["rmi", image]);
}

/// The smallest limit a user may give holds a stage that writes nothing: the engine's own files
/// and mount points in its layer (about 20 KiB here) stay below it. (A limit of 16k killed
/// `sleep` before the floor was there.)
#[tokio::test(flavor = "multi_thread")]
async fn the_smallest_limit_lets_a_stage_that_writes_nothing_run() {
    let dir = workdir();
    let stage = limited("sleep 3; echo slept", Some(chainlink::spec::MIN_DISK_LIMIT));
    let results = run(&chain(vec![stage], dir.path()).await).await;
    assert!(results[0].success(), "{:?}: {}", results[0].outcome, stderr(&results[0]));
    assert_eq!(stdout(&results[0]), "slept");
    assert_nothing_left(dir.path());
}

/// `/etc/hosts` (like `/etc/resolv.conf` and `/etc/hostname`) is a writable file the engine
/// bind-mounts from its own directory, outside the layer and `/job`: it counts too.
#[tokio::test(flavor = "multi_thread")]
async fn a_stage_writing_past_its_limit_into_etc_hosts_is_killed() {
    let dir = workdir();
    let stage = limited(&writer("/etc/hosts", 128, "0.1"), Some(64 * MIB));
    let results = run(&chain(vec![stage, sh("echo never")], dir.path()).await).await;
    let written = assert_killed_for_disk(&results, 64);
    assert!(written < 256, "{written} MiB written before the kill");
    assert_nothing_left(dir.path());
}
