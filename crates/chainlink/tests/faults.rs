//! What must hold when things go wrong (issue #5), against the real engine: the engine dying
//! mid-run or unreachable from the start, the runner SIGKILLed mid-stage, a stage printing
//! 1 GiB, a fork bomb, a stage that closes its output and keeps running, output that is not
//! text, and fifty chains at once. Every test ends with nothing of its runs left.
//!
//! Some tests run a part of themselves in a child process, this binary again with `--exact
//! <test>` and `CHAINLINK_FAULTS_ROLE` naming the part: to SIGKILL a runner, to measure a
//! runner's peak memory alone, and to give `DOCKER_HOST` to one process only.

#[path = "faults/daemon.rs"]
mod daemon;
#[path = "faults/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chainlink::spec::DEFAULT_OUTPUT_LIMIT;
use chainlink::{
    Chain, ChainOptions, DockerEngine, EngineErrorKind, Error, Event, EventSink, Outcome, PullPolicy, RunControl,
};
use tokio::sync::Notify;

use daemon::SecondDaemon;
use support::*;

/// An event sink that wakes `started` when a stage is reported started.
fn notify_on_start(started: &Arc<Notify>) -> EventSink {
    let started = started.clone();
    Arc::new(move |event: &Event| {
        if matches!(event, Event::StageStarted { .. }) {
            started.notify_one();
        }
    })
}

/// `StageStarted` is emitted just before the engine is asked to start the container: this
/// waits for the event, then for the container to be running.
async fn wait_until_running(started: &Notify, mut is_running: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(120), started.notified())
        .await
        .expect("the stage was not reported started within 120 s");
    assert!(eventually(Duration::from_secs(60), &mut is_running).await, "the stage's container never ran");
}

