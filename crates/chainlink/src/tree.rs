//! Walking and removing directory trees that a hostile stage made: any depth, any number of
//! entries, mode-000 directories, symlinks anywhere. Nothing here recurses on the stack, keeps
//! more than a few descriptors open, or follows a symlink.
//!
//! Both walks share one shape: a directory is read to its end once (entries that are not
//! directories are handled as they come), its subdirectory names wait on a heap stack, and the
//! walk descends into each in turn. Only the root and the current directory stay open (plus one
//! or two for a moment while moving between them), so depth costs heap, never descriptors or
//! stack. Going back up opens `..` and checks it is the directory recorded on the way down: a
//! stage still running may move directories under the walk, and a mismatch restarts the walk
//! from the root (a bounded number of times) instead of trusting where `..` leads.
//!
//! Linux only, like the rest of the crate: `getdents64`, `O_PATH` and `/proc/self/fd`.

use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Failures kept in a [`RemovalReport`]; later ones are only counted.
const MAX_FAILURES: usize = 100;
/// Walks restarted from the root after the tree changed under them, before giving up.
const MAX_RESTARTS: u32 = 16;
/// Times one directory is read again because entries appeared in it while it was being emptied.
const MAX_RESCANS: u8 = 3;
/// Bytes kept of each end of a reported path; the middle of a longer one becomes "…".
const PATH_END: usize = 2048;
/// The `getdents64` buffer: large enough that a big directory takes few calls.
const DIRENT_BUF: usize = 64 * 1024;

/// Why a walk stopped short, besides the system's own errors (wrapped in `io::Error`).
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("failed to descend: another filesystem is mounted here")]
    OtherFilesystem,
    #[error("failed to finish: the tree kept changing during the walk ({0} restarts)")]
    KeptChanging(u32),
    #[error("failed to use the path: it contains a NUL byte")]
    NulInPath,
}

/// What a removal could not remove: each entry that failed, with its path and the error.
#[derive(Debug, Default)]
pub struct RemovalReport {
    /// The first [`MAX_FAILURES`] failures. Paths longer than about 4 KiB keep their start and
    /// end with "…" in between.
    pub failures: Vec<(PathBuf, io::Error)>,
    /// Failures beyond those kept in `failures`.
    pub failures_omitted: u64,
    /// Entries removed (files, symlinks, directories, `path` itself included).
    pub removed: u64,
}

impl RemovalReport {
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty() && self.failures_omitted == 0
    }

    fn record(&mut self, path: PathBuf, error: io::Error) {
        // A restarted walk meets the same stuck entry again: report it once.
        if self.failures.iter().any(|(p, _)| *p == path) {
            return;
        }
        if self.failures.len() < MAX_FAILURES {
            self.failures.push((path, error));
        } else {
            self.failures_omitted += 1;
        }
    }
}

/// What [`measure`] found below a path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes allocated on disk (`st_blocks * 512`), each inode counted once.
    pub bytes: u64,
    /// Entries counted (`path` itself included; a hard-linked inode once).
    pub entries: u64,
    /// Entries that could not be examined or read (and mount points, which are not entered).
    pub skipped: u64,
}

