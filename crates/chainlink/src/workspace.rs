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

/// Checks that `workdir` can hold run directories: it exists, is a directory, and is writable.
pub fn check_workdir(workdir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(workdir).map_err(|e| format!("{} ({e})", workdir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} (not a directory)", workdir.display()));
    }
    if unsafe_access_w(workdir) {
        Ok(())
    } else {
        Err(format!("{} (not writable by this user)", workdir.display()))
    }
}

fn unsafe_access_w(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}