// ---------------------------------------------------------------------------------------------
// 1. The engine going away.

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_dying_mid_stage_ends_the_run_with_an_error_naming_the_stage() {
    let host_bridge = std::path::Path::new("/sys/class/net/docker0").exists();
    let mut daemon = SecondDaemon::start().unwrap_or_else(|e| {
        panic!("a second dockerd cannot run here, so the engine's death cannot be tested:\n{e}")
    });
    daemon.load_image(BUSYBOX).unwrap_or_else(|e| panic!("{e}"));
    println!("second daemon: pid {:?}, storage driver {}, {}", daemon.pid(), daemon.driver, daemon.host());
    let dir = workdir();
    let engine = DockerEngine::connect_to(&daemon.host()).await.expect("the second daemon");
    let mut stage = sh("sleep 60").timeout(Duration::from_secs(600));
    stage.networking = false;
    let options = ChainOptions::default().workdir(dir.path()).pull(PullPolicy::Never);
    let chain = Chain::with_engine(vec![stage], options, Arc::new(engine)).await.expect("the chain");

    let started = Arc::new(Notify::new());
    let control = RunControl { events: Some(notify_on_start(&started)), ..Default::default() };
    let run = tokio::spawn(async move { chain.run_with(&BTreeMap::new(), control).await });
    let running = || {
        let out = daemon.docker(&["ps", "-q", "--filter", "status=running", "--filter", "label=org.chainlink.managed"]);
        !out.stdout.is_empty()
    };
    wait_until_running(&started, running).await;
    assert!(dir.path().read_dir().unwrap().next().is_some(), "the run directory exists while the stage runs");

    let killed_at = Instant::now();
    let killed = daemon.kill();
    println!("killed the second daemon and its processes: {killed:?}");
    // containerd dies with dockerd by itself (it is started with a parent-death signal); the
    // shim and the stage's process do not.
    assert!(killed.len() >= 3, "dockerd, the shim and the stage's process: {killed:?}");
    assert!(daemon.processes_left().is_empty(), "left running: {:?}", daemon.processes_left());
    let returned = tokio::time::timeout(Duration::from_secs(30), run).await;
    let after = killed_at.elapsed();
    let result = returned
        .unwrap_or_else(|_| panic!("the run did not return within 30 s of the engine's death (a hang)"))
        .expect("the run task");
    println!("FIGURE engine-death: the run returned {:.3} s after the daemon was killed", after.as_secs_f64());
    let error = match result {
        Ok(results) => panic!("the run succeeded with the engine dead: {results:?}"),
        Err(error) => error,
    };
    let message = error.to_string();
    println!("error: {message}");
    let Error::Stage { index, results, source, .. } = &error else { panic!("expected a stage error, got {error:?}") };
    assert_eq!(*index, 0);
    assert!(results.is_empty(), "{results:?}");
    assert_eq!(source.kind, EngineErrorKind::Unavailable, "{source:?}");
    assert!(message.starts_with("failed to run stages[0] (chainlink-test/busybox): "), "{message}");
    assert!(message.contains(&daemon.host()), "the message names the engine that went away: {message}");
    // The run directory is removed even though the engine is gone; the only container died
    // with its daemon, and the host's engine holds none of this test's.
    assert_nothing_left(dir.path());

    let root = daemon.dir().to_path_buf();
    assert!(!daemon.mounts().is_empty(), "the daemon mounted its data-root; the cleanup is exercised");
    drop(daemon);
    assert!(!root.exists(), "the second daemon's directory {} is left", root.display());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&root.display().to_string()), "mounts under {} are left:\n{mounts}", root.display());
    assert_eq!(
        std::path::Path::new("/sys/class/net/docker0").exists(),
        host_bridge,
        "the second daemon must leave the host's docker0 alone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_unreachable_from_the_start_is_engine_unavailable_within_bounded_time() {
    const NAME: &str = "an_engine_unreachable_from_the_start_is_engine_unavailable_within_bounded_time";
    if role().as_deref() == Some("unreachable") {
        // DOCKER_HOST was set for this process alone.
        let dir = PathBuf::from(std::env::var_os(WORKDIR).unwrap());
        let started = Instant::now();
        let error = Chain::new(vec![sh("true")], ChainOptions::default().workdir(&dir).pull(PullPolicy::Never))
            .await
            .expect_err("no engine at DOCKER_HOST");
        println!("UNREACHABLE-VARIANT {}", if matches!(error, Error::EngineUnavailable(_)) { "EngineUnavailable" } else { "other" });
        println!("UNREACHABLE-SECS {:.3}", started.elapsed().as_secs_f64());
        println!("UNREACHABLE-MESSAGE {error}");
        return;
    }
    let dir = workdir();

    // No socket at all.
    let missing = dir.path().join("no-such-dir/docker.sock");
    let endpoint = format!("unix://{}", missing.display());
    let started = Instant::now();
    let error = DockerEngine::connect_to(&endpoint).await.expect_err("no socket there");
    let took = started.elapsed();
    println!("FIGURE unreachable-missing-socket: {:.3} s: {error}", took.as_secs_f64());
    assert_eq!(error.kind, EngineErrorKind::Unavailable, "{error:?}");
    assert!(error.message.contains(&endpoint), "{error}");
    assert!(took < Duration::from_secs(20), "{took:?}");

    // A socket file nobody listens on (what a dead daemon leaves behind): refused.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let started = Instant::now();
    let error = DockerEngine::connect_to(stale.to_str().unwrap()).await.expect_err("nobody listens");
    let took = started.elapsed();
    println!("FIGURE unreachable-stale-socket: {:.3} s: {error}", took.as_secs_f64());
    assert_eq!(error.kind, EngineErrorKind::Unavailable, "{error:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");

    // A socket that takes connections and never answers (a hung engine): bounded by the
    // connection timeout.
    let hung = dir.path().join("hung.sock");
    let listener = std::os::unix::net::UnixListener::bind(&hung).unwrap();
    let started = Instant::now();
    let error = DockerEngine::connect_to(hung.to_str().unwrap()).await.expect_err("nobody answers");
    let took = started.elapsed();
    println!("FIGURE unreachable-hung-socket: {:.3} s: {error}", took.as_secs_f64());
    assert_eq!(error.kind, EngineErrorKind::Unavailable, "{error:?}");
    assert!(took < Duration::from_secs(40), "{took:?}");
    drop(listener);
    std::fs::remove_file(&stale).unwrap();
    std::fs::remove_file(&hung).unwrap();

    // What a caller of `Chain::new` sees, with DOCKER_HOST naming the missing socket (in a
    // child process: the variable is read by every `Chain::new` of this one).
    let out = reexec(NAME, "unreachable", &[(WORKDIR, dir.path().as_os_str())])
        .env("DOCKER_HOST", &endpoint)
        .output()
        .expect("the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("1 passed"), "the child failed:\n{stdout}");
    let field = |name: &str| figure(&stdout, name);
    println!("FIGURE unreachable-chain-new: {} s: {}", field("UNREACHABLE-SECS"), field("UNREACHABLE-MESSAGE"));
    assert_eq!(field("UNREACHABLE-VARIANT"), "EngineUnavailable");
    let message = field("UNREACHABLE-MESSAGE");
    assert!(message.starts_with("failed to connect to the Docker engine: cannot reach the Docker engine at "), "{message}");
    assert!(message.contains(&endpoint), "{message}");
    assert!(field("UNREACHABLE-SECS").parse::<f64>().unwrap() < 20.0);
    assert_nothing_left(dir.path());
}

// ---------------------------------------------------------------------------------------------
// 2. The runner SIGKILLed mid-stage.

const STAGE_STARTED: &str = "CHAINLINK-FAULTS-STAGE-STARTED";

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_killed_mid_stage_leaves_what_the_sweep_removes_and_live_runs_are_kept() {
    const NAME: &str = "a_runner_killed_mid_stage_leaves_what_the_sweep_removes_and_live_runs_are_kept";
    if role().as_deref() == Some("killed-runner") {
        let dir = PathBuf::from(std::env::var_os(WORKDIR).unwrap());
        let chain = chain_on(&engine().await, vec![sh("sleep 60").timeout(Duration::from_secs(120))], &dir).await;
        let sink: EventSink = Arc::new(|event: &Event| {
            if matches!(event, Event::StageStarted { .. }) {
                println!("{STAGE_STARTED}");
                let _ = std::io::stdout().flush();
            }
        });
        // The parent SIGKILLs this process while the stage runs.
        let _ = chain.run_with(&BTreeMap::new(), RunControl { events: Some(sink), ..Default::default() }).await;
        return;
    }
    let dir = workdir();
    let mut child =
        ChildGuard(Some(reexec(NAME, "killed-runner", &[(WORKDIR, dir.path().as_os_str())]).spawn().expect("the child")));
    let lines = lines_of(child.0.as_mut().unwrap().stdout.take().unwrap());
    let mut seen = Vec::new();
    assert!(
        wait_for_line(&lines, STAGE_STARTED, Duration::from_secs(180), &mut seen).is_some(),
        "the child never started its stage; it printed: {seen:?}"
    );
    let child_owner = format!("/{}/", child.id());
    let child_container = || containers_under(dir.path()).into_iter().find(|(_, owner)| owner.contains(&child_owner));
    assert!(
        eventually(Duration::from_secs(60), || child_container().is_some_and(|(id, _)| running(&id))).await,
        "the child's container never ran"
    );
    child.kill();

    // What the killed runner left: its running container and its run directory.
    let (dead_container, _) = child_container().expect("the killed runner's container is left");
    assert!(running(&dead_container), "the container outlives its runner");
    let child_run_prefix = format!("chainlink-run-{}-", child_owner.trim_matches('/'));
    let dead_dirs: Vec<PathBuf> = std::fs::read_dir(chainlink::workspace::private_dir(dir.path()))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&child_run_prefix))
        .map(|e| e.path())
        .collect();
    assert_eq!(dead_dirs.len(), 1, "{:?}", leftovers(dir.path()));

    // A live run of this process in the same workdir, in the middle of its stage.
    let engine = engine().await;
    let live_chain = chain_on(&engine, vec![sh("sleep 4; echo live-done")], dir.path()).await;
    let started = Arc::new(Notify::new());
    let control = RunControl { events: Some(notify_on_start(&started)), ..Default::default() };
    let live = tokio::spawn(async move { live_chain.run_with(&BTreeMap::new(), control).await });
    let my_owner = format!("/{}/", std::process::id());
    let my_container = || containers_under(dir.path()).into_iter().find(|(_, owner)| owner.contains(&my_owner));
    wait_until_running(&started, || my_container().is_some_and(|(id, _)| running(&id))).await;
    let (live_container, _) = my_container().unwrap();

    let report = chainlink::sweep_dead_runs(&*engine, dir.path(), &[BUSYBOX.to_string()]).await.expect("the sweep");
    println!("sweep report: {report:?}");
    assert!(report.containers.contains(&dead_container), "the sweep did not list {dead_container}: {report:?}");
    assert!(!report.containers.contains(&live_container), "the sweep removed a live run's container: {report:?}");
    assert_eq!(report.directories, dead_dirs, "the sweep removes exactly the dead run's directory");
    assert!(running(&live_container), "the live run's container still runs after the sweep");
    assert!(containers_under(dir.path()).iter().all(|(id, _)| *id != dead_container), "the dead run's container is gone");

    let results = live.await.unwrap().expect("the live run was not disturbed");
    assert!(results[0].success(), "{results:?}");
    assert_eq!(text(stdout_bytes(&results[0])), "live-done");
    assert_nothing_left(dir.path());
}

