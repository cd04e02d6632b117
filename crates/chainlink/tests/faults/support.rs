//! Helpers of the fault tests: the test image, workdirs and what runs leave in them (copied
//! from tests/engine/common.rs), and running one test of this binary again in a child process.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use chainlink::{Chain, ChainOptions, DockerEngine, PullPolicy, Stage, StageResult};

// The engine tests' helpers: the test image, `sh`, output text, the docker CLI.
#[allow(dead_code)]
#[path = "../engine/common.rs"]
mod common;
pub use common::{assert_nothing_left, containers_under, docker, leftovers, sh, text, BUSYBOX};

/// Set in a child process to the part of a test it is to play.
pub const ROLE: &str = "CHAINLINK_FAULTS_ROLE";
/// The workdir a child process runs its chain in.
pub const WORKDIR: &str = "CHAINLINK_FAULTS_WORKDIR";

pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// A fresh workdir for one test, so its leftovers can be told from other tests'.
pub fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("chainlink-faults-").tempdir().expect("temp workdir")
}

/// The host's engine, shared by the chains of a test as a server would share it.
pub async fn engine() -> Arc<DockerEngine> {
    Arc::new(DockerEngine::connect().await.expect("the Docker engine"))
}

/// A chain on `engine` that never pulls (the test images are local; no registry is reachable).
pub async fn chain_on(engine: &Arc<DockerEngine>, stages: Vec<Stage>, workdir: &Path) -> Chain {
    let options = ChainOptions::default().workdir(workdir).pull(PullPolicy::Never);
    match Chain::with_engine(stages, options, engine.clone()).await {
        Ok(chain) => chain,
        Err(e) => panic!("chain construction failed: {e}"),
    }
}

pub async fn run(chain: &Chain) -> Vec<StageResult> {
    match chain.run(&Default::default()).await {
        Ok(results) => results,
        Err(e) => panic!("run failed: {e}"),
    }
}

pub fn stdout_bytes(result: &StageResult) -> &[u8] {
    &result.stdout.as_ref().expect("stdout kept").bytes
}

pub fn stderr_bytes(result: &StageResult) -> &[u8] {
    &result.stderr.as_ref().expect("stderr kept").bytes
}

/// Whether a container is running, by id or name.
pub fn running(id: &str) -> bool {
    docker(&["inspect", "--format", "{{.State.Running}}", id]).trim() == "true"
}


/// Polls `check` every 100 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// This test binary again, running only `test` in the part `role`, with its output captured.
pub fn reexec(test: &str, role: &str, env: &[(&str, &OsStr)]) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args(["--exact", test, "--nocapture", "--include-ignored", "--test-threads", "1"])
        .env(ROLE, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// A child process that is SIGKILLed and reaped when dropped, so a failing test leaves none.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("a child").id()
    }

    /// SIGKILLs the child and reaps it, so that its pid names no process any more.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The lines a child prints, as they come, from a thread of their own.
pub fn lines_of(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits up to `limit` for a line holding `prefix`; returns the rest of it.
pub fn wait_for_line(lines: &mpsc::Receiver<String>, prefix: &str, limit: Duration, seen: &mut Vec<String>) -> Option<String> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        let line = lines.recv_timeout(left).ok()?;
        // libtest may print the test's name on the same line first.
        if let Some(at) = line.find(prefix) {
            return Some(line[at + prefix.len()..].to_string());
        }
        seen.push(line);
    }
}
