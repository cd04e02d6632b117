//! Nothing of a run is left behind, in three layers:
//!
//! 1. explicit, idempotent cleanup at the end of every run, on every path (success, failed
//!    stage, timeout, engine error, cancellation through a token): [`RunGuard::cleanup`];
//! 2. the guard's `Drop`, the last line of defence when the run future is dropped mid-flight:
//!    it removes what the run still holds from a thread of its own, on a new connection;
//! 3. labels and names, so that what a killed process left is found by [`sweep_dead_runs`]
//!    (run by the CLI at start and by `chainlink gc`).
//!
//! Files a stage wrote into `/job` as root (mode 000, nested) cannot be removed by a runner that
//! is not root; a short container of one of the chain's images removes them as root instead.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::{ContainerSpec, Engine, EngineError, JobMount, SharedEngine};
use crate::spec::Stage;
use crate::workspace::RUN_DIR_PREFIX;

/// Every container we create carries this label.
pub const LABEL_MANAGED: &str = "org.chainlink.managed";
pub const LABEL_RUN: &str = "org.chainlink.run";
pub const LABEL_STAGE: &str = "org.chainlink.stage";
/// `<hostname>/<pid>/<process start time>` of the process that ran the chain.
pub const LABEL_OWNER: &str = "org.chainlink.owner";

/// A run's identity: `<pid>-<process start time>-<sequence>`, unique on the host and telling
/// which process owns the run, so that a sweep can tell dead runs from live ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunId(String);

static RUN_SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl RunId {
    pub fn new() -> RunId {
        let seq = RUN_SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let me = Owner::current();
        RunId(format!("{}-{}-{seq}", me.pid, me.start_time))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The owning process's pid and start time, read back from the id.
    fn owner_process(text: &str) -> Option<(u32, u64)> {
        let mut parts = text.split('-');
        let pid = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        Some((pid, start))
    }
}

impl Default for RunId {
    fn default() -> Self {
        RunId::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The process that runs chains, as labels name it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    host: String,
    pid: u32,
    start_time: u64,
}

impl Owner {
    fn current() -> Owner {
        let pid = std::process::id();
        Owner { host: hostname(), pid, start_time: process_start_time(pid).unwrap_or(0) }
    }

    fn label(&self) -> String {
        format!("{}/{}/{}", self.host, self.pid, self.start_time)
    }

    fn parse(label: &str) -> Option<Owner> {
        let mut parts = label.rsplitn(3, '/');
        let start_time = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let host = parts.next()?.to_string();
        Some(Owner { host, pid, start_time })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// The process's start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`); with
/// the pid it names one process for the life of the machine.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn process_alive(pid: u32, start_time: u64) -> bool {
    process_start_time(pid) == Some(start_time)
}

/// The labels of a stage's container.
pub(crate) fn container_labels(run: &RunId, stage: Option<usize>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_RUN.to_string(), run.to_string()),
        (LABEL_OWNER.to_string(), Owner::current().label()),
    ]);
    if let Some(index) = stage {
        labels.insert(LABEL_STAGE.to_string(), index.to_string());
    }
    labels
}

#[derive(Debug, Default)]
struct Held {
    containers: Vec<String>,
    workspace: Option<PathBuf>,
    /// Removals going on in the background, awaited before the run returns.
    removals: Vec<tokio::task::JoinHandle<()>>,
    /// Creates sent to the engine, each a task of its own: a create dropped mid-flight would
    /// still make its container, after a removal by name had found nothing.
    creates: Vec<tokio::task::JoinHandle<()>>,
    done: bool,
}

/// What a run holds on the engine and the host, released on every path.
#[derive(Debug)]
pub(crate) struct RunGuard {
    engine: SharedEngine,
    run: RunId,
    /// Images the run uses, for the root cleanup container.
    images: Vec<String>,
    held: Arc<Mutex<Held>>,
}

impl RunGuard {
    pub(crate) fn new(engine: SharedEngine, run: RunId, workspace: PathBuf, images: Vec<String>) -> RunGuard {
        let held = Held { workspace: Some(workspace), ..Default::default() };
        RunGuard { engine, run, images, held: Arc::new(Mutex::new(held)) }
    }

    pub(crate) fn track(&self, container: &str) {
        self.held.lock().unwrap().containers.push(container.to_string());
    }