// ---------------------------------------------------------------------------------------------
// 3. A stage printing 1 GiB.

/// One line of `yes`: 70 characters and a newline.
const LINE: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-chainlnk";
const GIB: u64 = 1 << 30;
const BYTES: &str = "CHAINLINK_FAULTS_BYTES";
const MIB: f64 = 1024.0 * 1024.0;
const BIG_TEST: &str = "a_stage_printing_1_gib_keeps_the_runner_small_and_its_output_bounded";

fn printing(bytes: u64) -> String {
    format!("yes {LINE} | head -c {bytes}")
}

/// The inner part of the big-output tests: runs the chain and checks its result; prints the
/// figures for the parent.
async fn print_a_lot_inner() {
    let dir = PathBuf::from(std::env::var_os(WORKDIR).unwrap());
    let bytes: u64 = std::env::var(BYTES).unwrap().parse().unwrap();
    let mut stage = sh(&printing(bytes)).timeout(Duration::from_secs(1800));
    stage.networking = false;
    let chain = chain_on(&engine().await, vec![stage], &dir).await;
    let started = Instant::now();
    let results = run(&chain).await;
    let took = started.elapsed();
    let result = &results[0];
    assert_eq!(result.outcome, Outcome::Exited(0), "{:?}", result.state);
    let out = result.stdout.as_ref().unwrap();
    println!("\nBIG-SECS {:.3}", took.as_secs_f64());
    println!("BIG-STAGE-SECS {:.3}", result.duration.as_secs_f64());
    println!("BIG-KEPT {}", out.bytes.len());
    println!("BIG-DROPPED {}", out.dropped);
    assert!(result.stderr.as_ref().unwrap().bytes.is_empty());
    if bytes <= DEFAULT_OUTPUT_LIMIT / 2 {
        assert!(!result.truncated());
        assert_nothing_left(&dir);
        return;
    }
    assert!(result.truncated() && out.truncated());
    assert!(out.bytes.len() as u64 <= DEFAULT_OUTPUT_LIMIT + 200, "kept {}", out.bytes.len());
    assert!(out.bytes.len() as u64 > DEFAULT_OUTPUT_LIMIT - (1 << 20), "kept {}", out.bytes.len());
    // Every kept line is a whole, timestamped line of the stream; the last is the marker.
    let kept = String::from_utf8(out.bytes.clone()).expect("the kept part is text");
    assert!(kept.ends_with('\n'));
    let mut lines: Vec<&str> = kept.lines().collect();
    let marker = lines.pop().unwrap();
    println!("BIG-MARKER {marker}");
    let (_, marker_text) = marker.split_once(' ').expect("a timestamped marker");
    assert!(marker_text.starts_with("[chainlink] output truncated: "), "{marker}");
    assert!(marker_text.contains(&format!("{} bytes dropped", out.dropped)), "{marker}");
    for line in &lines {
        assert_eq!(line.split_once(' ').map(|(_, rest)| rest), Some(LINE), "{line:?}");
    }
    assert_nothing_left(&dir);
}

