//! Nothing of a run is left behind, in three layers:
//!
//! 1. explicit, idempotent cleanup at the end of every run, on every path (success, failed
//!    stage, timeout, engine error, cancellation through a token): [`RunGuard::cleanup`];
//! 2. the guard's `Drop`, the last line of defence when the run future is dropped mid-flight:
//!    it removes what the run still holds from a thread of its own, on a new connection;
//! 3. labels and names, so that what a killed process left is found by [`sweep_dead_runs`]
//!    (run by the CLI at start, by `chainlink gc` and by Python's `chainlink.gc`).
//!
//! Whether a run is over is never judged from the runner's process table: the run's lock
//! decides where the sweep can see the run directory (any PID namespace, hostname or container
//! on the same filesystem), and the deadline in the container's labels decides where it cannot
//! (another machine, another user). See docs/cleanup.md.
//!
//! Files a stage wrote into `/job` as root (mode 000, nested) cannot be removed by a runner that
//! is not root; a short container of one of the chain's images removes them as root instead.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::engine::{ContainerSpec, Engine, EngineError, JobMount, SharedEngine};
use crate::spec::Stage;
use crate::tree::RemovalReport;
use crate::workspace::{
    check_private_dir, effective_uid, private_dir, probe_run, stale_staging, Liveness, LockFile, Workspace, JOB_DIR, LOCK_FILE,
    RUN_DIR_PREFIX, STAGING_PREFIX,
};

/// Every container we create carries this label.
pub const LABEL_MANAGED: &str = "org.chainlink.managed";
pub const LABEL_RUN: &str = "org.chainlink.run";
pub const LABEL_STAGE: &str = "org.chainlink.stage";
/// `<hostname>/<pid>/<uid>` of the process that ran the chain: for people, and the uid for
/// the sweep (a run directory of another user proves nothing).
pub const LABEL_OWNER: &str = "org.chainlink.owner";
/// The run's private directory on the runner's host (its lock is inside).
pub const LABEL_RUN_DIR: &str = "org.chainlink.run-dir";
/// Unix seconds after which nothing can legitimately use the container any more: a sweep that
/// cannot see the run's lock removes it then.
pub const LABEL_DEADLINE: &str = "org.chainlink.deadline";

/// How long a cleanup container may run.
const CLEANUP_CONTAINER_TIMEOUT: Duration = Duration::from_secs(60);

/// A run's identity: `<pid>-<64 random bits in hex>`. The random part makes it unique across
/// hosts and PID namespaces, and unguessable, so nobody can make its directory first; the pid
/// only helps a person find a process's runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunId(String);

static RUN_SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl RunId {
    pub fn new() -> RunId {
        RunId(format!("{}-{:016x}", std::process::id(), random_u64()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
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

/// 64 bits from the kernel's random source (getrandom(2) never blocks once the pool is
/// initialised, which it is long before any runner starts).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the buffer is valid for writes of its length.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        // Cannot happen on Linux >= 3.17; stay unique (not unguessable) rather than fail.
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        return nanos ^ RUN_SEQUENCE.fetch_add(1, Ordering::Relaxed).rotate_left(32);
    }
    u64::from_ne_bytes(bytes)
}

fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its length; the result is NUL-terminated
    // within it on success (we also cut at the length).
    if unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } != 0 {
        return String::new();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

fn owner_label() -> String {
    format!("{}/{}/{}", hostname(), std::process::id(), effective_uid())
}

fn owner_uid(label: &str) -> Option<u32> {
    label.rsplit('/').next()?.parse().ok()
}

pub(crate) fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The labels of a container of run `run`: `stage` is its index (`None` for a cleanup
/// container); `deadline` the latest moment it can legitimately still be in use.
pub(crate) fn container_labels(
    run: &RunId,
    stage: Option<usize>,
    run_dir: &Path,
    deadline: SystemTime,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_RUN.to_string(), run.to_string()),
        (LABEL_OWNER.to_string(), owner_label()),
        (LABEL_RUN_DIR.to_string(), run_dir.to_string_lossy().into_owned()),
        (LABEL_DEADLINE.to_string(), unix_seconds(deadline).to_string()),
    ]);
    if let Some(index) = stage {
        labels.insert(LABEL_STAGE.to_string(), index.to_string());
    }
    labels
}

/// A run directory to remove, with the lock that keeps sweeps off it until it is gone.
#[derive(Debug, Clone)]
struct RunDir {
    root: PathBuf,
    /// Dropped (and the lock released) only once the directory is gone.
    _lock: Option<Arc<LockFile>>,
}