    /// Creates a container, tracked by name before the engine hears of it. The create runs as
    /// a task that nothing drops, so when the run is cancelled meanwhile, cleanup first waits
    /// for the engine's answer and then removes what it made.
    pub(crate) async fn create(&self, spec: &ContainerSpec<'_>) -> Result<String, EngineError> {
        self.track(&spec.name);
        let engine = self.engine.clone();
        let stage = spec.stage.clone();
        let owned = (spec.name.clone(), spec.env.clone(), spec.job.clone(), spec.labels.clone());
        let overrides = (spec.user_override.clone(), spec.entrypoint_override.clone());
        let (answer, answered) = tokio::sync::oneshot::channel();
        let create = tokio::spawn(async move {
            let (name, env, job, labels) = owned;
            let (user_override, entrypoint_override) = overrides;
            let spec = ContainerSpec { name, stage: &stage, env, job, labels, user_override, entrypoint_override };
            let _ = answer.send(engine.create(&spec).await.map(|_| spec.name));
        });
        self.held.lock().unwrap().creates.push(create);
        answered.await.unwrap_or_else(|_| {
            Err(EngineError::new(crate::engine::EngineErrorKind::Other, "the create ended without the engine's answer"))
        })
    }

    /// Removes one container in the background, off the run's critical path; it stays held
    /// (and so is removed by [`RunGuard::cleanup`] or the drop) until the removal succeeds.
    pub(crate) fn release_in_background(&self, container: &str) {
        let engine = self.engine.clone();
        let held = self.held.clone();
        let container = container.to_string();
        let removal = tokio::spawn(async move {
            if engine.remove(&container).await.is_ok() {
                held.lock().unwrap().containers.retain(|c| *c != container);
            }
        });
        self.held.lock().unwrap().removals.push(removal);
    }

    /// Removes every container still held and the workspace. Safe to call more than once.
    pub(crate) async fn cleanup(&self) -> Result<(), CleanupError> {
        let (creates, removals) = {
            let mut held = self.held.lock().unwrap();
            (std::mem::take(&mut held.creates), std::mem::take(&mut held.removals))
        };
        for task in creates.into_iter().chain(removals) {
            let _ = task.await;
        }
        let (containers, workspace) = {
            let held = self.held.lock().unwrap();
            (held.containers.clone(), held.workspace.clone())
        };
        let result = release_all(&*self.engine, &self.run, &containers, workspace.as_deref(), &self.images).await;
        if result.is_ok() {
            let mut held = self.held.lock().unwrap();
            held.containers.clear();
            held.workspace = None;
            held.done = true;
        }
        result
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let (containers, workspace, creates) = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if held.done || (held.containers.is_empty() && held.workspace.is_none()) {
                return;
            }
            (held.containers.clone(), held.workspace.clone(), std::mem::take(&mut held.creates))
        };
        // Creates in flight go on as tasks of the caller's runtime; give them a moment to be
        // answered so that the removals below find what they made. (On a single-threaded
        // runtime that this thread drives they cannot progress: the bound keeps this short.)
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while creates.iter().any(|c| !c.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // The run future was dropped mid-flight. The caller's runtime may be the one this
        // thread is driving, so clean up from a thread of its own on a new connection, and wait
        // for it: when this returns, nothing of the run is left.
        let engine = self.engine.clone();
        let run = self.run.clone();
        let images = self.images.clone();
        let cleaner = std::thread::Builder::new().name("chainlink-cleanup".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let engine = engine.reconnect().await.ok()?;
                release_all(&*engine, &run, &containers, workspace.as_deref(), &images).await.ok()
            })
        });
        if let Ok(handle) = cleaner {
            let _ = handle.join();
        }
    }
}

/// Why cleanup left something behind.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("failed to remove container {id}: {source}")]
    Container {
        id: String,
        #[source]
        source: EngineError,
    },
    #[error("failed to remove the job directory {}: {source}", path.display())]
    Workspace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