/// Runs the big-output part of `test` in a child and returns (its stdout, its peak RSS in
/// bytes, its wall time).
fn print_a_lot_in_a_child(test: &str, bytes: u64, dir: &std::path::Path) -> (String, u64, Duration) {
    let bytes_text = bytes.to_string();
    let started = Instant::now();
    let mut child = reexec(test, "print-a-lot", &[(WORKDIR, dir.as_os_str()), (BYTES, bytes_text.as_ref())])
        .spawn()
        .expect("the child");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });
    let pid = child.id() as libc::pid_t;
    // Reaped here, with its resource usage; the `Child` is not waited on again.
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child's; status and usage are valid for writes.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    let took = started.elapsed();
    let text = reader.join().unwrap();
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child failed ({status}):\n{text}");
    assert!(text.contains("1 passed"), "the inner part did not run:\n{text}");
    // ru_maxrss is in KiB on Linux.
    (text, usage.ru_maxrss as u64 * 1024, took)
}

/// The rest of the line after `name`, which a child printed (libtest may print the test's
/// name on the same line first).
fn figure(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.find(name).map(|at| &l[at + name.len()..]))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .trim()
        .to_string()
}

/// `docker run` of the same command, output to /dev/null; its wall time.
fn docker_run_to_dev_null(bytes: u64) -> Duration {
    let started = Instant::now();
    let status = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "--label", "org.chainlink.test-probe=true", BUSYBOX, "sh", "-c"])
        .arg(printing(bytes))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("docker run");
    assert!(status.success(), "docker run failed: {status}");
    started.elapsed()
}

