//! A run on a shared host, attacked as issue 10 found it attacked: runners and sweeps in other
//! PID and UTS namespaces sharing the engine and the workdir, runners that never come back,
//! other host users reaching into `/job`, and `/job` trees made to crash the cleanup. Each test
//! drives the real `chainlink` binary against the real engine, and needs root (for `unshare`,
//! `runuser` and `chattr`), as CI runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

const IMAGE: &str = "chainlink-test/busybox";
const PATIENCE: Duration = Duration::from_secs(120);

/// Sweeps are engine-wide: one test's sweep would remove another test's dead runner's
/// container before that test's own sweep could report it. One test at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn chainlink_bin() -> &'static str {
    env!("CARGO_BIN_EXE_chainlink")
}

/// A test's own directory, with its workdir `work/`.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::Builder::new().prefix("chainlink-safety-").tempdir().unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        Case { dir }
    }

    fn workdir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn chain(&self, name: &str, scripts: &[&str]) -> PathBuf {
        let stages: Vec<Value> = scripts
            .iter()
            .map(|script| serde_json::json!({"image": IMAGE, "entrypoint": ["sh", "-c", script], "timeout": 60}))
            .collect();
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_string(&stages).unwrap()).unwrap();
        path
    }

    /// `chainlink run FILE --workdir WORK --pull never --json`, as a shell command.
    fn run_command(&self, file: &Path) -> String {
        format!("exec {} run {} --workdir {} --pull never --json", chainlink_bin(), file.display(), self.workdir().display())
    }

    fn gc_command(&self) -> String {
        format!("exec {} gc --workdir {}", chainlink_bin(), self.workdir().display())
    }

    /// This user's private directory in the workdir, where its run directories are.
    fn private_dir(&self) -> PathBuf {
        // SAFETY: geteuid has no preconditions.
        self.workdir().join(format!("chainlink-{}", unsafe { libc::geteuid() }))
    }

    fn run_dirs(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.private_dir()) else { return Vec::new() };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("chainlink-run-"))
            .collect();
        dirs.sort();
        dirs
    }

    /// Containers whose run directory is in this test's workdir: (id, state).
    fn containers(&self) -> Vec<(String, String)> {
        let out = docker(&["ps", "-a", "--no-trunc", "--filter", "label=org.chainlink.managed", "--format", "{{.ID}} {{.State}} {{.Label \"org.chainlink.run-dir\"}}"]);
        let prefix = format!("{}/", self.workdir().display());
        out.lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ' ');
                let (id, state, dir) = (parts.next()?, parts.next()?, parts.next()?);
                dir.starts_with(&prefix).then(|| (id.to_string(), state.to_string()))
            })
            .collect()
    }

    /// Nothing in the workdir but the user's private directory (which stays between runs),
    /// nothing in that, and no container.
    fn assert_nothing_left(&self) {
        let private = self.private_dir();
        let mut entries: Vec<_> =
            std::fs::read_dir(self.workdir()).unwrap().flatten().map(|e| e.path()).filter(|p| *p != private).collect();
        if let Ok(inside) = std::fs::read_dir(&private) {
            entries.extend(inside.flatten().map(|e| e.path()));
        }
        assert!(entries.is_empty(), "left in the workdir: {entries:?}");
        assert!(self.containers().is_empty(), "containers left: {:?}", self.containers());
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sh -c script`, optionally in new PID and mount namespaces (`--pid`), and then a UTS
/// namespace too with another hostname unless the name given is `"same"`.
fn shell(script: &str, namespaced_as: Option<&str>) -> Command {
    match namespaced_as {
        None => {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script]);
            cmd
        }
        Some("same") => {
            let mut cmd = Command::new("unshare");
            cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", script]);
            cmd
        }
        Some(hostname) => {
            let mut cmd = Command::new("unshare");
            cmd.args(["--uts", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", &format!("hostname {hostname} && {script}")]);
            cmd
        }
    }
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn")
}

fn finish(child: Child) -> Output {
    let pid = child.id();
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match waited.recv_timeout(PATIENCE) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("process {pid} did not finish within {PATIENCE:?}");
        }
    }
}

fn show(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stdout_of_stage(output: &Output, index: usize) -> String {
    let results: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("no JSON ({e}):\n{}", show(output)));
    let text = results[index]["logs"]["stdout"].as_str().unwrap_or_default().to_string();
    text.lines().map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest)).collect::<Vec<_>>().join("\n")
}

/// The first finding: a sweep in another PID namespace with another hostname (a gc cron
/// job in a container, a runner pod) removed a live run's `/job`, and one with the same
/// hostname (runner containers with `--network host`) removed its containers. Here the live run
/// and the sweeps are in different namespaces both ways round, with the same hostname and with
/// another, and a `chainlink run` start-up sweep joins in.
#[test]
fn sweeps_from_other_pid_namespaces_and_hostnames_leave_a_live_run_alone() {
    let _serial = serial();
    let case = Case::new();
    let slow = case.chain("slow", &["echo 41 > /job/n; sleep 5", "echo $(( $(cat /job/n) + 1 ))"]);
    let quick = case.chain("quick", &["true"]);
    for (runner_host, sweeper_host) in
        [(Some("chainlink-runner-ns"), None), (None, Some("chainlink-gc-ns")), (None, Some("same")), (Some("same"), None)]
    {
        let live = spawn(shell(&case.run_command(&slow), runner_host));
        wait_until("the live run's first container to run", || case.containers().iter().any(|(_, s)| s == "running"));
        let before = case.run_dirs();
        assert_eq!(before.len(), 1, "{before:?}");

        for sweep in [case.gc_command(), case.run_command(&quick)] {
            let swept = finish(spawn(shell(&sweep, sweeper_host)));
            assert!(swept.status.success(), "{}", show(&swept));
            let said = format!("{}{}", String::from_utf8_lossy(&swept.stdout), String::from_utf8_lossy(&swept.stderr));
            assert!(!said.contains("removed"), "{}", show(&swept));
        }
        assert!(case.run_dirs().contains(&before[0]), "the live run's directory was removed");

        let ran = finish(live);
        assert!(ran.status.success(), "the live run failed:\n{}", show(&ran));
        assert_eq!(stdout_of_stage(&ran, 1), "42");
        case.assert_nothing_left();
    }
}

/// A runner that was SIGKILLed mid-stage holds no lock any more: the next sweep, from any
/// namespace, removes its running container and its directory at once, long before the
/// container's deadline.
#[test]
fn a_killed_runners_container_and_directory_go_at_the_next_sweep_from_anywhere() {
    let _serial = serial();
    let case = Case::new();
    let slow = case.chain("slow", &["sleep 60"]);
    let mut victim = spawn(shell(&case.run_command(&slow), Some("chainlink-doomed")));
    wait_until("the stage to run", || case.containers().iter().any(|(_, s)| s == "running"));
    victim.kill().unwrap();
    let _ = victim.wait();
    // unshare --kill-child SIGKILLs its child, the namespace's init: every process in it dies.
    wait_until("the runner to die", || {
        let dirs = case.run_dirs();
        dirs.len() == 1 && std::fs::File::open(dirs[0].join("lock")).is_ok_and(|f| {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor we own; released when `f` is dropped.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
        })
    });
    assert_eq!(case.containers().len(), 1, "the stage's container runs on without its runner");

    let swept = finish(spawn(shell(&case.gc_command(), Some("chainlink-gc-elsewhere"))));
    assert!(swept.status.success(), "{}", show(&swept));
    let said = String::from_utf8_lossy(&swept.stdout);
    assert!(said.contains("removed container") && said.contains("removed directory"), "{}", show(&swept));
    case.assert_nothing_left();
}

fn labelled_container(case: &Case, name: &str, deadline: u64) -> String {
    let run = format!("1-{name}");
    // The run directory named is on a machine that will never come back: not on this one.
    let gone_dir = format!("/nonexistent-host-path/chainlink-run-{run}");
    let out = Command::new("docker")
        .args([
            "run", "-d", "--network", "none",
            "--label", "org.chainlink.managed=true",
            "--label", &format!("org.chainlink.run={run}"),
            "--label", "org.chainlink.owner=a-replaced-runner-pod/7/0",
            "--label", &format!("org.chainlink.run-dir={gone_dir}"),
            "--label", &format!("org.chainlink.deadline={deadline}"),
            "--label", &format!("org.chainlink.safety-test={}", case.workdir().display()),
            IMAGE, "sleep", "600",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Containers of an owner on a host that will never come back: the sweep cannot see their
/// run's lock, so their deadline decides. Past it they are killed and removed; before it they
/// are left alone.
#[test]
fn containers_of_runners_that_never_come_back_go_once_their_deadline_passed() {
    let _serial = serial();
    let case = Case::new();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let overdue = labelled_container(&case, "0000000000000001", now - 1);
    let pending = labelled_container(&case, "0000000000000002", now + 3600);

    let swept = finish(spawn(shell(&case.gc_command(), None)));
    assert!(swept.status.success(), "{}", show(&swept));
    let said = String::from_utf8_lossy(&swept.stdout).into_owned();
    let alive = |id: &str| !docker(&["ps", "-aq", "--no-trunc", "--filter", &format!("id={id}")]).trim().is_empty();
    assert!(said.contains(&overdue), "{}", show(&swept));
    assert!(!alive(&overdue), "the overdue container is still there");
    assert!(alive(&pending), "a container before its deadline was removed:\n{}", show(&swept));
    docker(&["rm", "-f", &pending]);
}

/// The other host users: during a run nobody but the runner's user can list, read, write or
/// execute anything in its `/job` from the host, so a setuid binary and a device node that a
/// root stage planted are of no use to them, and a result file cannot be rewritten between
/// two stages.
#[test]
fn other_host_users_cannot_reach_into_a_runs_job_directory() {
    let _serial = serial();
    let case = Case::new();
    let chain = case.chain(
        "planted",
        &[
            "cp /bin/busybox /job/sh && chmod 4755 /job/sh && mknod /job/disk b 8 0 && chmod 666 /job/disk \
             && echo score=0 > /job/result && chmod 666 /job/result && touch /job/ready && sleep 4",
            "cat /job/result",
        ],
    );
    // The workdir itself is open to everyone, as /tmp is.
    std::fs::set_permissions(case.workdir(), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(case.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let live = spawn(shell(&case.run_command(&chain), None));
    wait_until("the stage to plant its files", || case.run_dirs().first().is_some_and(|d| d.join("job/ready").exists()));
    let job = case.run_dirs()[0].join("job");
    let as_nobody = |script: &str| {
        Command::new("runuser").args(["-u", "nobody", "--", "sh", "-c", script]).output().expect("runuser")
    };
    for attempt in [
        format!("ls {}", job.display()),
        format!("cat {}/result", job.display()),
        format!("echo score=100 > {}/result", job.display()),
        format!("{}/sh -c id", job.display()),
        format!("head -c 1 {}/disk", job.display()),
    ] {
        let out = as_nobody(&attempt);
        assert!(!out.status.success(), "nobody could `{attempt}`: {}", String::from_utf8_lossy(&out.stdout));
    }
    let ran = finish(live);
    assert!(ran.status.success(), "{}", show(&ran));
    assert_eq!(stdout_of_stage(&ran, 1), "score=0");
    case.assert_nothing_left();
}

/// A stage script that makes a tree `1,025 × times` directories deep in `dir`, then prints
/// `made`: a fresh chain of 1,024 directories (a 2,047-byte path, under PATH_MAX) made with one
/// `mkdir -p`, the tree so far moved to its bottom, over and over; no path is longer than
/// PATH_MAX and it takes a few process starts per 1,024 levels.
fn deep_tree(dir: &str, times: u32) -> String {
    format!(
        "s=a; for i in 1 2 3 4 5 6 7 8 9 10; do s=\"$s/$s\"; done; cd {dir}; mkdir acc; \
         for i in $(seq {times}); do mkdir -p \"fresh/$s\" && mv acc \"fresh/$s/acc\" && mv fresh acc || exit 1; done; \
         echo made"
    )
}

/// A `/job` tree 100,000 directories deep (a few seconds of busybox) used to overflow the
/// stack in cleanup; under a low descriptor limit a much shallower one ran out of descriptors.
/// The runner removes it whole with 256 descriptors and prints its results.
#[test]
fn a_100000_deep_job_tree_is_removed_under_a_256_descriptor_limit() {
    let _serial = serial();
    let case = Case::new();
    let deep = case.chain("deep", &[&deep_tree("/job", 98)]);
    let ran = finish(spawn(shell(&format!("ulimit -n 256 && {}", case.run_command(&deep)), None)));
    assert!(ran.status.success(), "{}", show(&ran));
    assert_eq!(stdout_of_stage(&ran, 0), "made");
    case.assert_nothing_left();
}

/// One entry that cannot be removed (an immutable file) is reported with its path; the run's
/// results are still printed; the sweep reports it again, goes on to remove another dead run,
/// and removes it once it can be removed.
#[test]
fn an_unremovable_file_is_reported_and_stops_nothing_else() {
    let _serial = serial();
    let case = Case::new();
    let chain = case.chain("immutable", &["echo kept > /job/keep && touch /job/ready && sleep 2 && echo done"]);
    let live = spawn(shell(&case.run_command(&chain), None));
    wait_until("the stage's file", || case.run_dirs().first().is_some_and(|d| d.join("job/ready").exists()));
    let run_dir = case.run_dirs()[0].clone();
    let keep = run_dir.join("job/keep");
    let chattr = |flag: &str| {
        let out = Command::new("chattr").args([flag, keep.to_str().unwrap()]).output().expect("chattr");
        assert!(out.status.success(), "chattr {flag}: {}", String::from_utf8_lossy(&out.stderr));
    };
    chattr("+i");
    let ran = finish(live);
    assert_eq!(ran.status.code(), Some(3), "{}", show(&ran));
    assert_eq!(stdout_of_stage(&ran, 0), "done", "the results are still printed");
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(stderr.contains(&keep.display().to_string()), "the path is not named:\n{stderr}");
    assert!(case.containers().is_empty());

    // Another dead run beside it: a SIGKILLed runner's.
    let slow = case.chain("slow", &["sleep 60"]);
    let mut victim = spawn(shell(&case.run_command(&slow), None));
    wait_until("the second run's stage", || case.containers().iter().any(|(_, s)| s == "running"));
    victim.kill().unwrap();
    let _ = victim.wait();
    let swept = finish(spawn(shell(&case.gc_command(), None)));
    assert_eq!(swept.status.code(), Some(3), "{}", show(&swept));
    let said = String::from_utf8_lossy(&swept.stdout);
    assert!(said.contains("removed container") && said.contains("removed directory"), "{}", show(&swept));
    assert!(String::from_utf8_lossy(&swept.stderr).contains(&keep.display().to_string()), "{}", show(&swept));
    assert_eq!(case.run_dirs(), [run_dir.clone()]);

    chattr("-i");
    let swept = finish(spawn(shell(&case.gc_command(), None)));
    assert!(swept.status.success(), "{}", show(&swept));
    case.assert_nothing_left();
}

/// A stage that buries a tree 30,000 directories deep in its own root filesystem defeats the
/// engine's removal of its container on fuse-overlayfs ("failed to remove root filesystem: ...
/// too many open files"), which then stays "Removal In Progress" for good. The runner empties
/// the layer itself and removes the container.
#[test]
fn a_deep_tree_in_a_stages_root_filesystem_does_not_leave_its_container() {
    let _serial = serial();
    let case = Case::new();
    let deep = case.chain("deep-rootfs", &[&deep_tree("/tmp", 30)]);
    let ran = finish(spawn(shell(&case.run_command(&deep), None)));
    assert!(ran.status.success(), "{}", show(&ran));
    assert_eq!(stdout_of_stage(&ran, 0), "made");
    case.assert_nothing_left();
}

/// Another host user who gets to the workdir first and makes this user's private directory
/// (or a link in its place) gets nothing: the run refuses it, naming it, and makes nothing in
/// it; a sweep does not look into it.
#[test]
fn a_private_directory_made_by_someone_else_is_refused() {
    let _serial = serial();
    let case = Case::new();
    std::fs::set_permissions(case.workdir(), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(case.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let squatted = case.private_dir();
    let as_nobody = |script: &str| {
        let out = Command::new("runuser").args(["-u", "nobody", "--", "sh", "-c", script]).output().expect("runuser");
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let quick = case.chain("quick", &["true"]);
    for plant in [
        format!("mkdir -m 0777 {0} && mkdir {0}/chainlink-run-1-00000000000000aa", squatted.display()),
        format!("ln -s /etc {}", squatted.display()),
    ] {
        as_nobody(&plant);
        let ran = finish(spawn(shell(&case.run_command(&quick), None)));
        assert_eq!(ran.status.code(), Some(3), "{}", show(&ran));
        let stderr = String::from_utf8_lossy(&ran.stderr);
        assert!(stderr.contains(&format!("{} is not this user's private directory", squatted.display())), "{stderr}");
        let swept = finish(spawn(shell(&case.gc_command(), None)));
        assert_eq!(swept.status.code(), Some(3), "{}", show(&swept));
        assert!(String::from_utf8_lossy(&swept.stderr).contains("is not this user's private directory"), "{}", show(&swept));
        as_nobody(&format!("rm -rf {}", squatted.display()));
    }
    assert!(std::fs::metadata("/etc/hostname").is_ok());
    case.assert_nothing_left();
}
