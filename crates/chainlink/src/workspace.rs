//! Where a run's `/job` lives, and how a run proves it is alive.
//!
//! Each user's runs live in a private directory of that user under the chain's `workdir`,
//! checked (owner, mode, not a link) before anything is made or removed in it, so that no other
//! user of the host can put anything in it, nor see what is in it:
//!
//! ```text
//! <workdir>/chainlink-<uid>/               0700, the runner's user; kept between runs
//!     chainlink-run-<run id>/              0700
//!         lock                             run id and deadline; flock'ed for the run's lifetime
//!         job/                             0777, bind-mounted at /job in every stage
//! ```
//!
//! The lock is what a sweep asks: a run whose lock can be taken is over, whatever PID
//! namespace, hostname or container its runner lived in (flock works across them on one
//! filesystem, and the kernel drops it when the runner dies, SIGKILL included). A run directory
//! is made under a staging name and renamed into place only once the lock is held, so a sweep
//! never sees a run directory whose lock is not yet taken. The private directory stays once
//! made (empty between runs), as tmux's `/tmp/tmux-<uid>` does: removing it would give its name
//! back to whoever makes it next, between one of our checks and our next use of the path.
//!
//! The runner sees only [`Workspace::mount`], so a backend without host bind mounts can put
//! `/job` somewhere else (a volume, an emptyDir).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cleanup::RunId;
use crate::engine::JobMount;

/// A user's private directory in a workdir is `chainlink-<uid>`.
pub const PRIVATE_DIR_PREFIX: &str = "chainlink-";
/// Run directories are named `chainlink-run-<run id>`, so a sweep can find those of dead runs.
pub const RUN_DIR_PREFIX: &str = "chainlink-run-";
/// A run directory being set up, not yet locked: sweeps leave it alone until it is stale.
pub(crate) const STAGING_PREFIX: &str = ".chainlink-new-";
/// The lock file in a run directory.
pub(crate) const LOCK_FILE: &str = "lock";
/// The directory mounted at `/job`, in a run directory.
pub(crate) const JOB_DIR: &str = "job";

/// A run's private directory and its `/job`, locked while the run lives.
#[derive(Debug)]
pub struct Workspace {
    root: PathBuf,
    path: PathBuf,
    lock: Arc<LockFile>,
}

/// A run's lock file, held (flock) while it is open; forgotten by forked children.
#[derive(Debug)]
pub(crate) struct LockFile(File);

impl Drop for LockFile {
    fn drop(&mut self) {
        fork_safety::forget(&self.0);
    }
}

impl Workspace {
    /// Creates the run's private directory under `workdir` and takes its lock; `deadline` (the
    /// latest the run can legitimately still be going) is written into the lock file for
    /// sweeps on filesystems where locks do not work.
    pub fn create(workdir: &Path, run: &RunId, deadline: SystemTime) -> io::Result<Workspace> {
        // The private directory may be removed by the last run of another process between our
        // check and our mkdir in it: make it again, a few times.
        check_workdir_ownership(workdir).map_err(|why| io::Error::new(io::ErrorKind::PermissionDenied, why))?;
        let parent = ensure_private_dir(workdir)?;
        let staging = parent.join(format!("{STAGING_PREFIX}{run}"));
        // 0700 from the start: no moment at which anyone else could get in.
        std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
        let root = parent.join(format!("{RUN_DIR_PREFIX}{run}"));
        let made = (|| {
            std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))?;
            // Wrapped at once, so that its slot in the fork table goes with it on any error.
            let mut lock = LockFile(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(staging.join(LOCK_FILE))?,
            );
            fork_safety::forget_in_children(&lock.0);
            flock(&lock.0, libc::LOCK_EX | libc::LOCK_NB)?;
            write!(lock.0, "{run}\n{}\n", crate::cleanup::unix_seconds(deadline))?;
            let job = staging.join(JOB_DIR);
            std::fs::create_dir(&job)?;
            // Stages may run as any user: /job is open to all of them, behind the 0700 parents.
            std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o777))?;
            std::fs::rename(&staging, &root)?;
            Ok::<_, io::Error>(lock)
        })();
        match made {
            Ok(lock) => Ok(Workspace { path: root.join(JOB_DIR), root, lock: Arc::new(lock) }),
            Err(e) => {
                let _ = crate::tree::remove_tree(&staging);
                Err(e)
            }
        }
    }

    /// The run's private directory (the parent of `/job`'s directory).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The lock, for whoever must keep the run alive until its directory is removed.
    pub(crate) fn lock(&self) -> Arc<LockFile> {
        self.lock.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mount(&self) -> JobMount {
        JobMount::HostDir(self.path.clone())
    }

    /// What `/job` occupies on disk now (see [`crate::tree::measure`]), measured on a blocking
    /// thread: a tree a stage made can be large, and the walk must not stall the runtime that
    /// follows the stage's output. `skipped` counts what this user could not read.
    pub async fn disk_usage(&self) -> io::Result<crate::tree::Usage> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || crate::tree::measure(&path))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("failed to measure /job: {e}"))))
    }
}