/// Runs `docker run` and then a chain of the same command in a child, side by side; prints
/// and returns (docker run's time, the chain's time, the child's peak RSS, the child's output).
fn docker_run_then_chain(test: &str, bytes: u64, dir: &std::path::Path) -> (f64, f64, u64, String) {
    let docker_time = docker_run_to_dev_null(bytes).as_secs_f64();
    println!("FIGURE big-output: {} MiB: docker run > /dev/null took {docker_time:.1} s", bytes >> 20);
    let (text, rss, wall) = print_a_lot_in_a_child(test, bytes, dir);
    let chain_time: f64 = figure(&text, "BIG-SECS").parse().unwrap();
    println!(
        "FIGURE big-output: {} MiB: chain {chain_time:.1} s (stage {} s, child process {:.1} s), {:.2} x docker run; \
         runner peak RSS {:.1} MiB; kept {} bytes, {} counted as dropped",
        bytes >> 20,
        figure(&text, "BIG-STAGE-SECS"),
        wall.as_secs_f64(),
        chain_time / docker_time,
        rss as f64 / MIB,
        figure(&text, "BIG-KEPT"),
        figure(&text, "BIG-DROPPED"),
    );
    if bytes > DEFAULT_OUTPUT_LIMIT {
        println!("FIGURE big-output: marker {:?}", figure(&text, "BIG-MARKER"));
    }
    (docker_time, chain_time, rss, text)
}