async fn release_all(
    engine: &dyn Engine,
    run: &RunId,
    containers: &[String],
    workspace: Option<&Path>,
    images: &[String],
) -> Result<(), CleanupError> {
    let removals = containers.iter().map(|id| async move {
        engine.remove(id).await.map_err(|source| CleanupError::Container { id: id.clone(), source })
    });
    let mut first_error = futures_util::future::join_all(removals).await.into_iter().find_map(Result::err);
    if let Some(path) = workspace {
        if let Err(e) = remove_workspace(engine, run, path, images).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Removes a run directory; what this user may not remove (a stage's root-owned files) is
/// removed by a container running as root with the directory mounted.
pub(crate) async fn remove_workspace(
    engine: &dyn Engine,
    run: &RunId,
    path: &Path,
    images: &[String],
) -> Result<(), CleanupError> {
    let first = remove_dir(path.to_path_buf()).await;
    let Err(error) = first else { return Ok(()) };
    if error.kind() != io::ErrorKind::PermissionDenied {
        return Err(CleanupError::Workspace { path: path.to_path_buf(), source: error });
    }
    for image in images {
        if remove_as_root(engine, run, path, image).await.is_ok() && remove_dir(path.to_path_buf()).await.is_ok() {
            return Ok(());
        }
    }
    Err(CleanupError::Workspace { path: path.to_path_buf(), source: error })
}

async fn remove_dir(path: PathBuf) -> io::Result<()> {
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// Runs `rm -rf /job` as root in a container of `image` with the run directory at `/job`. The
/// mount point itself cannot go, so `rm` exits non-zero; what counts is what is left after.
async fn remove_as_root(engine: &dyn Engine, run: &RunId, path: &Path, image: &str) -> Result<(), EngineError> {
    let mut stage = Stage::new(image);
    stage.networking = false;
    stage.memory = crate::units::MemorySize(64 << 20);
    stage.output_limit = 1 << 16;
    let spec = ContainerSpec {
        name: format!("chainlink-{run}-cleanup-{}", RUN_SEQUENCE.fetch_add(1, Ordering::Relaxed)),
        stage: &stage,
        env: Vec::new(),
        job: JobMount::HostDir(path.to_path_buf()),
        labels: container_labels(run, None),
        user_override: Some("0:0".to_string()),
        entrypoint_override: Some(vec!["rm".into(), "-rf".into(), "/job".into()]),
    };
    let id = engine.create(&spec).await?;
    let ran = async {
        engine.start(&id).await?;
        tokio::time::timeout(Duration::from_secs(60), engine.wait(&id))
            .await
            .map_err(|_| EngineError::new(crate::engine::EngineErrorKind::Timeout, "cleanup container did not finish"))?
    }
    .await;
    engine.remove(&id).await?;
    ran.map(|_| ())
}

/// What a sweep found and removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub containers: Vec<String>,
    pub directories: Vec<PathBuf>,
}

/// Removes what runs of dead processes on this host left: labelled containers and run
/// directories under `workdir`. Runs of live processes, and containers of other hosts sharing
/// the engine, are left alone. `cleanup_images` are tried, in order, for a root cleanup
/// container when a directory holds files this user may not remove.
pub async fn sweep_dead_runs(
    engine: &dyn Engine,
    workdir: &Path,
    cleanup_images: &[String],
) -> Result<SweepReport, CleanupError> {
    let me = hostname();
    let mut report = SweepReport::default();
    let found = engine
        .list_labelled(LABEL_MANAGED)
        .await
        .map_err(|source| CleanupError::Container { id: "(listing)".into(), source })?;
    for container in found {
        let Some(owner) = container.labels.get(LABEL_OWNER).and_then(|l| Owner::parse(l)) else { continue };
        if owner.host == me && !process_alive(owner.pid, owner.start_time) {
            engine
                .remove(&container.id)
                .await
                .map_err(|source| CleanupError::Container { id: container.id.clone(), source })?;
            report.containers.push(container.id);
        }
    }
    let entries = match std::fs::read_dir(workdir) {
        Ok(entries) => entries,
        Err(_) => return Ok(report),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(run) = name.to_str().and_then(|n| n.strip_prefix(RUN_DIR_PREFIX)) else { continue };
        let Some((pid, start)) = RunId::owner_process(run) else { continue };
        if !process_alive(pid, start) && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let path = entry.path();
            remove_workspace(engine, &RunId(run.to_string()), &path, cleanup_images).await?;
            report.directories.push(path);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_round_trip_and_this_process_is_alive() {
        let me = Owner::current();
        assert_eq!(Owner::parse(&me.label()), Some(me.clone()));
        assert!(process_alive(me.pid, me.start_time));
        assert!(!process_alive(me.pid, me.start_time + 1));
        let run = RunId::new();
        assert_eq!(RunId::owner_process(run.as_str()), Some((me.pid, me.start_time)));
        assert_ne!(RunId::new(), run);
    }
}