/// Removes `path` and everything below it, never following a symlink. A missing `path` is
/// fine. Failures on single entries are collected, not fatal: the rest is still removed.
///
/// Directories owned by this user that it cannot read, search or write are made mode 0700
/// first. Nothing on another filesystem is touched (a mount point below `path` is reported).
pub fn remove_tree(path: &Path) -> RemovalReport {
    let mut report = RemovalReport::default();
    let Some(cpath) = c_path(path) else {
        report.record(path.to_path_buf(), io::Error::other(TreeError::NulInPath));
        return report;
    };
    let st = match lstat_at(libc::AT_FDCWD, &cpath) {
        Ok(st) => st,
        Err(e) if errno(&e) == libc::ENOENT => return report,
        Err(e) => {
            report.record(path.to_path_buf(), e);
            return report;
        }
    };
    if !is_dir(&st) {
        unlink_entry(libc::AT_FDCWD, &cpath, &mut report, || path.to_path_buf());
        return report;
    }
    let root = match open_dir(libc::AT_FDCWD, &cpath, true) {
        Ok(fd) => fd,
        Err(e) => {
            match errno(&e) {
                libc::ENOENT => {}
                // Replaced by a non-directory since the lstat.
                libc::ENOTDIR | libc::ELOOP => unlink_entry(libc::AT_FDCWD, &cpath, &mut report, || path.to_path_buf()),
                // Not ours to open (a stage chowned it to root, mode 000), but possibly empty
                // already (a root cleanup container emptied it): removing it needs only its parent.
                // SAFETY: a NUL-terminated path.
                _ if unsafe { libc::rmdir(cpath.as_ptr()) } == 0 => report.removed += 1,
                _ => report.record(path.to_path_buf(), e),
            }
            return report;
        }
    };
    let st = match fstat(root.as_raw_fd()) {
        Ok(st) => st,
        Err(e) => {
            report.record(path.to_path_buf(), e);
            return report;
        }
    };
    let mut walk = Walk::new(path, root, &st);
    fix_mode(walk.cur(), &st);
    let mut buf = vec![0u8; DIRENT_BUF];
    loop {
        let cur = walk.cur();
        let depth = walk.stack.len();
        let top = walk.top();
        if !top.read {
            top.read = true;
            let pending = &mut top.pending;
            let mut failed: Vec<(CString, io::Error)> = Vec::new();
            let mut omitted = 0u64;
            let mut removed = 0u64;
            let read = read_entries(cur, &mut buf, |name, kind| {
                if kind == libc::DT_DIR {
                    pending.push((name.to_owned(), 0));
                    return;
                }
                match unlinkat(cur, name, 0) {
                    Ok(()) => removed += 1,
                    Err(e) => match errno(&e) {
                        libc::ENOENT => {}
                        // DT_UNKNOWN (some filesystems), or replaced by a directory meanwhile.
                        libc::EISDIR => pending.push((name.to_owned(), 0)),
                        _ if failed.len() < MAX_FAILURES => failed.push((name.to_owned(), e)),
                        _ => omitted += 1,
                    },
                }
            });
            top.failed |= !failed.is_empty() || omitted > 0;
            let read_failed = read.is_err();
            top.failed |= read_failed;
            report.removed += removed;
            report.failures_omitted += omitted;
            for (name, e) in failed {
                report.record(walk.path(Some(&name)), e);
            }
            if let Err(e) = read {
                report.record(walk.path(None), e);
            }
            continue;
        }
        if let Some((name, rescans)) = top.pending.pop() {
            let e = match open_dir(cur, &name, true) {
                Ok(fd) => match fstat(fd.as_raw_fd()) {
                    Ok(st) if st.st_dev == walk.dev => {
                        fix_mode(fd.as_raw_fd(), &st);
                        walk.enter(name, fd, &st, rescans);
                        continue;
                    }
                    Ok(_) => io::Error::other(TreeError::OtherFilesystem),
                    Err(e) => e,
                },
                Err(e) => match errno(&e) {
                    libc::ENOENT => continue,
                    // Not a directory (any more): a symlink is unlinked, never entered.
                    libc::ENOTDIR | libc::ELOOP => {
                        unlink_entry(cur, &name, &mut report, || walk.path(Some(&name)));
                        continue;
                    }
                    // Cannot be entered (another user's mode-000 directory): fine if empty.
                    _ => match unlinkat(cur, &name, libc::AT_REMOVEDIR) {
                        Ok(()) => {
                            report.removed += 1;
                            continue;
                        }
                        Err(e2) if errno(&e2) == libc::ENOENT => continue,
                        Err(_) => e,
                    },
                },
            };
            walk.top().failed = true;
            report.record(walk.path(Some(&name)), e);
            continue;
        }
        // Every entry of the current directory is handled: remove it from its parent.
        if depth == 1 {
            let failed = top.failed;
            match rmdir_at(libc::AT_FDCWD, &cpath) {
                Ok(()) => report.removed += 1,
                Err(e) => match errno(&e) {
                    libc::ENOENT => {}
                    libc::ENOTEMPTY | libc::EEXIST if failed => {}
                    // Entries appeared meanwhile: go round again.
                    libc::ENOTEMPTY | libc::EEXIST if walk.restart() => continue,
                    libc::ENOTEMPTY | libc::EEXIST => {
                        report.record(path.to_path_buf(), io::Error::other(TreeError::KeptChanging(walk.restarts - 1)))
                    }
                    _ => report.record(path.to_path_buf(), e),
                },
            }
            break;
        }
        let Some(frame) = walk.leave() else {
            if walk.restart() {
                continue;
            }
            report.record(path.to_path_buf(), io::Error::other(TreeError::KeptChanging(walk.restarts - 1)));
            break;
        };
        let cur = walk.cur();
        let e = match rmdir_at(cur, &frame.name) {
            Ok(()) => {
                report.removed += 1;
                continue;
            }
            Err(e) => e,
        };
        let parent = walk.top();
        parent.failed |= frame.failed;
        match errno(&e) {
            libc::ENOENT => {}
            // Something below is already reported as stuck.
            libc::ENOTEMPTY | libc::EEXIST if frame.failed => {}
            // Entries appeared after it was read: read it again.
            libc::ENOTEMPTY | libc::EEXIST if frame.rescans < MAX_RESCANS => {
                parent.pending.push((frame.name, frame.rescans + 1))
            }
            _ => {
                parent.failed = true;
                report.record(walk.path(Some(&frame.name)), e);
            }
        }
    }
    report
}

