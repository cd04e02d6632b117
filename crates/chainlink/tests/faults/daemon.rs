//! A second Docker daemon of the test's own, which the test may kill without harming anyone.
//!
//! It runs on its own socket, data-root, exec-root, pidfile and configuration file, all under a
//! temporary directory, with no bridge, no iptables and no masquerading, so it shares nothing
//! with the host's daemon but the kernel. Dropping it kills every process it started (dockerd,
//! its containerd, the shims and their containers), unmounts what it mounted, removes the cgroups
//! of its containers and the directory itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the daemon may take to answer on its socket after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

pub struct SecondDaemon {
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    pub driver: &'static str,
}

/// Where containerd's shims bind their sockets, whatever containerd's own paths; a SIGKILLed
/// shim leaves its socket there.
const SHIM_SOCKETS: &str = "/run/containerd/s/";

impl SecondDaemon {
    /// Starts dockerd with storage driver `vfs`, or `fuse-overlayfs` if `vfs` does not come up.
    /// The error says what each attempt printed.
    pub fn start() -> Result<SecondDaemon, String> {
        let mut failures = Vec::new();
        for driver in ["vfs", "fuse-overlayfs"] {
            match Self::start_with(driver) {
                Ok(daemon) => return Ok(daemon),
                Err(e) => failures.push(format!("with storage driver {driver}: {e}")),
            }
        }
        Err(failures.join("\n\n"))
    }