/// 1 GiB through a chain: the runner's memory stays bounded, the result holds the first
/// 16 MiB and the marker, and the run takes about as long as `docker run` of the same command:
/// the runner stops reading a stream once its limit is reached.
#[tokio::test(flavor = "multi_thread")]
async fn a_stage_printing_1_gib_keeps_the_runner_small_and_its_output_bounded() {
    if role().as_deref() == Some("print-a-lot") {
        return print_a_lot_inner().await;
    }
    let dir = workdir();
    let path = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        // The test harness and the runtime alone, for comparison.
        let (_, baseline_rss, _) = print_a_lot_in_a_child(BIG_TEST, 1000, &path);
        println!("FIGURE big-output: runner peak RSS for 1000 bytes of output: {:.1} MiB", baseline_rss as f64 / MIB);
        let (docker_time, chain_time, rss, _) = docker_run_then_chain(BIG_TEST, GIB, &path);
        assert!(rss < 64 << 20, "the runner's peak RSS was {:.1} MiB for 1 GiB of output", rss as f64 / MIB);
        assert!(
            chain_time <= docker_time * 1.5 + 10.0,
            "the chain took {chain_time:.1} s where docker run took {docker_time:.1} s"
        );
    })
    .await
    .unwrap();
    assert_nothing_left(dir.path());
}

/// The brief's timing bound on 256 MiB, where the engine's own time is shorter and any
/// overhead of ours shows more.
#[tokio::test(flavor = "multi_thread")]
async fn a_stage_printing_256_mib_takes_about_as_long_as_docker_run() {
    const NAME: &str = "a_stage_printing_256_mib_takes_about_as_long_as_docker_run";
    if role().as_deref() == Some("print-a-lot") {
        return print_a_lot_inner().await;
    }
    let dir = workdir();
    let path = dir.path().to_path_buf();
    const BYTES_PRINTED: u64 = 256 << 20;
    let (docker_time, chain_time, _, text) =
        tokio::task::spawn_blocking(move || docker_run_then_chain(NAME, BYTES_PRINTED, &path)).await.unwrap();
    assert!(chain_time <= docker_time * 1.5 + 5.0, "the chain took {chain_time:.1} s where docker run took {docker_time:.1} s");
    // What was not read is not counted: the count is a lower bound, and the marker says so.
    let kept: u64 = figure(&text, "BIG-KEPT").parse().unwrap();
    let dropped: u64 = figure(&text, "BIG-DROPPED").parse().unwrap();
    assert!(kept <= (16 << 20) + 200 && dropped > 0, "kept {kept}, dropped {dropped}");
    assert_nothing_left(dir.path());
}

// ---------------------------------------------------------------------------------------------
// 4. A fork bomb.

/// The number of processes on the host: the numeric entries of /proc. (Not /proc/loadavg's
/// total, which counts threads: the shims of other tests' containers have a dozen each.)
fn host_processes() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .count()
}