/// The bytes that the entries below `path` occupy on disk (allocated blocks of files,
/// directories and symlinks, `path` included, each inode counted once, like `du -sxB1`), never
/// following a symlink, with the number of entries counted and of those that could not be read
/// (skipped).
///
/// Fails if `path` cannot be examined or opened, or if the tree kept changing under the walk
/// (each change restarts the count from zero, a bounded number of times).
pub fn measure(path: &Path) -> io::Result<Usage> {
    let cpath = c_path(path).ok_or_else(|| io::Error::other(TreeError::NulInPath))?;
    let st = lstat_at(libc::AT_FDCWD, &cpath)?;
    if !is_dir(&st) {
        return Ok(Usage { bytes: blocks(&st), entries: 1, skipped: 0 });
    }
    let root = open_dir(libc::AT_FDCWD, &cpath, false)?;
    let st = fstat(root.as_raw_fd())?;
    let mut walk = Walk::new(path, root, &st);
    let mut buf = vec![0u8; DIRENT_BUF];
    'pass: loop {
        let mut usage = Usage { bytes: blocks(&st), entries: 1, skipped: 0 };
        // Only inodes with several links can be met twice; most files never enter the set.
        let mut linked: HashSet<(u64, u64)> = HashSet::new();
        loop {
            let cur = walk.cur();
            let root_dev = walk.dev;
            let top = walk.top();
            if !top.read {
                top.read = true;
                let pending = &mut top.pending;
                let read = read_entries(cur, &mut buf, |name, _| match lstat_at(cur, name) {
                    Ok(st) if is_dir(&st) && st.st_dev != root_dev => usage.skipped += 1,
                    Ok(st) => {
                        if is_dir(&st) {
                            pending.push((name.to_owned(), 0));
                        } else if st.st_nlink > 1 && !linked.insert((st.st_dev, st.st_ino)) {
                            return;
                        }
                        usage.bytes += blocks(&st);
                        usage.entries += 1;
                    }
                    // Removed since it was listed: not there, nothing to count.
                    Err(e) if errno(&e) == libc::ENOENT => {}
                    Err(_) => usage.skipped += 1,
                });
                if read.is_err() {
                    usage.skipped += 1;
                }
                continue;
            }
            if let Some((name, _)) = top.pending.pop() {
                match open_dir(cur, &name, false) {
                    Ok(fd) => match fstat(fd.as_raw_fd()) {
                        Ok(st) if st.st_dev == root_dev => walk.enter(name, fd, &st, 0),
                        _ => usage.skipped += 1,
                    },
                    Err(e) if errno(&e) == libc::ENOENT => {}
                    Err(_) => usage.skipped += 1,
                }
                continue;
            }
            if walk.stack.len() == 1 {
                return Ok(usage);
            }
            if walk.leave().is_none() {
                if walk.restart() {
                    continue 'pass;
                }
                return Err(io::Error::other(TreeError::KeptChanging(walk.restarts - 1)));
            }
        }
    }
}

/// One directory on the way down from the root.
struct Frame {
    /// The name in the parent (empty for the root).
    name: CString,
    dev: u64,
    ino: u64,
    /// Whether the directory was read to its end (its entries handled or in `pending`).
    read: bool,
    /// Subdirectories still to visit, each with how often it was read already.
    pending: Vec<(CString, u8)>,
    rescans: u8,
    /// Something below could not be removed (and is reported): the directory cannot go either.
    failed: bool,
}

impl Frame {
    fn new(name: CString, st: &libc::stat, rescans: u8) -> Frame {
        Frame { name, dev: st.st_dev, ino: st.st_ino, read: false, pending: Vec::new(), rescans, failed: false }
    }
}

/// The position of a walk: the root, kept open, and the directory being worked on.
struct Walk<'p> {
    root_path: &'p Path,
    root: OwnedFd,
    dev: u64,
    /// The current directory; `None` while it is the root.
    cur: Option<OwnedFd>,
    /// From the root (first, never popped) to the current directory.
    stack: Vec<Frame>,
    restarts: u32,
}