/// Checks that `workdir` can hold run directories: a UTF-8 path without `:` (the engine's bind
/// syntax splits on `:` and turns bytes that are not UTF-8 into U+FFFD, mounting a directory of
/// its own making), an existing directory, and one a directory can be made in (tried for real:
/// permission bits say nothing of read-only mounts, and root passes every access check).
pub fn check_workdir(workdir: &Path) -> Result<(), String> {
    let Some(text) = workdir.to_str() else {
        return Err(format!("{} (not UTF-8: the engine cannot mount it)", workdir.display()));
    };
    if text.contains(':') {
        return Err(format!("{text:?} (holds ':', which the engine's mount syntax cannot take)"));
    }
    let meta = std::fs::metadata(workdir).map_err(|e| format!("{} ({e})", workdir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} (not a directory)", workdir.display()));
    }
    check_workdir_ownership(workdir)?;
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let probe = workdir.join(format!(".chainlink-probe-{}-{nanos}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&probe);
            Ok(())
        }
        Err(e) => Err(format!("{} (cannot create a directory in it: {e})", workdir.display())),
    }
}

/// Takes `file`'s lock as a live runner holds it (for tests of the sweep).
#[cfg(test)]
pub(crate) fn flock_for_tests(file: &File) {
    flock(file, libc::LOCK_EX | libc::LOCK_NB).expect("flock");
}

fn flock(file: &File, operation: libc::c_int) -> io::Result<()> {
    // SAFETY: the descriptor is valid for the duration of the call (borrowed from `file`).
    if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What a sweep can tell of a run from its directory.
#[derive(Debug)]
pub(crate) enum Liveness {
    /// Its lock is held: the run goes on.
    Live,
    /// Its lock could be taken (and is held by the file, when there is one, until it is
    /// dropped): the run is over.
    Over(Option<File>),
    /// Nothing can be proven from here (another machine's or user's directory, a filesystem
    /// without locks): the deadline decides, when one is known.
    Unknown { deadline: Option<u64> },
}

/// Asks the run directory `root` whether run `run` is alive. `owner_uid`: the user the run's
/// labels say made it; a directory of another user is no proof either way.
pub(crate) fn probe_run(root: &Path, run: &str, owner_uid: Option<u32>) -> Liveness {
    use std::os::unix::fs::MetadataExt;
    let unknown = Liveness::Unknown { deadline: None };
    let Ok(meta) = std::fs::symlink_metadata(root) else { return unknown };
    if !meta.is_dir() || owner_uid.is_some_and(|uid| uid != meta.uid()) {
        return unknown;
    }
    // Never a link, never a FIFO that would block the open for ever: a regular file of the
    // directory's owner, or no proof.
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(root.join(LOCK_FILE));
    let mut lock = match lock {
        Ok(lock) => lock,
        // A run directory gets its lock before it gets its name, and loses it only after its
        // job directory is gone: a run directory without one is a removal cut short.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Liveness::Over(None),
        Err(_) => return unknown,
    };
    match lock.metadata() {
        Ok(m) if m.file_type().is_file() && m.uid() == meta.uid() => {}
        _ => return unknown,
    }
    let mut text = String::new();
    if (&mut lock).take(256).read_to_string(&mut text).is_err() {
        return unknown;
    }
    let mut lines = text.lines();
    if lines.next() != Some(run) {
        return unknown;
    }
    let deadline = lines.next().and_then(|d| d.parse().ok());
    match flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Liveness::Over(Some(lock)),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Liveness::Live,
        Err(_) => Liveness::Unknown { deadline },
    }
}

pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether nobody but this user (and root) can rename entries of `workdir`: it is this user's
/// or root's, and anyone else who may write to it is held back by the sticky bit (as in
/// `/tmp`). Otherwise someone could swap this user's private directory for their own.
pub fn check_workdir_ownership(workdir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(workdir).map_err(|e| format!("{} ({e})", workdir.display()))?;
    let owner_ok = meta.uid() == effective_uid() || meta.uid() == 0;
    let shared_without_sticky = meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
    if !owner_ok || shared_without_sticky {
        return Err(format!(
            "{} (owner uid {}, mode {:o}: others could rename what chainlink makes in it; use a \
             directory of this user's, or one with the sticky bit as /tmp has)",
            workdir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// This user's private directory in `workdir` (which may not exist).
pub fn private_dir(workdir: &Path) -> PathBuf {
    workdir.join(format!("{PRIVATE_DIR_PREFIX}{}", effective_uid()))
}

/// Makes this user's private directory in `workdir`, or checks the one there.
fn ensure_private_dir(workdir: &Path) -> io::Result<PathBuf> {
    let dir = private_dir(workdir);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {
            // The umask may have narrowed the mode; it may not widen it.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_private_dir(&dir)?;
    Ok(dir)
}

/// A private directory must be a directory (not a link to one) of this user that nobody else
/// may enter: anything else was put there by someone else, and nothing is made or removed in it.
pub(crate) fn check_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != effective_uid() || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not this user's private directory (a {}, owner uid {}, mode {:o}); \
                 someone else made it: remove it or use another workdir",
                dir.display(),
                if meta.is_dir() { "directory" } else if meta.file_type().is_symlink() { "symlink" } else { "file" },
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Forked children must not keep a run's lock: a child of a runner (a multiprocessing worker,
/// say) that outlives it would make its dead run look alive to every sweep. Each lock's
/// descriptor is recorded; in a child right after `fork`, each is pointed at `/dev/null`, which
/// drops the child's share of the lock and leaves the descriptor number valid for whatever
/// the child's copy of the runner's memory later does with it.
mod fork_safety {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Once;

    /// Runs in flight at once in one process that a child can inherit; more are not forgotten
    /// in children (they stay correct, only held longer).
    const SLOTS: usize = 1024;
    static LOCKS: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];
    static INSTALL: Once = Once::new();

    extern "C" fn in_child() {
        // Only async-signal-safe calls here: open, dup2, close.
        // SAFETY: a NUL-terminated literal path; the descriptors are plain integers.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if null < 0 {
                return;
            }
            for slot in &LOCKS {
                let fd = slot.load(Ordering::Relaxed);
                if fd >= 0 {
                    libc::dup2(null, fd);
                }
            }
            libc::close(null);
        }
    }

    pub(super) fn forget_in_children(file: &File) {
        INSTALL.call_once(|| {
            // SAFETY: registers a handler with no preconditions; it only makes async-signal-safe
            // calls.
            unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        });
        let fd = file.as_raw_fd();
        for slot in &LOCKS {
            if slot.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return;
            }
        }
    }

    pub(super) fn forget(file: &File) {
        let fd = file.as_raw_fd();
        for slot in &LOCKS {
            if slot.compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return;
            }
        }
    }
}

/// Whether a staging directory (a run directory being made) is old enough that its maker
/// must be gone: making one takes milliseconds.
pub(crate) fn stale_staging(path: &Path) -> bool {
    const STALE: Duration = Duration::from_secs(600);
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|modified| modified.elapsed().is_ok_and(|age| age > STALE))
}