    fn start_with(driver: &'static str) -> Result<SecondDaemon, String> {
        // Short: the socket paths under it must fit in sun_path (108 bytes).
        let dir = tempfile::Builder::new().prefix("chainlink-faults-dockerd-").tempdir_in("/tmp").map_err(|e| e.to_string())?;
        let root = dir.path();
        for sub in ["data", "exec"] {
            std::fs::create_dir(root.join(sub)).map_err(|e| e.to_string())?;
        }
        // The host's /etc/docker/daemon.json sets data-root (and more); a file of our own keeps
        // this daemon from reading it.
        std::fs::write(root.join("daemon.json"), "{}\n").map_err(|e| e.to_string())?;
        let log = File::create(root.join("dockerd.log")).map_err(|e| e.to_string())?;
        let dockerd = ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or("no dockerd binary in /usr/sbin or /usr/bin")?;
        let socket = root.join("docker.sock");
        // A network namespace of its own: a dockerd started with `--bridge none` deletes any
        // `docker0` it can see, and the host's engine needs its own.
        let child = Command::new("unshare")
            .args(["--net", "--"])
            .arg(dockerd)
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("docker.pid"))
            .arg("--config-file")
            .arg(root.join("daemon.json"))
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false", "--storage-driver", driver])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            // Its own process group: a signal meant for the test runner's group does not reach
            // it, and killing the group reaches dockerd (containerd and the shims make groups of
            // their own, so `kill` walks the process tree as well).
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {dockerd}: {e}"))?;
        let mut daemon = SecondDaemon { dir: Some(dir), child: Some(child), driver };
        let started = Instant::now();
        loop {
            if let Some(status) = daemon.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("dockerd exited ({status}) before answering; its log ends:\n{}", daemon.log_tail(30)));
            }
            if socket.exists() && daemon.docker(&["version", "--format", "{{.Server.Version}}"]).status.success() {
                return Ok(daemon);
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "dockerd did not answer on {} within {} s; its log ends:\n{}",
                    socket.display(),
                    READY_TIMEOUT.as_secs(),
                    daemon.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the daemon's directory").path()
    }

    /// `unix:///tmp/.../docker.sock`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir().join("docker.sock").display())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The docker CLI against this daemon.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker").arg("-H").arg(self.host()).args(args).output().expect("docker CLI")
    }

    /// Copies `image` from the host's daemon: `docker save IMAGE | docker -H SOCK load`.
    pub fn load_image(&self, image: &str) -> Result<(), String> {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("docker save: {e}"))?;
        let load = Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .arg("load")
            .stdin(save.stdout.take().expect("piped"))
            .output()
            .map_err(|e| format!("docker load: {e}"))?;
        let saved = save.wait().map_err(|e| e.to_string())?;
        if !saved.success() || !load.status.success() {
            return Err(format!(
                "docker save {image} | docker -H {} load failed ({saved}, {}): {}",
                self.host(),
                load.status,
                String::from_utf8_lossy(&load.stderr)
            ));
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir().join("dockerd.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGKILLs the daemon and everything it started: dockerd's process group, then every
    /// process whose command line names the daemon's directory (containerd, the shims) and all
    /// their descendants (the containers' processes), until none is left; removes the sockets
    /// the shims bound. Returns what it killed: `pid command` of each.
    pub fn kill(&mut self) -> Vec<String> {
        let killed = self.kill_pids();
        killed.into_iter().map(|(pid, name)| format!("{pid} {name}")).collect()
    }

    fn kill_pids(&mut self) -> BTreeMap<i32, String> {
        let mut killed = BTreeMap::new();
        let Some(mut child) = self.child.take() else { return killed };
        let root = self.dir().display().to_string();
        let dockerd = child.id() as i32;
        // SAFETY: plain syscalls on pids and a process group id.
        unsafe {
            libc::killpg(dockerd, libc::SIGKILL);
            libc::kill(dockerd, libc::SIGKILL);
        }
        killed.insert(dockerd, "dockerd".to_string());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut targets = processes_naming(&root);
            targets.extend(descendants(&targets.iter().copied().chain([dockerd]).collect()));
            targets.retain(|pid| process_live(*pid));
            if targets.is_empty() || Instant::now() > deadline {
                break;
            }
            let sockets = shim_sockets_of(&targets);
            for pid in &targets {
                let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                // SAFETY: as above.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
                killed.insert(*pid, name.trim().to_string());
            }
            for socket in sockets {
                let _ = std::fs::remove_file(socket);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.wait();
        killed
    }

    /// Live processes whose command line names the daemon's directory.
    pub fn processes_left(&self) -> BTreeSet<i32> {
        let mut left = processes_naming(&self.dir().display().to_string());
        left.retain(|pid| process_live(*pid));
        left
    }

    /// Mount points under the daemon's directory, deepest first.
    pub fn mounts(&self) -> Vec<String> {
        mounts_under(self.dir())
    }
}

impl Drop for SecondDaemon {
    fn drop(&mut self) {
        self.kill();
        let Some(dir) = self.dir.take() else { return };
        let root = dir.path().to_path_buf();
        // The daemon bind-mounts its data-root on itself, a network namespace file per
        // container, and shm mounts; none of them is undone by a SIGKILL.
        for point in mounts_under(&root) {
            if let Ok(c_point) = std::ffi::CString::new(point.clone()) {
                // SAFETY: a valid NUL-terminated path.
                unsafe { libc::umount2(c_point.as_ptr(), libc::MNT_DETACH) };
            }
        }
        // Its containers' cgroups outlive them (empty) after a SIGKILL of the daemon.
        if let Ok(entries) = std::fs::read_dir(root.join("data/containers")) {
            for id in entries.flatten().map(|e| e.file_name()) {
                for cgroup in container_cgroups(&id.to_string_lossy()) {
                    let _ = std::fs::remove_dir(cgroup);
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&root) {
            eprintln!("second daemon: could not remove {}: {e}", root.display());
        }
        drop(dir);
    }
}

/// The paths under [`SHIM_SOCKETS`] of the unix sockets `pids` hold: their fds' socket inodes,
/// looked up in /proc/net/unix.
fn shim_sockets_of(pids: &BTreeSet<i32>) -> Vec<PathBuf> {
    let mut inodes = BTreeSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
    }
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (inode, path) = (fields.get(6)?, fields.get(7)?);
            (inodes.contains(*inode) && path.starts_with(SHIM_SOCKETS)).then(|| PathBuf::from(path))
        })
        .collect()
}

fn mounts_under(root: &Path) -> Vec<String> {
    let prefix = root.display().to_string();
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(unescape_mount_path)
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    points
}

/// `/proc/mounts` writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(field: &str) -> String {
    field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

fn container_cgroups(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
        for controller in controllers.flatten() {
            let path = controller.path().join("docker").join(id);
            if path.is_dir() {
                found.push(path);
            }
        }
    }
    let unified = Path::new("/sys/fs/cgroup/docker").join(id);
    if unified.is_dir() {
        found.push(unified);
    }
    found
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Processes whose command line holds `text`.
fn processes_naming(text: &str) -> BTreeSet<i32> {
    pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmd| String::from_utf8_lossy(&cmd).replace('\0', " ").contains(text))
                .unwrap_or(false)
        })
        .collect()
}

/// `(ppid, state)` from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(i32, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = text[text.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((ppid, state))
}

fn process_live(pid: i32) -> bool {
    matches!(stat(pid), Some((_, state)) if state != 'Z' && state != 'X')
}

/// Every descendant of `roots`.
fn descendants(roots: &BTreeSet<i32>) -> BTreeSet<i32> {
    let parents: Vec<(i32, i32)> = pids().into_iter().filter_map(|pid| Some((pid, stat(pid)?.0))).collect();
    let mut found: BTreeSet<i32> = BTreeSet::new();
    let mut frontier: BTreeSet<i32> = roots.clone();
    while !frontier.is_empty() {
        let next: BTreeSet<i32> = parents
            .iter()
            .filter(|(pid, ppid)| frontier.contains(ppid) && !found.contains(pid) && !roots.contains(pid))
            .map(|(pid, _)| *pid)
            .collect();
        found.extend(&next);
        frontier = next;
    }
    found
}