impl<'p> Walk<'p> {
    fn new(root_path: &'p Path, root: OwnedFd, st: &libc::stat) -> Walk<'p> {
        Walk {
            root_path,
            root,
            dev: st.st_dev,
            cur: None,
            stack: vec![Frame::new(CString::default(), st, 0)],
            restarts: 0,
        }
    }

    fn cur(&self) -> RawFd {
        self.cur.as_ref().unwrap_or(&self.root).as_raw_fd()
    }

    fn top(&mut self) -> &mut Frame {
        self.stack.last_mut().expect("the root frame is never popped")
    }

    fn enter(&mut self, name: CString, fd: OwnedFd, st: &libc::stat, rescans: u8) {
        self.stack.push(Frame::new(name, st, rescans));
        self.cur = Some(fd);
    }

    /// Leaves the current directory (never the root) for its parent, checking the parent is
    /// the directory it came from. `None` if it is not: the caller restarts.
    fn leave(&mut self) -> Option<Frame> {
        debug_assert!(self.stack.len() > 1);
        let frame = self.stack.pop()?;
        if self.stack.len() == 1 {
            self.cur = None;
            return Some(frame);
        }
        let parent = open_dir(self.cur(), c"..", false).ok()?;
        let st = fstat(parent.as_raw_fd()).ok()?;
        let expected = self.stack.last()?;
        if (st.st_dev, st.st_ino) != (expected.dev, expected.ino) {
            return None;
        }
        self.cur = Some(parent);
        Some(frame)
    }

    /// Goes back to the root to read it again; `false` once restarts are used up.
    fn restart(&mut self) -> bool {
        self.restarts += 1;
        self.cur = None;
        self.stack.truncate(1);
        let root = &mut self.stack[0];
        root.read = false;
        root.pending = Vec::new();
        root.failed = false;
        self.restarts <= MAX_RESTARTS
    }

    /// The path of the current directory, or of `leaf` in it, for a report.
    fn path(&self, leaf: Option<&CStr>) -> PathBuf {
        let dirs = self.stack.len() - 1;
        let count = dirs + usize::from(leaf.is_some());
        capped_path(self.root_path, count, |i| match (i < dirs, leaf) {
            (true, _) | (false, None) => self.stack[i + 1].name.to_bytes(),
            (false, Some(leaf)) => leaf.to_bytes(),
        })
    }
}

/// `root` joined with `count` names (the `i`th from `name(i)`), keeping about [`PATH_END`]
/// bytes of each end: a path 100,000 levels deep would otherwise be hundreds of kilobytes.
/// Only the names kept are looked at, so the cost does not grow with the depth.
fn capped_path<'a>(root: &Path, count: usize, name: impl Fn(usize) -> &'a [u8]) -> PathBuf {
    let mut out = root.as_os_str().as_bytes().to_vec();
    let push = |out: &mut Vec<u8>, part: &[u8]| {
        if out.last() != Some(&b'/') {
            out.push(b'/');
        }
        out.extend_from_slice(part);
    };
    let mut front = 0;
    while front < count && out.len() + 1 + name(front).len() <= PATH_END {
        push(&mut out, name(front));
        front += 1;
    }
    let mut back = count;
    let mut back_len = 0;
    while back > front && back_len + 1 + name(back - 1).len() <= PATH_END {
        back_len += 1 + name(back - 1).len();
        back -= 1;
    }
    if back > front {
        push(&mut out, "…".as_bytes());
    }
    for i in back..count {
        push(&mut out, name(i));
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// `path` as a C string, without trailing slashes: "link/" would resolve the symlink "link".
fn c_path(path: &Path) -> Option<CString> {
    let mut bytes = path.as_os_str().as_bytes();
    while bytes.len() > 1 && bytes.ends_with(b"/") {
        bytes = &bytes[..bytes.len() - 1];
    }
    CString::new(bytes).ok()
}

/// Calls `each(name, d_type)` for every entry of the directory `fd` but `.` and `..`, reading
/// from the current offset to the end.
fn read_entries(fd: RawFd, buf: &mut [u8], mut each: impl FnMut(&CStr, u8)) -> io::Result<()> {
    // Offsets in a linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
    const RECLEN: usize = 16;
    const TYPE: usize = 18;
    const NAME: usize = 19;
    loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which outlives the call.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if errno(&e) == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(());
        }
        let filled = &buf[..n as usize];
        let mut at = 0;
        while at + NAME <= filled.len() {
            let reclen = usize::from(u16::from_ne_bytes([filled[at + RECLEN], filled[at + RECLEN + 1]]));
            if reclen < NAME || at + reclen > filled.len() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let kind = filled[at + TYPE];
            if let Ok(name) = CStr::from_bytes_until_nul(&filled[at + NAME..at + reclen]) {
                let bytes = name.to_bytes();
                if bytes != b"." && bytes != b".." {
                    each(name, kind);
                }
            }
            at += reclen;
        }
    }
}