/// Samples `host_processes` every 20 ms until stopped; returns the maximum.
struct TaskSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TaskSampler {
    fn start() -> TaskSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::spawn({
            let (stop, max) = (stop.clone(), max.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    max.fetch_max(host_processes(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        TaskSampler { stop, max, thread: Some(thread) }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.max.load(Ordering::Relaxed)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_bomb_is_contained_and_the_runner_stays_responsive() {
    let dir = workdir();
    let engine = engine().await;
    let trivial = chain_on(&engine, vec![sh("echo alive")], dir.path()).await;
    let started = Instant::now();
    assert_eq!(text(stdout_bytes(&run(&trivial).await[0])), "alive");
    let trivial_alone = started.elapsed();
    let baseline = host_processes();

    // The bomb as given: it ends by itself once its shell cannot fork `sleep` (or by the timeout).
    let mut bomb = sh("f(){ f|f& }; f; sleep 1").timeout(Duration::from_secs(10));
    assert_eq!(bomb.pids_limit, Some(chainlink::spec::DEFAULT_PIDS_LIMIT));
    assert_eq!(chainlink::spec::DEFAULT_PIDS_LIMIT, 1024);
    bomb.output_limit = 1 << 20;
    let sampler = TaskSampler::start();
    let started = Instant::now();
    let results = run(&chain_on(&engine, vec![bomb], dir.path()).await).await;
    let took = started.elapsed();
    let peak = sampler.finish();
    println!(
        "FIGURE fork-bomb (ends by itself): {:?} in {:.1} s (stage {:.1} s), host processes {baseline} before, {peak} at most",
        results[0].outcome,
        took.as_secs_f64(),
        results[0].duration.as_secs_f64()
    );
    assert!(matches!(results[0].outcome, Outcome::Exited(_) | Outcome::TimedOut), "{:?}", results[0].outcome);
    assert!(results[0].duration < Duration::from_secs(10 + 30), "{:?}", results[0].duration);
    assert!(peak < baseline + 1500, "host processes went from {baseline} to {peak}");

    // A bomb whose shell never exits: only its timeout ends it. A trivial chain run while it
    // goes on completes, in this same process.
    let mut bomb = sh("f(){ f|f& }; f; while :; do :; done").timeout(Duration::from_secs(15));
    bomb.output_limit = 1 << 20;
    let bomb_chain = chain_on(&engine, vec![bomb], dir.path()).await;
    let bomb_started = Arc::new(Notify::new());
    let finished = Arc::new(Mutex::new(None));
    let sink: EventSink = Arc::new({
        let (bomb_started, finished) = (bomb_started.clone(), finished.clone());
        move |event: &Event| match event {
            Event::StageStarted { .. } => bomb_started.notify_one(),
            Event::StageFinished { .. } => *finished.lock().unwrap() = Some(Instant::now()),
            _ => {}
        }
    });
    let sampler = TaskSampler::start();
    let bomb_run =
        tokio::spawn(async move { bomb_chain.run_with(&BTreeMap::new(), RunControl { events: Some(sink), ..Default::default() }).await });
    tokio::time::timeout(Duration::from_secs(120), bomb_started.notified()).await.expect("the bomb never started");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = Instant::now();
    let alive = run(&trivial).await;
    let trivial_during = during.elapsed();
    let trivial_done = Instant::now();
    assert_eq!(text(stdout_bytes(&alive[0])), "alive");
    let results = bomb_run.await.unwrap().expect("the bomb's run");
    let peak = sampler.finish();
    let bomb_finished = finished.lock().unwrap().expect("the bomb's stage finished");
    println!(
        "FIGURE fork-bomb (until its timeout): {:?} after {:.1} s; a trivial chain took {:.1} s during it ({:.1} s alone); host processes {baseline} before, {peak} at most",
        results[0].outcome,
        results[0].duration.as_secs_f64(),
        trivial_during.as_secs_f64(),
        trivial_alone.as_secs_f64()
    );
    assert_eq!(results[0].outcome, Outcome::TimedOut);
    assert!(results[0].duration < Duration::from_secs(15 + 30), "{:?}", results[0].duration);
    assert!(trivial_done < bomb_finished, "the trivial chain finished only after the bomb");
    assert!(
        trivial_during < trivial_alone * 3 + Duration::from_secs(8),
        "the trivial chain took {trivial_during:?} during the bomb, {trivial_alone:?} alone"
    );
    assert!(peak < baseline + 1500, "host processes went from {baseline} to {peak}");
    assert_nothing_left(dir.path());
}

// ---------------------------------------------------------------------------------------------
// 5. A stage that closes its output and keeps running.

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_that_closes_its_output_and_keeps_running_is_killed_at_its_timeout() {
    let dir = workdir();
    let chain = chain_on(
        &engine().await,
        vec![sh("echo before-close; exec >&- 2>&-; sleep 60").timeout(Duration::from_secs(2)), sh("echo never")],
        dir.path(),
    )
    .await;
    let started = Instant::now();
    let results = run(&chain).await;
    let took = started.elapsed();
    println!(
        "FIGURE closed-output: stage {:.2} s, run {:.2} s (timeout 2 s)",
        results[0].duration.as_secs_f64(),
        took.as_secs_f64()
    );
    assert_eq!(results[0].outcome, Outcome::TimedOut);
    assert!(results[0].killed() && !results[0].success());
    assert_eq!(text(stdout_bytes(&results[0])), "before-close");
    assert!(results[0].duration >= Duration::from_secs(2), "{:?}", results[0].duration);
    assert!(results[0].duration < Duration::from_secs(12), "{:?}", results[0].duration);
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert_eq!(results[1].outcome, Outcome::Skipped);
    assert_nothing_left(dir.path());
}

// ---------------------------------------------------------------------------------------------
// 6. Output that is not text.

#[tokio::test(flavor = "multi_thread")]
async fn output_with_invalid_utf8_and_nul_bytes_comes_back_byte_for_byte() {
    let dir = workdir();
    let chain = chain_on(
        &engine().await,
        vec![sh(r"printf '\377\376\000abc\n'; printf '\377\376\000abc\n' >&2; printf 'x\000y\200'")],
        dir.path(),
    )
    .await;
    let results = run(&chain).await;
    assert!(results[0].success(), "{results:?}");
    let after_timestamps = |bytes: &[u8]| -> Vec<Vec<u8>> {
        bytes
            .split_inclusive(|b| *b == b'\n')
            .map(|line| {
                let space = line.iter().position(|b| *b == b' ').expect("a timestamp prefix");
                line[space + 1..].to_vec()
            })
            .collect()
    };
    let out = after_timestamps(stdout_bytes(&results[0]));
    assert_eq!(out, [b"\xff\xfe\x00abc\n".to_vec(), b"x\x00y\x80".to_vec()], "stdout {:?}", stdout_bytes(&results[0]));
    let err = after_timestamps(stderr_bytes(&results[0]));
    assert_eq!(err, [b"\xff\xfe\x00abc\n".to_vec()], "stderr {:?}", stderr_bytes(&results[0]));
    assert_nothing_left(dir.path());
}

// ---------------------------------------------------------------------------------------------
// 7. Fifty chains at once.

#[tokio::test(flavor = "multi_thread")]
async fn fifty_chains_at_once_each_see_only_their_own_job() {
    const CHAINS: usize = 50;
    let dir = workdir();
    let engine = engine().await;
    let nonce = std::process::id();
    let mut chains = Vec::new();
    for i in 0..CHAINS {
        let token = format!("token-{i:02}-{nonce}");
        let write = sh("echo $TOKEN > /job/$TOKEN").env("TOKEN", &token).timeout(Duration::from_secs(300));
        let read = sh("cat /job/*; ls -A /job").timeout(Duration::from_secs(300));
        chains.push((token, chain_on(&engine, vec![write, read], dir.path()).await));
    }
    let environ = BTreeMap::new();
    let started = Instant::now();
    let runs = chains.iter().map(|(_, chain)| chain.run(&environ));
    let outcomes = futures_util::future::join_all(runs).await;
    println!("FIGURE fifty-chains: {CHAINS} chains of 2 stages at once in {:.1} s", started.elapsed().as_secs_f64());
    for ((token, _), outcome) in chains.iter().zip(outcomes) {
        let results = outcome.unwrap_or_else(|e| panic!("{token}: {e}"));
        assert!(results.iter().all(|r| r.success()), "{token}: {results:?}");
        assert_eq!(text(stdout_bytes(&results[1])), format!("{token}\n{token}"), "{token}");
        assert!(stderr_bytes(&results[1]).is_empty(), "{token}");
    }
    assert_nothing_left(dir.path());
}
