//! Where a run's `/job` lives. Today: a fresh directory under the chain's `workdir` on the
//! engine's host, bind-mounted into every stage. The runner sees only [`Workspace::mount`], so a
//! backend without host bind mounts can put `/job` somewhere else (a volume, an emptyDir).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::cleanup::RunId;
use crate::engine::JobMount;

/// Run directories are named `chainlink-run-<run id>`, so a sweep can find those of dead runs.
pub const RUN_DIR_PREFIX: &str = "chainlink-run-";

/// A run's `/job` directory.
#[derive(Debug)]
pub struct Workspace {
    path: PathBuf,
}

impl Workspace {
    /// Creates the run's directory under `workdir`, writable by any user a stage runs as.
    pub fn create(workdir: &Path, run: &RunId) -> io::Result<Workspace> {
        let path = workdir.join(format!("{RUN_DIR_PREFIX}{run}"));
        std::fs::create_dir(&path)?;
        // The umask would narrow a mode given at creation; set it afterwards.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
        Ok(Workspace { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn mount(&self) -> JobMount {
        JobMount::HostDir(self.path.clone())
    }
}

/// Checks that `workdir` can hold run directories: it exists, is a directory, and a directory
/// can be made in it (tried for real: permission bits say nothing of read-only mounts, and
/// root passes every access check).
pub fn check_workdir(workdir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(workdir).map_err(|e| format!("{} ({e})", workdir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} (not a directory)", workdir.display()));
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let probe = workdir.join(format!(".chainlink-probe-{}-{nanos}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&probe);
            Ok(())
        }
        Err(e) => Err(format!("{} (cannot create a directory in it: {e})", workdir.display())),
    }
}