/// Opens the directory `name` in `dir` without following a symlink. With `fix`, a directory of
/// this user's that it may not read or search is made mode 0700 and opened again.
fn open_dir(dir: RawFd, name: &CStr, fix: bool) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    let e = match openat(dir, name, flags) {
        Err(e) if fix && errno(&e) == libc::EACCES => e,
        other => return other,
    };
    // chmod by name would follow a symlink swapped in meanwhile, and fchmod refuses O_PATH
    // descriptors: change the very directory opened through its /proc/self/fd link instead.
    let Ok(handle) = openat(dir, name, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) else {
        return Err(e);
    };
    match fstat(handle.as_raw_fd()) {
        // SAFETY: geteuid has no preconditions.
        Ok(st) if is_dir(&st) && st.st_uid == unsafe { libc::geteuid() } => {}
        _ => return Err(e),
    }
    let Ok(link) = CString::new(format!("/proc/self/fd/{}", handle.as_raw_fd())) else {
        return Err(e);
    };
    // SAFETY: `link` is a NUL-terminated string that outlives the call.
    if unsafe { libc::chmod(link.as_ptr(), 0o700) } != 0 {
        return Err(e);
    }
    openat(handle.as_raw_fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NONBLOCK)
}

/// Makes a directory of this user's that it may not read, search or write mode 0700, so that
/// its entries can be listed and removed. Root needs no permission bits.
fn fix_mode(fd: RawFd, st: &libc::stat) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && st.st_uid == euid && st.st_mode & 0o700 != 0o700 {
        // SAFETY: fchmod only reads its arguments; a failure shows later as a reported error.
        unsafe { libc::fchmod(fd, 0o700) };
    }
}

/// Unlinks the non-directory `name` in `dir`, recording a failure under `path()`.
fn unlink_entry(dir: RawFd, name: &CStr, report: &mut RemovalReport, path: impl FnOnce() -> PathBuf) {
    match unlinkat(dir, name, 0) {
        Ok(()) => report.removed += 1,
        Err(e) if errno(&e) == libc::ENOENT => {}
        Err(e) => report.record(path(), e),
    }
}