#[derive(Debug, Default)]
struct Held {
    containers: Vec<String>,
    run_dir: Option<RunDir>,
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
    pub(crate) fn new(engine: SharedEngine, run: RunId, workspace: &Workspace, images: Vec<String>) -> RunGuard {
        let run_dir = RunDir { root: workspace.root().to_path_buf(), _lock: Some(workspace.lock()) };
        let held = Held { run_dir: Some(run_dir), ..Default::default() };
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

    /// Removes every container still held and the run directory. Safe to call more than once.
    pub(crate) async fn cleanup(&self) -> Result<(), CleanupError> {
        let (creates, removals) = {
            let mut held = self.held.lock().unwrap();
            (std::mem::take(&mut held.creates), std::mem::take(&mut held.removals))
        };
        for task in creates.into_iter().chain(removals) {
            let _ = task.await;
        }
        let (containers, run_dir) = {
            let held = self.held.lock().unwrap();
            (held.containers.clone(), held.run_dir.clone())
        };
        let result = release_all(&*self.engine, &self.run, &containers, run_dir.as_ref(), &self.images).await;
        // What could not be removed stays for the sweep (the run's lock goes with the guard):
        // the drop must not try again, synchronously, on a thread of the caller's runtime.
        let mut held = self.held.lock().unwrap();
        held.containers.clear();
        held.run_dir = None;
        held.done = true;
        result
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let (containers, run_dir, creates) = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if held.done || (held.containers.is_empty() && held.run_dir.is_none()) {
                return;
            }
            (held.containers.clone(), held.run_dir.take(), std::mem::take(&mut held.creates))
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
                release_all(&*engine, &run, &containers, run_dir.as_ref(), &images).await.ok()
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
    /// Entries of a run directory that could not be removed (an immutable file, say); the
    /// rest was removed, and the directory stays for a later sweep.
    #[error("failed to remove the run directory {}: {}", path.display(), describe_failures(failures, *more))]
    Workspace {
        path: PathBuf,
        /// The first failures, each `path: error`.
        failures: Vec<String>,
        /// How many more there were.
        more: u64,
    },
}

fn describe_failures(failures: &[String], more: u64) -> String {
    let mut text = failures.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
    let rest = (failures.len().saturating_sub(3)) as u64 + more;
    if rest > 0 {
        text.push_str(&format!("; and {rest} more"));
    }
    text
}

async fn release_all(
    engine: &dyn Engine,
    run: &RunId,
    containers: &[String],
    run_dir: Option<&RunDir>,
    images: &[String],
) -> Result<(), CleanupError> {
    let removals = containers.iter().map(|id| async move {
        engine.remove(id).await.map_err(|source| CleanupError::Container { id: id.clone(), source })
    });
    let mut first_error = futures_util::future::join_all(removals).await.into_iter().find_map(Result::err);
    if let Some(run_dir) = run_dir {
        if let Err(e) = remove_run_dir(engine, run, &run_dir.root, images).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Removes a run directory: its `job` tree first (what this user may not remove, a stage's
/// root-owned files, by a container running as root with it mounted), then the lock, then the
/// directory, so that a directory still holding anything always still holds its lock. The
/// caller holds the lock throughout.
pub(crate) async fn remove_run_dir(
    engine: &dyn Engine,
    run: &RunId,
    root: &Path,
    images: &[String],
) -> Result<(), CleanupError> {
    // Only ever inside this user's private directory, checked again now: nothing is removed,
    // nor mounted into a root container, through a directory someone else controls.
    if let Err(e) = root.parent().map_or(Ok(()), check_private_dir) {
        return Err(CleanupError::Workspace { path: root.to_path_buf(), failures: vec![e.to_string()], more: 0 });
    }
    let job = root.join(JOB_DIR);
    let mut report = remove_tree(job.clone()).await;
    // Anything else beside the lock (nothing a stage can put there, but the runner's user
    // may have): removed the same way.
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name != LOCK_FILE && name != JOB_DIR {
                report.failures.extend(remove_tree(entry.path()).await.failures);
            }
        }
    }
    let denied = report.failures.iter().any(|(_, e)| e.kind() == io::ErrorKind::PermissionDenied);
    if denied && effective_uid() != 0 {
        for image in images {
            if remove_as_root(engine, run, root, &job, image).await.is_ok() {
                let failures = std::mem::take(&mut report.failures);
                report = remove_tree(job.clone()).await;
                report.failures.extend(failures.into_iter().filter(|(path, _)| !path.starts_with(&job)));
                if report.is_complete() {
                    break;
                }
            }
        }
    }
    if !report.is_complete() {
        let more = report.failures.len().saturating_sub(10) as u64;
        let failures = report.failures.iter().take(10).map(|(p, e)| format!("{}: {e}", p.display())).collect();
        return Err(CleanupError::Workspace { path: root.to_path_buf(), failures, more });
    }
    let gone = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    gone(std::fs::remove_file(root.join(LOCK_FILE)))
        .and_then(|()| gone(std::fs::remove_dir(root)))
        .map_err(|e| CleanupError::Workspace { path: root.to_path_buf(), failures: vec![e.to_string()], more: 0 })?;
    Ok(())
}

async fn remove_tree(path: PathBuf) -> RemovalReport {
    tokio::task::spawn_blocking(move || crate::tree::remove_tree(&path)).await.unwrap_or_else(|e| RemovalReport {
        failures: vec![(PathBuf::from("(removal task)"), io::Error::other(e.to_string()))],
        ..Default::default()
    })
}

/// Runs `rm -rf /job` as root in a container of `image` with the job directory at `/job`. The
/// mount point itself cannot go, so `rm` exits non-zero; what counts is what is left after.
async fn remove_as_root(engine: &dyn Engine, run: &RunId, root: &Path, job: &Path, image: &str) -> Result<(), EngineError> {
    let mut stage = Stage::new(image);
    stage.networking = false;
    stage.memory = crate::units::MemorySize(64 << 20);
    stage.output_limit = 1 << 16;
    stage.disk_limit = None;
    let deadline = SystemTime::now() + CLEANUP_CONTAINER_TIMEOUT + crate::runner::STAGE_SLACK;
    let spec = ContainerSpec {
        name: format!("chainlink-{run}-cleanup-{}", RUN_SEQUENCE.fetch_add(1, Ordering::Relaxed)),
        stage: &stage,
        env: Vec::new(),
        job: JobMount::HostDir(job.to_path_buf()),
        labels: container_labels(run, None, root, deadline),
        user_override: Some("0:0".to_string()),
        entrypoint_override: Some(vec!["rm".into(), "-rf".into(), "/job".into()]),
    };
    let id = engine.create(&spec).await?;
    let ran = async {
        engine.start(&id).await?;
        tokio::time::timeout(CLEANUP_CONTAINER_TIMEOUT, engine.wait(&id))
            .await
            .map_err(|_| EngineError::new(crate::engine::EngineErrorKind::Timeout, "cleanup container did not finish"))?
    }
    .await;
    engine.remove(&id).await?;
    ran.map(|_| ())
}

/// What a sweep found and removed, and what it could not remove.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Ids of the containers removed.
    pub containers: Vec<String>,
    /// Run directories removed.
    pub directories: Vec<PathBuf>,
    /// What could not be removed, and why; the sweep goes on past each.
    pub failures: Vec<SweepFailure>,
}

/// One thing a sweep could not remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepFailure {
    /// `container <id>` or a path.
    pub what: String,
    pub error: String,
}

impl std::fmt::Display for SweepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.error)
    }
}