fn openat(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unlinkat(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated and outlives the call.
    if unsafe { libc::unlinkat(dir, name.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn rmdir_at(dir: RawFd, name: &CStr) -> io::Result<()> {
    unlinkat(dir, name, libc::AT_REMOVEDIR)
}

fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of a `stat`.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

fn lstat_at(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated and `st` is valid for writes of a `stat`.
    if unsafe { libc::fstatat(dir, name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn blocks(st: &libc::stat) -> u64 {
    u64::try_from(st.st_blocks).unwrap_or(0) * 512
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    use std::time::Instant;

    /// Set in a child process (see [`run_child`]) to the name of the test it is to run.
    const CHILD: &str = "CHAINLINK_TREE_TEST_CHILD";
    const CHILD_ARG: &str = "CHAINLINK_TREE_TEST_ARG";
    const DEEP: usize = 100_000;
    const NOBODY: u32 = 65534;

    /// A temporary directory removed with `remove_tree`: std's removal recurses.
    struct Scratch(tempfile::TempDir);

    impl Scratch {
        fn new() -> Scratch {
            Scratch(tempfile::tempdir().unwrap())
        }

        fn path(&self) -> &Path {
            self.0.path()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = remove_tree(self.0.path());
        }
    }

    fn euid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    /// The argument given to this process if it is the child [`run_child`] made for `test`.
    fn child_arg(test: &str) -> Option<String> {
        (std::env::var(CHILD).ok()? == test).then(|| std::env::var(CHILD_ARG).unwrap_or_default())
    }

    /// Runs `test` again in a child process of this test binary (limits set there cannot leak
    /// into the tests running in this process's threads), with `arg`, a descriptor limit of
    /// `nofile` and the user `uid` if given; asserts that it ran and passed.
    fn run_child(test: &str, arg: &str, nofile: Option<u64>, uid: Option<u32>) {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", &format!("tree::tests::{test}"), "--nocapture", "--test-threads=1"]);
        cmd.env(CHILD, test).env(CHILD_ARG, arg);
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        if let Some(n) = nofile {
            let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
            // SAFETY: between fork and exec the closure only calls setrlimit, which is
            // async-signal-safe, and allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{stdout}{stderr}");
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child {test}: {}\n{stdout}\n{stderr}",
            out.status
        );
    }

    /// Opens /dev/null until only `free` descriptors are left below the limit.
    fn hold_fds(free: u64) -> Vec<fs::File> {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `limit` is valid for writes.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        let mut held = Vec::new();
        loop {
            let file = fs::File::open("/dev/null").unwrap();
            if file.as_raw_fd() as u64 >= limit.rlim_cur - free {
                return held;
            }
            held.push(file);
        }
    }

    /// Makes `root` with a chain of `depth` directories named "d" below it, iteratively;
    /// returns the bytes all of them occupy.
    fn build_deep(root: &Path, depth: usize) -> u64 {
        fs::create_dir(root).unwrap();
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
        let mut dir = openat(libc::AT_FDCWD, &c_path(root).unwrap(), flags).unwrap();
        let mut bytes = blocks(&fstat(dir.as_raw_fd()).unwrap());
        for _ in 0..depth {
            // SAFETY: the name is a NUL-terminated literal.
            assert_eq!(unsafe { libc::mkdirat(dir.as_raw_fd(), c"d".as_ptr(), 0o755) }, 0);
            dir = openat(dir.as_raw_fd(), c"d", flags).unwrap();
            bytes += blocks(&fstat(dir.as_raw_fd()).unwrap());
        }
        bytes
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    fn gone(path: &Path) -> bool {
        matches!(fs::symlink_metadata(path), Err(e) if e.kind() == io::ErrorKind::NotFound)
    }

    #[test]
    fn deep_tree_is_measured_and_removed_with_few_descriptors() {
        const NAME: &str = "deep_tree_is_measured_and_removed_with_few_descriptors";
        if let Some(arg) = child_arg(NAME) {
            let (bytes, dir) = arg.split_once(':').unwrap();
            let dir = Path::new(dir);
            // The walks need 4 descriptors at most: leave exactly that many.
            let held = hold_fds(4);
            let started = Instant::now();
            let usage = measure(dir).unwrap();
            println!("measure, {} levels: {:?}", DEEP, started.elapsed());
            assert_eq!(usage, Usage { bytes: bytes.parse().unwrap(), entries: DEEP as u64 + 1, skipped: 0 });
            let started = Instant::now();
            let report = remove_tree(dir);
            println!("remove_tree, {} levels: {:?}", DEEP, started.elapsed());
            assert!(report.is_complete(), "{report:?}");
            assert_eq!(report.removed, DEEP as u64 + 1);
            assert!(gone(dir));
            drop(held);
            return;
        }
        let scratch = Scratch::new();
        let root = scratch.path().join("deep");
        let bytes = build_deep(&root, DEEP);
        run_child(NAME, &format!("{bytes}:{}", root.display()), Some(256), None);
        assert!(gone(&root));
    }

    #[test]
    fn unreadable_directories_are_opened_and_foreign_entries_reported() {
        const NAME: &str = "unreadable_directories_are_opened_and_foreign_entries_reported";
        if let Some(arg) = child_arg(NAME) {
            let (locked, t) = arg.split_once(':').unwrap();
            check_unreadable(Path::new(t), locked == "1");
            return;
        }
        let scratch = Scratch::new();
        let t = scratch.path().join("t");
        let mode = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        let mut mine = vec![scratch.path().to_path_buf(), t.clone()];
        fs::create_dir_all(t.join("a/b/c")).unwrap();
        for dir in ["a", "a/b", "a/b/c", "w", "x", "x/sub"] {
            fs::create_dir_all(t.join(dir)).unwrap();
            fs::write(t.join(dir).join("f"), "data").unwrap();
            mine.extend([t.join(dir), t.join(dir).join("f")]);
        }
        fs::write(t.join("f0"), "data").unwrap();
        mine.push(t.join("f0"));
        // Another user's entries: only when this test can hand the rest to someone else.
        let root = euid() == 0;
        if root {
            fs::create_dir(t.join("locked")).unwrap();
            fs::write(t.join("locked/keep"), "root's").unwrap();
            fs::create_dir(t.join("lockedempty")).unwrap();
            mode(&t.join("lockedempty"), 0);
            for p in &mine {
                lchown(p, Some(NOBODY), Some(NOBODY)).unwrap();
            }
        }
        // Deepest first: a mode-000 directory cannot be searched for its children.
        for dir in ["a/b/c", "a/b", "a"] {
            mode(&t.join(dir), 0);
        }
        mode(&t.join("w"), 0o500);
        mode(&t.join("x"), 0o100);
        mode(&t.join("f0"), 0);
        mode(&t, 0);
        if root {
            run_child(NAME, &format!("1:{}", t.display()), None, Some(NOBODY));
            assert_eq!(names(&t), ["locked"]);
            assert_eq!(names(&t.join("locked")), ["keep"]);
            let report = remove_tree(&t);
            assert!(report.is_complete(), "{report:?}");
            assert!(gone(&t));
        } else {
            check_unreadable(&t, false);
        }
    }

    /// Runs as the owner of everything in `t` but `t/locked/keep` (if `locked`).
    fn check_unreadable(t: &Path, locked: bool) {
        let report = remove_tree(t);
        if !locked {
            assert!(report.is_complete(), "{report:?}");
            assert!(gone(t));
            return;
        }
        assert_eq!(report.failures.len(), 1, "{report:?}");
        assert_eq!(report.failures_omitted, 0);
        let (path, e) = &report.failures[0];
        assert_eq!(path, &t.join("locked/keep"));
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
        // Everything of this user's went, and the empty mode-000 directory of root's too.
        assert_eq!(report.removed, 1 + 2 * 6 + 1);
    }

    #[test]
    fn symlinks_are_removed_never_followed() {
        let outside = Scratch::new();
        let precious = outside.path().join("precious");
        fs::write(&precious, "keep me").unwrap();
        let keepdir = outside.path().join("keepdir");
        fs::create_dir_all(keepdir.join("inner")).unwrap();
        fs::write(keepdir.join("inner/file"), "keep me too").unwrap();
        let intact = || {
            assert_eq!(fs::read_to_string(&precious).unwrap(), "keep me");
            assert_eq!(fs::read_to_string(keepdir.join("inner/file")).unwrap(), "keep me too");
        };

        let scratch = Scratch::new();
        let t = scratch.path().join("t");
        fs::create_dir_all(t.join("sub/deeper")).unwrap();
        symlink(&precious, t.join("l_file")).unwrap();
        symlink(&keepdir, t.join("l_dir")).unwrap();
        symlink("/", t.join("sub/l_root")).unwrap();
        symlink("..", t.join("sub/deeper/l_up")).unwrap();
        symlink(&keepdir, t.join("sub/deeper/l_dir")).unwrap();
        symlink("missing", t.join("dangling")).unwrap();
        let report = remove_tree(&t);
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(report.removed, 6 + 3);
        assert!(gone(&t));
        intact();

        // `path` itself a symlink to a directory, with and without a trailing slash.
        for (link, arg) in [("link", "link"), ("link2", "link2/")] {
            symlink(&keepdir, scratch.path().join(link)).unwrap();
            let report = remove_tree(&scratch.path().join(arg));
            assert!(report.is_complete(), "{report:?}");
            assert_eq!(report.removed, 1);
            assert!(gone(&scratch.path().join(link)));
            intact();
        }

        let report = remove_tree(&scratch.path().join("missing"));
        assert!(report.is_complete() && report.removed == 0, "{report:?}");
        fs::write(scratch.path().join("file"), "x").unwrap();
        let report = remove_tree(&scratch.path().join("file"));
        assert!(report.is_complete() && report.removed == 1, "{report:?}");
        assert!(gone(&scratch.path().join("file")));
    }

    #[test]
    fn wide_tree_is_measured_and_removed() {
        const DIRS: usize = 2_000;
        const FILES: usize = 100;
        let scratch = Scratch::new();
        let t = scratch.path().join("t");
        let started = Instant::now();
        for d in 0..DIRS {
            let dir = t.join(format!("dir{d:04}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..FILES {
                fs::write(dir.join(format!("file{f:03}")), "x").unwrap();
            }
        }
        eprintln!("wide tree: built {} files in {DIRS} directories in {:?}", DIRS * FILES, started.elapsed());

        let started = Instant::now();
        let usage = measure(&t).unwrap();
        eprintln!("wide tree: measure took {:?}", started.elapsed());
        assert_eq!(usage.entries, (1 + DIRS + DIRS * FILES) as u64);
        assert_eq!(usage.skipped, 0);
        // du counts the same way: allocated blocks, hard links once, no symlink followed.
        if let Ok(out) = Command::new("du").args(["-s", "-x", "-B1"]).arg(&t).output() {
            let text = String::from_utf8_lossy(&out.stdout);
            let du: u64 = text.split_whitespace().next().unwrap().parse().unwrap();
            assert_eq!(usage.bytes, du);
        }

        let started = Instant::now();
        let report = remove_tree(&t);
        eprintln!("wide tree: remove_tree took {:?}", started.elapsed());
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(report.removed, usage.entries);
        assert!(gone(&t));
    }

    /// Clears the immutable flag of a file whatever the test did.
    struct Unfreeze(PathBuf);

    impl Drop for Unfreeze {
        fn drop(&mut self) {
            if !gone(&self.0) {
                let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
            }
        }
    }

    #[test]
    fn an_immutable_file_is_reported_and_the_rest_removed() {
        let scratch = Scratch::new();
        let t = scratch.path().join("t");
        fs::create_dir_all(t.join("a/b")).unwrap();
        fs::create_dir_all(t.join("a/c/d")).unwrap();
        for file in ["a/b/imm", "a/b/other", "a/c/d/file", "top"] {
            fs::write(t.join(file), "data").unwrap();
        }
        let imm = t.join("a/b/imm");
        let _unfreeze = Unfreeze(imm.clone());
        let frozen = euid() == 0 && Command::new("chattr").arg("+i").arg(&imm).status().is_ok_and(|s| s.success());
        if !frozen {
            println!("note: not root or `chattr +i` unsupported here; the immutable-file check is skipped");
        } else {
            let report = remove_tree(&t);
            assert_eq!(report.failures.len(), 1, "{report:?}");
            let (path, e) = &report.failures[0];
            assert_eq!(path, &imm);
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
            assert_eq!(names(&t), ["a"]);
            assert_eq!(names(&t.join("a")), ["b"]);
            assert_eq!(names(&t.join("a/b")), ["imm"]);
            assert!(Command::new("chattr").arg("-i").arg(&imm).status().unwrap().success());
        }
        let report = remove_tree(&t);
        assert!(report.is_complete(), "{report:?}");
        assert!(gone(&t));
    }

    #[test]
    fn disk_usage_counts_hard_links_once_and_no_symlink_target() {
        let outside = Scratch::new();
        fs::write(outside.path().join("huge"), vec![7u8; 4 << 20]).unwrap();
        let scratch = Scratch::new();
        let t = scratch.path().join("t");
        fs::create_dir_all(t.join("sub")).unwrap();
        let big = t.join("big");
        let file = fs::File::create(&big).unwrap();
        io::Write::write_all(&mut &file, &vec![1u8; 10 << 20]).unwrap();
        // Allocated now, so that the blocks counted below stay what they are.
        file.sync_all().unwrap();
        fs::hard_link(&big, t.join("h1")).unwrap();
        fs::hard_link(&big, t.join("sub/h2")).unwrap();
        symlink(outside.path().join("huge"), t.join("l_file")).unwrap();
        symlink(outside.path(), t.join("l_dir")).unwrap();

        let expected: u64 = ["", "big", "sub", "l_file", "l_dir"]
            .iter()
            .map(|p| fs::symlink_metadata(t.join(p)).unwrap().blocks() * 512)
            .sum();
        assert!((10 << 20..11 << 20).contains(&expected), "{expected}");
        assert_eq!(measure(&t).unwrap().bytes, expected);
        assert_eq!(measure(&t).unwrap(), Usage { bytes: expected, entries: 5, skipped: 0 });
        // A symlink given as the path is measured as itself.
        let link = fs::symlink_metadata(t.join("l_dir")).unwrap().blocks() * 512;
        assert_eq!(measure(&t.join("l_dir")).unwrap().bytes, link);
        assert_eq!(measure(&t.join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn going_up_into_a_directory_other_than_the_one_come_from_restarts() {
        let scratch = Scratch::new();
        let t = scratch.path().join("t");
        fs::create_dir_all(t.join("a/b/c")).unwrap();
        let root = open_dir(libc::AT_FDCWD, &c_path(&t).unwrap(), false).unwrap();
        let st = fstat(root.as_raw_fd()).unwrap();
        let mut walk = Walk::new(&t, root, &st);
        for name in [c"a", c"b", c"c"] {
            let fd = open_dir(walk.cur(), name, false).unwrap();
            let st = fstat(fd.as_raw_fd()).unwrap();
            walk.enter(name.to_owned(), fd, &st, 0);
        }
        assert_eq!(walk.path(Some(c"x")), t.join("a/b/c/x"));
        assert_eq!(walk.leave().unwrap().name.as_c_str(), c"c");
        // A stage moves the directory being walked: its ".." is no longer "a".
        fs::rename(t.join("a/b"), t.join("b2")).unwrap();
        assert!(walk.leave().is_none());
        assert!(walk.restart());
        assert_eq!(walk.stack.len(), 1);
        assert_eq!(walk.cur(), walk.root.as_raw_fd());
        for _ in 1..MAX_RESTARTS {
            assert!(walk.restart());
        }
        assert!(!walk.restart(), "restarts are bounded");
        let report = remove_tree(&t);
        assert!(report.is_complete() && report.removed == 4, "{report:?}");
    }

    #[test]
    fn reported_paths_keep_both_ends_of_a_deep_path() {
        let short = capped_path(Path::new("/job"), 2, |i| [b"a".as_slice(), b"b"][i]);
        assert_eq!(short, Path::new("/job/a/b"));
        let deep = capped_path(Path::new("/job"), DEEP + 1, |i| if i == DEEP { b"leaf" } else { b"d" });
        let text = deep.to_str().unwrap();
        assert!(text.len() <= 2 * PATH_END + 8, "{}", text.len());
        assert!(text.starts_with("/job/d/d/"), "{text}");
        assert!(text.contains("/d/…/d/"), "{text}");
        assert!(text.ends_with("/d/d/leaf"), "{text}");
    }
}