/// Removes what finished runs left: every labelled container on the engine whose run is
/// provably over, and every run directory under `workdir` whose lock nobody holds. Never
/// anything of a live run.
///
/// A container's run is over when its run directory (named in its labels) can be seen from
/// here and its lock is free, or gone; when the directory cannot be seen (a runner on another
/// machine, another user's 0700 directory) only its deadline label counts. `cleanup_images`
/// are tried, in order, for a root cleanup container when a directory holds files this user
/// may not remove, then the images of chainlink's containers on the engine. One failure never
/// stops the sweep: it is reported and the sweep goes on.
pub async fn sweep_dead_runs(
    engine: &dyn Engine,
    workdir: &Path,
    cleanup_images: &[String],
) -> Result<SweepReport, CleanupError> {
    let mut report = SweepReport::default();
    let found = engine
        .list_labelled(LABEL_MANAGED)
        .await
        .map_err(|source| CleanupError::Container { id: "(listing)".into(), source })?;
    let now = unix_seconds(SystemTime::now());
    let mut images: Vec<String> = cleanup_images.to_vec();
    for container in &found {
        if let Some(image) = &container.image {
            if !images.contains(image) {
                images.push(image.clone());
            }
        }
        let labels = &container.labels;
        let deadline = labels.get(LABEL_DEADLINE).and_then(|d| d.parse::<u64>().ok());
        let liveness = match (labels.get(LABEL_RUN_DIR), labels.get(LABEL_RUN)) {
            (Some(dir), Some(run)) => {
                let uid = labels.get(LABEL_OWNER).and_then(|o| owner_uid(o));
                let (dir, run) = (PathBuf::from(dir), run.clone());
                tokio::task::spawn_blocking(move || probe_run(&dir, &run, uid))
                    .await
                    .unwrap_or(Liveness::Unknown { deadline: None })
            }
            _ => Liveness::Unknown { deadline: None },
        };
        let over = match liveness {
            Liveness::Live => false,
            Liveness::Over(_) => true,
            // Without a deadline (a container of an older chainlink) nothing proves it over.
            Liveness::Unknown { .. } => deadline.is_some_and(|d| now > d),
        };
        if over {
            match engine.remove(&container.id).await {
                Ok(()) => report.containers.push(container.id.clone()),
                Err(e) => report.failures.push(SweepFailure { what: format!("container {}", container.id), error: e.to_string() }),
            }
        }
    }
    // Run directories: only in this user's private directory, which nobody else can write to,
    // in a workdir where nobody else can rename it. Otherwise they are never looked into.
    if let Err(why) = crate::workspace::check_workdir_ownership(workdir) {
        report.failures.push(SweepFailure { what: workdir.display().to_string(), error: why });
        return Ok(report);
    }
    let private = private_dir(workdir);
    let entries = match std::fs::symlink_metadata(&private) {
        Err(_) => return Ok(report),
        Ok(_) => match check_private_dir(&private).and_then(|()| std::fs::read_dir(&private)) {
            Ok(entries) => entries,
            Err(e) => {
                report.failures.push(SweepFailure { what: private.display().to_string(), error: e.to_string() });
                return Ok(report);
            }
        },
    };
    let mut asked_for_local_images = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        // Never through a symlink: only real directories are ours to look into.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let run = if let Some(run) = name.strip_prefix(RUN_DIR_PREFIX) {
            run
        } else if let Some(run) = name.strip_prefix(STAGING_PREFIX) {
            if !stale_staging(&path) {
                continue;
            }
            run
        } else {
            continue;
        };
        let probe_path = path.clone();
        let run_text = run.to_string();
        let liveness = tokio::task::spawn_blocking(move || probe_run(&probe_path, &run_text, Some(effective_uid())))
            .await
            .unwrap_or(Liveness::Unknown { deadline: None });
        let lock = match liveness {
            Liveness::Over(lock) => lock,
            // A staging directory never got far enough to lock: its maker died making it.
            Liveness::Unknown { .. } if name.starts_with(STAGING_PREFIX) => None,
            Liveness::Unknown { deadline: Some(d) } if now > d => None,
            Liveness::Live | Liveness::Unknown { .. } => continue,
        };
        let run = RunId(run.to_string());
        let mut removed = remove_run_dir(engine, &run, &path, &images).await;
        // Last resort for a root cleanup container, asked for only when needed: any image the
        // engine holds (it runs `rm` with no network and only the dead run's own /job mounted).
        if removed.is_err() && effective_uid() != 0 && !asked_for_local_images {
            asked_for_local_images = true;
            let known = images.len();
            if let Ok(local) = engine.local_images().await {
                images.extend(local.into_iter().filter(|i| !images.contains(i)).take(5).collect::<Vec<_>>());
            }
            if images.len() > known {
                removed = remove_run_dir(engine, &run, &path, &images[known..]).await;
            }
        }
        drop(lock);
        match removed {
            Ok(()) => report.directories.push(path),
            Err(e) => report.failures.push(SweepFailure { what: path.display().to_string(), error: e.to_string() }),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_unique_and_name_this_process() {
        let (a, b) = (RunId::new(), RunId::new());
        assert_ne!(a, b);
        assert!(a.as_str().starts_with(&format!("{}-", std::process::id())), "{a}");
        assert!(a.as_str().chars().all(|c| c.is_ascii_hexdigit() || c == '-'), "{a}");
        assert_eq!(owner_uid(&owner_label()), Some(effective_uid()));
    }

    #[test]
    fn a_locked_run_is_live_and_a_released_one_is_over() {
        let workdir = tempfile::tempdir().unwrap();
        let run = RunId::new();
        let deadline = SystemTime::now() + Duration::from_secs(60);
        let workspace = Workspace::create(workdir.path(), &run, deadline).unwrap();
        assert!(matches!(probe_run(workspace.root(), run.as_str(), None), Liveness::Live));
        // Another run's id, or another user's directory, proves nothing.
        assert!(matches!(probe_run(workspace.root(), "1-0000000000000000", None), Liveness::Unknown { .. }));
        assert!(matches!(probe_run(workspace.root(), run.as_str(), Some(effective_uid() + 1)), Liveness::Unknown { .. }));
        let root = workspace.root().to_path_buf();
        drop(workspace);
        assert!(matches!(probe_run(&root, run.as_str(), None), Liveness::Over(Some(_))));
        assert!(matches!(probe_run(&workdir.path().join("missing"), run.as_str(), None), Liveness::Unknown { deadline: None }));
    }

    /// A runner killed between making its staging directory and renaming it into place (the
    /// worst moment for a SIGKILL) leaves a `.chainlink-new-*` directory whose lock nobody
    /// holds: a sweep leaves it while it is fresh (a run may be making it right now) and
    /// removes it once it is stale; a live run's staging directory is never touched.
    #[tokio::test]
    async fn a_staging_directory_left_by_a_killed_runner_goes_once_stale() {
        let workdir = tempfile::tempdir().unwrap();
        let engine = crate::engine::fake::FakeEngine::new([]);
        let private = crate::workspace::private_dir(workdir.path());
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let make = |run: &str| {
            let staging = private.join(format!("{STAGING_PREFIX}{run}"));
            std::fs::create_dir_all(staging.join(JOB_DIR)).unwrap();
            std::fs::write(staging.join(LOCK_FILE), format!("{run}\n0\n")).unwrap();
            staging
        };
        let age = |path: &Path, seconds: u64| {
            let then = SystemTime::now() - Duration::from_secs(seconds);
            std::fs::File::open(path).unwrap().set_modified(then).unwrap();
        };
        let fresh = make("1-00000000000000f1");
        let stale = make("1-00000000000000f2");
        age(&stale, 11 * 60);
        // A stale staging directory whose lock is held: a runner stuck making it, alive.
        let held = make("1-00000000000000f3");
        age(&held, 11 * 60);
        let holder = std::fs::File::open(held.join(LOCK_FILE)).unwrap();
        crate::workspace::flock_for_tests(&holder);

        let report = sweep_dead_runs(&engine, workdir.path(), &[]).await.unwrap();
        assert_eq!(report.directories, [stale.clone()], "{report:?}");
        assert!(report.failures.is_empty(), "{report:?}");
        assert!(fresh.exists() && held.exists() && !stale.exists());
    }

    #[test]
    fn a_fifo_for_a_lock_proves_nothing_and_blocks_nothing() {
        let workdir = tempfile::tempdir().unwrap();
        let root = workdir.path().join("chainlink-run-1-00000000000000ff");
        std::fs::create_dir(&root).unwrap();
        let fifo = std::ffi::CString::new(root.join(LOCK_FILE).into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(matches!(probe_run(&root, "1-00000000000000ff", None), Liveness::Unknown { .. }));
    }

    /// A forked child of the runner (a multiprocessing worker) must not keep the run alive in
    /// the eyes of sweeps once the runner itself is gone.
    #[test]
    fn a_forked_child_does_not_hold_its_parents_run_lock() {
        let workdir = tempfile::tempdir().unwrap();
        let run = RunId::new();
        let workspace = Workspace::create(workdir.path(), &run, SystemTime::now() + Duration::from_secs(60)).unwrap();
        // SAFETY: the child only sleeps and exits (async-signal-safe calls), whatever threads the
        // test harness has.
        let child = unsafe { libc::fork() };
        if child == 0 {
            unsafe {
                libc::sleep(30);
                libc::_exit(0);
            }
        }
        assert!(child > 0);
        let root = workspace.root().to_path_buf();
        drop(workspace);
        // The child lets go in its fork handler, which runs once it is scheduled: give it a
        // moment (it never lets go without the handler: it sleeps for 30 s).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut liveness = probe_run(&root, run.as_str(), None);
        while matches!(liveness, Liveness::Live) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            liveness = probe_run(&root, run.as_str(), None);
        }
        // SAFETY: our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        assert!(matches!(liveness, Liveness::Over(Some(_))), "{liveness:?}");
    }
}
