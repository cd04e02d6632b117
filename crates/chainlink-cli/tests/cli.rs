//! The `chainlink` binary against the real Docker engine and the local test images
//! (`bash scripts/build-test-images.sh`). Each test has its own temporary directory and workdir,
//! and checks only its own run's leftovers: the run directory under its workdir, and containers
//! whose `org.chainlink.run` label starts with the CLI process's pid (a run id is
//! `<pid>-<random hex>`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

const IMAGE: &str = "chainlink-test/busybox";
const UNREACHABLE: &str = "unix:///nonexistent.sock";
/// Longest any one CLI invocation may take before the test gives up on it.
const PATIENCE: Duration = Duration::from_secs(90);

/// A test's own directory: chain files, a workdir, a logs dir.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::Builder::new().prefix("chainlink-cli-test").tempdir().unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        Case { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn workdir(&self) -> PathBuf {
        self.path("work")
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `chainlink run FILE --workdir WORK --pull never ARGS...`
    fn run(&self, file: &Path, args: &[&str]) -> Ran {
        let mut all = vec!["run".to_string(), file.display().to_string()];
        all.extend(["--workdir".to_string(), self.workdir().display().to_string()]);
        all.extend(["--pull".to_string(), "never".to_string()]);
        all.extend(args.iter().map(|a| a.to_string()));
        chainlink(&all, &[])
    }

    /// What the test's workdir still holds: anything but the user's private directory (which
    /// stays between runs), and what that holds.
    fn workdir_entries(&self) -> Vec<String> {
        let private = private_dir(&self.workdir());
        let mut found: Vec<String> = entries(&self.workdir()).into_iter().filter(|e| self.workdir().join(e) != private).collect();
        if private.exists() {
            found.extend(entries(&private));
        }
        found
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// What one CLI invocation did.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    pid: u32,
}

impl Ran {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn json(&self) -> Vec<Value> {
        match serde_json::from_str(&self.stdout) {
            Ok(Value::Array(items)) => items,
            other => panic!("stdout is not a JSON array ({other:?}):\n{}\nstderr:\n{}", self.stdout, self.stderr),
        }
    }

    fn show(&self) -> String {
        format!("status {:?}\n--- stdout\n{}\n--- stderr\n{}", self.status, self.stdout, self.stderr)
    }
}

fn command(args: &[String], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chainlink"));
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd
}

fn chainlink(args: &[String], env: &[(&str, &str)]) -> Ran {
    let child = command(args, env).spawn().unwrap();
    let pid = child.id();
    let output = wait_output(child);
    Ran {
        status: output.status,
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
        pid,
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// `wait_with_output` with a deadline, so that a hung CLI fails the test instead of hanging it.
fn wait_output(child: Child) -> std::process::Output {
    let pid = child.id();
    let (done, waited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match waited.recv_timeout(PATIENCE) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            signal(pid, libc::SIGKILL);
            panic!("chainlink (pid {pid}) did not finish within {PATIENCE:?}");
        }
    }
}

fn signal(pid: u32, number: i32) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    let rc = unsafe { libc::kill(pid as libc::pid_t, number) };
    assert_eq!(rc, 0, "kill({pid}, {number}) failed");
}

/// A CLI run whose standard error is read line by line while it goes.
struct Watched {
    child: Option<Child>,
    lines: Receiver<String>,
    seen: Vec<String>,
    reader: Option<JoinHandle<()>>,
}

impl Watched {
    fn start(args: &[String]) -> Watched {
        let mut child = command(args, &[]).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Watched { child: Some(child), lines, seen: Vec::new(), reader: Some(reader) }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for a line of standard error holding `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => {
                    signal(self.pid(), libc::SIGKILL);
                    panic!("no line with {needle:?} on stderr; got:\n{}", self.seen.join("\n"));
                }
            }
        }
    }

    /// Waits for the process to end; its exit status and all of its standard error.
    fn finish(self) -> (ExitStatus, String) {
        let (status, _, stderr) = self.finish_with_stdout();
        (status, stderr)
    }

    /// Waits for the process to end; its exit status, standard output and standard error.
    fn finish_with_stdout(mut self) -> (ExitStatus, String, String) {
        let child = self.child.take().unwrap();
        let output = wait_output(child);
        self.reader.take().unwrap().join().unwrap();
        self.seen.extend(self.lines.try_iter());
        (output.status, String::from_utf8(output.stdout).unwrap(), self.seen.join("\n"))
    }
}

/// Names of containers, running or not, of runs of the CLI process `pid`.
fn containers_of_process(pid: u32) -> Vec<String> {
    docker_containers("label=org.chainlink.managed")
        .into_iter()
        .filter(|(_, run)| run.starts_with(&format!("{pid}-")))
        .map(|(name, _)| name)
        .collect()
}

/// Names of containers of the run `run`.
fn containers_of_run(run: &str) -> Vec<String> {
    docker_containers(&format!("label=org.chainlink.run={run}")).into_iter().map(|(name, _)| name).collect()
}

/// (name, run label) of the containers matching a `docker ps` filter.
fn docker_containers(filter: &str) -> Vec<(String, String)> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--filter", filter, "--format", "{{.Names}} {{.Label \"org.chainlink.run\"}}"])
        .output()
        .expect("docker CLI");
    assert!(out.status.success(), "docker ps failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(n, r)| (n.to_string(), r.to_string())))
        .collect()
}

/// Checks that a finished CLI process left no container and no run directory behind.
fn assert_nothing_left(case: &Case, ran: &Ran) {
    assert_eq!(case.workdir_entries(), Vec::<String>::new(), "run directories left in the workdir\n{}", ran.show());
    assert_eq!(containers_of_process(ran.pid), Vec::<String>::new(), "containers left\n{}", ran.show());
}

/// This user's private directory in `workdir`, where run directories are.
fn private_dir(workdir: &Path) -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    workdir.join(format!("chainlink-{}", unsafe { libc::geteuid() }))
}

/// The run id of the one run directory under `workdir`.
fn run_id_in(workdir: &Path) -> String {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(entries(workdir), [format!("chainlink-{}", unsafe { libc::geteuid() })], "only the private directory");
    let names = entries(&private_dir(workdir));
    assert_eq!(names.len(), 1, "expected one run directory, found {names:?}");
    names[0].strip_prefix("chainlink-run-").expect("a run directory").to_string()
}

fn position(haystack: &str, needle: &str) -> usize {
    haystack.find(needle).unwrap_or_else(|| panic!("{needle:?} not found in:\n{haystack}"))
}

// ---------------------------------------------------------------------------------------------
// Exit status 0 and 1, and the JSON results.

#[test]
fn a_chain_that_succeeds_exits_0_with_file_env_overridden_by_flags() {
    let case = Case::new();
    let file = case.file(
        "chain.yaml",
        &format!(
            "env: {{A: from-file, B: from-file}}\nstages:\n\
             - image: {IMAGE}\n  entrypoint: [sh, -c, 'echo \"$A $B\" > /job/greeting']\n\
             - image: {IMAGE}\n  entrypoint: [cat, /job/greeting]\n"
        ),
    );
    let ran = case.run(&file, &["--json", "--env", "B=from-flag"]);
    assert_eq!(ran.code(), Some(0), "{}", ran.show());
    let results = ran.json();
    assert_eq!(results.len(), 2);
    let stdout = results[1]["logs"]["stdout"].as_str().unwrap();
    assert!(stdout.ends_with(" from-file from-flag\n"), "{stdout:?}");
    for (i, line) in [(1, "[1/2] chainlink-test/busybox: started"), (2, "[2/2] chainlink-test/busybox: ok, ")] {
        assert!(ran.stderr.contains(line), "line {i} missing\n{}", ran.show());
    }
    assert!(!ran.stderr.contains("stdout]"), "output lines without --follow\n{}", ran.show());
    assert_nothing_left(&case, &ran);
}

#[test]
fn json_results_hold_the_library_fields_and_logs_as_text() {
    let case = Case::new();
    let file = case.file(
        "chain.json",
        &format!(
            r#"[{{"image": "{IMAGE}", "entrypoint": ["sh", "-c", "echo out; echo err >&2"]}},
                {{"image": "{IMAGE}", "entrypoint": ["echo", "secret"], "logs": false}}]"#
        ),
    );
    let ran = case.run(&file, &["--json"]);
    assert_eq!(ran.code(), Some(0), "{}", ran.show());
    let results = ran.json();
    assert_eq!(results.len(), 2);
    for result in &results {
        let mut keys: Vec<&str> = result.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["data", "killed", "logs", "skipped", "success", "truncated"]);
        assert_eq!(result["data"]["ExitCode"], 0);
        assert_eq!(result["data"]["Status"], "exited");
        assert_eq!((&result["success"], &result["killed"], &result["skipped"]), (&Value::Bool(true), &Value::Bool(false), &Value::Bool(false)));
        assert_eq!(result["truncated"], false);
    }
    let logs = &results[0]["logs"];
    let out = logs["stdout"].as_str().unwrap();
    let err = logs["stderr"].as_str().unwrap();
    // Each line carries the engine's RFC 3339 timestamp.
    assert!(out.starts_with("20") && out.contains("Z out\n"), "{out:?}");
    assert!(err.contains("Z err\n") && !err.contains("out"), "{err:?}");
    assert_eq!(results[1]["logs"], Value::Null, "a stage with logs: false has null logs");
    assert!(!ran.stdout.contains("secret"));
}

#[test]
fn a_failed_stage_exits_1_and_the_rest_are_skipped() {
    let case = Case::new();
    let file = case.file(
        "chain.yaml",
        &format!(
            "- image: {IMAGE}\n  entrypoint: [sh, -c, 'exit 3']\n\
             - image: {IMAGE}\n  entrypoint: [touch, /job/never]\n"
        ),
    );
    let ran = case.run(&file, &["--json"]);
    assert_eq!(ran.code(), Some(1), "{}", ran.show());
    assert!(ran.stderr.contains("[1/2] chainlink-test/busybox: exit 3, "), "{}", ran.show());
    assert!(ran.stderr.contains("[2/2] chainlink-test/busybox: skipped"), "{}", ran.show());
    assert!(!ran.stderr.contains("chainlink: error:"), "a failed stage is not an error\n{}", ran.show());
    let results = ran.json();
    assert_eq!(results[0]["success"], false);
    assert_eq!(results[0]["data"]["ExitCode"], 3);
    assert_eq!(results[1]["skipped"], true);
    assert_eq!(results[1]["data"], Value::Null);
    assert_nothing_left(&case, &ran);
}

#[test]
fn a_timeout_exits_1_and_names_the_timeout() {
    let case = Case::new();
    let file = case.file("chain.yaml", &format!("- image: {IMAGE}\n  entrypoint: [sleep, '30']\n  timeout: 1\n"));
    let started = Instant::now();
    let ran = case.run(&file, &["--json"]);
    assert_eq!(ran.code(), Some(1), "{}", ran.show());
    assert!(started.elapsed() < Duration::from_secs(25), "the stage was not killed at its timeout");
    assert!(ran.stderr.contains("[1/1] chainlink-test/busybox: killed after 1 s (timeout)"), "{}", ran.show());
    assert_eq!(ran.json()[0]["killed"], true);
    assert_nothing_left(&case, &ran);
}

#[test]
fn an_oom_kill_exits_1_and_says_oom() {
    let case = Case::new();
    let file = case.file(
        "chain.yaml",
        &format!(
            "- image: {IMAGE}\n  memory: 16m\n  timeout: 20\n  \
             entrypoint: [sh, -c, 'x=$(head -c 100000000 /dev/zero | tr \"\\0\" a); echo ${{#x}}']\n"
        ),
    );
    let ran = case.run(&file, &["--json"]);
    assert_eq!(ran.code(), Some(1), "{}", ran.show());
    assert!(ran.stderr.contains("[1/1] chainlink-test/busybox: OOM, "), "{}", ran.show());
    assert_eq!(ran.json()[0]["data"]["OOMKilled"], true);
    assert_nothing_left(&case, &ran);
}

// ---------------------------------------------------------------------------------------------
// Exit status 2: invalid input, before the engine is touched.

#[test]
fn syntax_errors_exit_2_with_line_and_column() {
    let case = Case::new();
    let yaml = case.file("bad.yaml", "- image: busybox\n  entrypoint: [unclosed\n");
    let json = case.file("bad.json", "[{\"image\": }]");
    for (file, location, format) in [(&yaml, "bad.yaml:3:1: ", "YAML"), (&json, "bad.json:1:12: ", "JSON")] {
        for sub in ["run", "validate"] {
            // An unreachable engine shows that nothing is tried before the input is read.
            let ran = chainlink(&strings(&[sub, file.to_str().unwrap()]), &[("DOCKER_HOST", UNREACHABLE)]);
            assert_eq!(ran.code(), Some(2), "{sub} {}", ran.show());
            let expected = format!("chainlink: error: {}/{location}failed to parse {format}: ", case.dir.path().display());
            assert!(ran.stderr.contains(&expected), "{sub}: expected {expected:?}\n{}", ran.show());
        }
    }
}

#[test]
fn spec_problems_exit_2_listing_every_one_at_once() {
    let case = Case::new();
    let file = case.file(
        "chain.yaml",
        "- image: busybox\n  timout: 3\n- networking: 'yes'\n  memory: 1m\n- image: busybox\n  env: {N: 1}\n",
    );
    let run = chainlink(&strings(&["run", file.to_str().unwrap()]), &[("DOCKER_HOST", UNREACHABLE)]);
    let validate = chainlink(&strings(&["validate", file.to_str().unwrap()]), &[]);
    for ran in [&run, &validate] {
        assert_eq!(ran.code(), Some(2), "{}", ran.show());
        for expected in [
            "invalid chain: 5 problems in the chain:",
            "stages[0].timout: expected one of the stage keys (did you mean `timeout`?)",
            "stages[1].image: expected an image name",
            "stages[1].networking: expected true or false, got \"yes\"",
            "stages[1].memory: expected at least 6m",
            "stages[2].env: expected string values, got N: 1",
        ] {
            assert!(ran.stderr.contains(expected), "missing {expected:?}\n{}", ran.show());
        }
    }
    assert_eq!(run.stderr, validate.stderr, "run and validate report the same problems");
}

#[test]
fn unreadable_files_bad_flags_and_bad_workdirs_exit_2() {
    let case = Case::new();
    let missing = case.path("missing.yaml");
    let ran = chainlink(&strings(&["run", missing.to_str().unwrap()]), &[]);
    assert_eq!(ran.code(), Some(2), "{}", ran.show());
    assert!(ran.stderr.contains("chainlink: error: cannot read ") && ran.stderr.contains("missing.yaml"), "{}", ran.show());

    let file = case.file("chain.yaml", &format!("- image: {IMAGE}\n"));
    for bad in [&["--env", "NOEQUALS"][..], &["--pull", "sometimes"][..], &["--follow", "--quiet"][..]] {
        let ran = case.run(&file, bad);
        assert_eq!(ran.code(), Some(2), "{bad:?}: {}", ran.show());
    }

    let ran = chainlink(&strings(&["run", file.to_str().unwrap(), "--workdir", missing.to_str().unwrap(), "--pull", "never"]), &[]);
    assert_eq!(ran.code(), Some(2), "{}", ran.show());
    assert!(ran.stderr.contains("workdir: expected an existing directory"), "{}", ran.show());
}

// ---------------------------------------------------------------------------------------------
// Exit status 3: the engine.

#[test]
fn an_unreachable_engine_exits_3() {
    let case = Case::new();
    let file = case.file("chain.yaml", &format!("- image: {IMAGE}\n"));
    let env = [("DOCKER_HOST", UNREACHABLE)];
    let run = chainlink(&strings(&["run", file.to_str().unwrap(), "--workdir", case.workdir().to_str().unwrap()]), &env);
    let gc = chainlink(&strings(&["gc", "--workdir", case.workdir().to_str().unwrap()]), &env);
    for ran in [run, gc] {
        assert_eq!(ran.code(), Some(3), "{}", ran.show());
        assert!(ran.stderr.contains("chainlink: error: failed to connect to the Docker engine"), "{}", ran.show());
        assert!(ran.stderr.contains("/nonexistent.sock"), "{}", ran.show());
    }
}

#[test]
fn an_unavailable_image_exits_3_naming_it() {
    let case = Case::new();
    let file = case.file("chain.yaml", &format!("- image: {IMAGE}\n- image: chainlink-test/does-not-exist\n"));
    let ran = case.run(&file, &[]);
    assert_eq!(ran.code(), Some(3), "{}", ran.show());
    assert!(ran.stderr.contains("chainlink: error: failed to get image chainlink-test/does-not-exist"), "{}", ran.show());
    assert!(!ran.stderr.contains("started"), "no stage runs when an image is missing\n{}", ran.show());
    assert_nothing_left(&case, &ran);
}

/// A compile that produced nothing, then a stage that runs what it should have produced: the
/// student's failure (exit 1, one result per stage), not the engine's (exit 3).
#[test]
fn a_program_that_cannot_start_exits_1_with_every_result() {
    let case = Case::new();
    let file = case.file(
        "chain.yaml",
        &format!("- image: {IMAGE}\n  entrypoint: ['true']\n- image: {IMAGE}\n  entrypoint: [/job/a.out]\n- image: {IMAGE}\n"),
    );
    let ran = case.run(&file, &["--json"]);
    assert_eq!(ran.code(), Some(1), "{}", ran.show());
    assert!(ran.stderr.contains("[2/3] chainlink-test/busybox: could not start (exit 127)"), "{}", ran.show());
    let results = ran.json();
    assert_eq!(results.len(), 3);
    assert_eq!(results[1]["success"], false);
    assert_eq!(results[1]["data"]["ExitCode"], 127);
    assert!(results[1]["logs"]["stderr"].as_str().unwrap().contains("the stage could not start"), "{}", ran.show());
    assert_eq!(results[2]["skipped"], true);
    assert_nothing_left(&case, &ran);
}

#[test]
fn an_engine_error_during_a_stage_exits_3_and_cleans_up() {
    let case = Case::new();
    let file = case.file(
        "chain.yaml",
        &format!("- image: {IMAGE}\n  entrypoint: ['true']\n- image: {IMAGE}\n  tmpfs: {{/etc/passwd: ''}}\n"),
    );
    let ran = case.run(&file, &["--json"]);
    assert_eq!(ran.code(), Some(3), "{}", ran.show());
    assert!(ran.stderr.contains("chainlink: error: failed to run stages[1] (chainlink-test/busybox): "), "{}", ran.show());
    // The stages that finished are still reported.
    let results = ran.json();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["success"], true);
    assert_nothing_left(&case, &ran);
}

// ---------------------------------------------------------------------------------------------
// What is shown: --follow, --quiet, --logs-dir.

#[test]
fn follow_streams_output_lines_in_order_stage_by_stage() {
    let case = Case::new();
    let file = case.file(
        "chain.yaml",
        &format!(
            "- image: {IMAGE}\n  entrypoint: [sh, -c, 'echo a1; echo a2; echo e1 >&2; echo a3']\n\
             - image: {IMAGE}\n  entrypoint: [sh, -c, 'echo b1; echo b2']\n"
        ),
    );
    let ran = case.run(&file, &["--follow"]);
    assert_eq!(ran.code(), Some(0), "{}", ran.show());
    let err = &ran.stderr;
    let a: Vec<usize> = ["a1", "a2", "a3"].iter().map(|l| position(err, &format!("Z {l}\n"))).collect();
    let b: Vec<usize> = ["b1", "b2"].iter().map(|l| position(err, &format!("Z {l}\n"))).collect();
    assert!(a.windows(2).all(|w| w[0] < w[1]) && b[0] < b[1], "stdout lines out of order\n{err}");
    assert!(a[2] < b[0], "stage 1's lines come before stage 2's\n{err}");
    let stage2_started = position(err, "[2/2] chainlink-test/busybox: started");
    assert!(a[2] < stage2_started && stage2_started < b[0], "{err}");
    // Lines are marked with their stage and stream, and keep the engine's timestamp.
    for line in err.lines().filter(|l| l.ends_with("Z a1") || l.ends_with("Z e1") || l.ends_with("Z b2")) {
        let (mark, rest) = line.split_once("] ").unwrap();
        assert!(["[1/2 stdout", "[1/2 stderr", "[2/2 stdout"].contains(&mark), "{line}");
        assert!(rest.starts_with("20") && rest.as_bytes()[10] == b'T', "{line}");
    }
    assert!(err.contains("[1/2 stderr] ") && err.lines().any(|l| l.starts_with("[1/2 stderr] ") && l.ends_with("Z e1")), "{err}");
    assert!(ran.stdout.is_empty(), "nothing on stdout without --json: {:?}", ran.stdout);
}

#[test]
fn quiet_prints_only_errors() {
    let case = Case::new();
    let ok = case.file("ok.yaml", &format!("- image: {IMAGE}\n  entrypoint: ['true']\n"));
    let ran = case.run(&ok, &["--quiet"]);
    assert_eq!(ran.code(), Some(0), "{}", ran.show());
    assert_eq!(ran.stderr, "");
    let failing = case.file("fail.yaml", &format!("- image: {IMAGE}\n  entrypoint: ['false']\n"));
    let ran = case.run(&failing, &["--quiet", "--json"]);
    assert_eq!(ran.code(), Some(1), "{}", ran.show());
    assert_eq!(ran.stderr, "");
    assert_eq!(ran.json()[0]["success"], false, "--json still reports on stdout");
    let missing = case.file("missing.yaml", "- image: chainlink-test/does-not-exist\n");
    let ran = case.run(&missing, &["--quiet"]);
    assert_eq!(ran.code(), Some(3), "{}", ran.show());
    assert!(ran.stderr.starts_with("chainlink: error: failed to get image"), "{}", ran.show());
    assert_eq!(ran.stderr.lines().count(), 1, "{}", ran.show());
}

#[test]
fn logs_dir_gets_each_stages_raw_output() {
    let case = Case::new();
    let file = case.file(
        "chain.yaml",
        &format!(
            "- image: {IMAGE}\n  entrypoint: [sh, -c, 'echo out1; echo err1 >&2']\n\
             - image: {IMAGE}\n  entrypoint: [echo, hidden]\n  logs: false\n\
             - image: {IMAGE}\n  entrypoint: [sh, -c, 'echo err3 >&2']\n"
        ),
    );
    let logs = case.path("logs/nested");
    let ran = case.run(&file, &["--json", "--logs-dir", logs.to_str().unwrap()]);
    assert_eq!(ran.code(), Some(0), "{}", ran.show());
    assert_eq!(entries(&logs), ["stage-1.stderr", "stage-1.stdout", "stage-3.stderr", "stage-3.stdout"]);
    let read = |name: &str| std::fs::read_to_string(logs.join(name)).unwrap();
    assert!(read("stage-1.stdout").ends_with("Z out1\n"), "{:?}", read("stage-1.stdout"));
    assert!(read("stage-1.stderr").ends_with("Z err1\n"), "{:?}", read("stage-1.stderr"));
    assert!(read("stage-3.stderr").ends_with("Z err3\n"), "{:?}", read("stage-3.stderr"));
    assert_eq!(read("stage-3.stdout"), "");
    // The files hold what the JSON holds.
    let results = ran.json();
    assert_eq!(results[0]["logs"]["stdout"].as_str().unwrap(), read("stage-1.stdout"));
}

// ---------------------------------------------------------------------------------------------
// Signals: the run is cancelled, its container and directory removed.

fn long_chain(case: &Case) -> PathBuf {
    case.file(
        "long.yaml",
        &format!(
            "- image: {IMAGE}\n  entrypoint: [sleep, '60']\n  timeout: 120\n\
             - image: {IMAGE}\n  entrypoint: [touch, /job/never]\n"
        ),
    )
}

fn run_args(case: &Case, file: &Path) -> Vec<String> {
    strings(&["run", file.to_str().unwrap(), "--workdir", case.workdir().to_str().unwrap(), "--pull", "never"])
}

/// Starts the long chain, waits for its first stage to run, sends `number`, and checks that
/// the CLI exits with `code` having removed the stage's container and the run directory.
fn cancel_with(number: i32, code: i32, name: &str) {
    let case = Case::new();
    let file = long_chain(&case);
    let mut cli = Watched::start(&run_args(&case, &file));
    cli.wait_for("[1/2] chainlink-test/busybox: started");
    let run = run_id_in(&case.workdir());
    assert!(!containers_of_run(&run).is_empty(), "the stage's container exists while it runs");
    let sent = Instant::now();
    signal(cli.pid(), number);
    let (status, stderr) = cli.finish();
    assert_eq!(status.code(), Some(code), "{stderr}");
    assert!(sent.elapsed() < Duration::from_secs(30), "cancellation took {:?}", sent.elapsed());
    assert!(stderr.contains(&format!("chainlink: error: interrupted by {name}")), "{stderr}");
    assert!(!stderr.contains("[2/2]"), "no stage after the cancelled one\n{stderr}");
    assert_eq!(containers_of_run(&run), Vec::<String>::new(), "containers of run {run} left\n{stderr}");
    assert_eq!(case.workdir_entries(), Vec::<String>::new(), "run directory left\n{stderr}");
}

#[test]
fn sigint_during_a_stage_exits_130_and_leaves_nothing() {
    cancel_with(libc::SIGINT, 130, "SIGINT");
}

#[test]
fn sigterm_during_a_stage_exits_143_and_leaves_nothing() {
    cancel_with(libc::SIGTERM, 143, "SIGTERM");
}

#[test]
fn sighup_during_a_stage_exits_129_leaves_nothing_and_still_prints_json() {
    let case = Case::new();
    let file = long_chain(&case);
    let mut args = run_args(&case, &file);
    args.push("--json".to_string());
    let mut cli = Watched::start(&args);
    cli.wait_for("[1/2] chainlink-test/busybox: started");
    let run = run_id_in(&case.workdir());
    assert!(!containers_of_run(&run).is_empty(), "the stage's container exists while it runs");
    let sent = Instant::now();
    signal(cli.pid(), libc::SIGHUP);
    cli.wait_for("chainlink: SIGHUP: stopping the run");
    // A hang-up often comes twice (the kernel and the shell): the second must not skip cleanup.
    signal(cli.pid(), libc::SIGHUP);
    let (status, stdout, stderr) = cli.finish_with_stdout();
    assert_eq!(status.code(), Some(129), "{stderr}");
    assert!(sent.elapsed() < Duration::from_secs(30), "cancellation took {:?}", sent.elapsed());
    assert!(stderr.contains("chainlink: error: interrupted by SIGHUP; the run was stopped and cleaned up"), "{stderr}");
    assert!(!stderr.contains("[2/2]"), "no stage after the cancelled one\n{stderr}");
    let results: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert!(results.as_array().is_some_and(|r| r.len() < 2), "the stages that finished, as JSON: {stdout}");
    assert_eq!(containers_of_run(&run), Vec::<String>::new(), "containers of run {run} left\n{stderr}");
    assert_eq!(case.workdir_entries(), Vec::<String>::new(), "run directory left\n{stderr}");
}

#[test]
fn a_second_sigint_exits_at_once_and_gc_removes_the_rest() {
    let case = Case::new();
    let file = long_chain(&case);
    let mut cli = Watched::start(&run_args(&case, &file));
    cli.wait_for("[1/2] chainlink-test/busybox: started");
    let run = run_id_in(&case.workdir());
    signal(cli.pid(), libc::SIGINT);
    cli.wait_for("Ctrl-C again to exit at once");
    signal(cli.pid(), libc::SIGINT);
    let (status, stderr) = cli.finish();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(!stderr.contains("chainlink: error: interrupted"), "the second Ctrl-C did not wait for cleanup\n{stderr}");
    let gc = chainlink(&strings(&["gc", "--workdir", case.workdir().to_str().unwrap()]), &[]);
    assert_eq!(gc.code(), Some(0), "{}", gc.show());
    assert_eq!(containers_of_run(&run), Vec::<String>::new());
    assert_eq!(case.workdir_entries(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// Leftovers of dead runs: `gc`, and the sweep at the start of `run`.

#[test]
fn gc_removes_what_a_killed_run_left() {
    let case = Case::new();
    let file = long_chain(&case);
    let mut cli = Watched::start(&run_args(&case, &file));
    cli.wait_for("[1/2] chainlink-test/busybox: started");
    let run = run_id_in(&case.workdir());
    // SIGKILL: the CLI gets no chance to clean up.
    signal(cli.pid(), libc::SIGKILL);
    let (status, _) = cli.finish();
    assert_eq!(status.code(), None, "killed by a signal");
    // The container is left too, but a concurrent test's `run` may sweep it at any moment
    // (its owner is dead): only the directory, under this test's workdir, is certain.
    assert_eq!(case.workdir_entries().len(), 1, "a killed CLI leaves its run directory");

    let gc = chainlink(&strings(&["gc", "--workdir", case.workdir().to_str().unwrap()]), &[]);
    assert_eq!(gc.code(), Some(0), "{}", gc.show());
    let dir = private_dir(&case.workdir()).join(format!("chainlink-run-{run}"));
    assert!(gc.stdout.contains(&format!("removed directory {}\n", dir.display())), "{}", gc.show());
    assert_eq!(containers_of_run(&run), Vec::<String>::new(), "{}", gc.show());
    assert_eq!(case.workdir_entries(), Vec::<String>::new());

    let again = chainlink(&strings(&["gc", "--workdir", case.workdir().to_str().unwrap()]), &[]);
    assert_eq!(again.code(), Some(0), "{}", again.show());
    assert!(!again.stdout.contains("removed directory"), "{}", again.show());
}

/// Clears the immutable attribute of a file, even when the test fails half-way, so that the
/// test's directory can be removed.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: PathBuf) -> Immutable {
        std::fs::write(&path, "cannot go").unwrap();
        let out = Command::new("chattr").arg("+i").arg(&path).output().expect("chattr (e2fsprogs)");
        assert!(out.status.success(), "chattr +i failed (the suite runs as root): {}", String::from_utf8_lossy(&out.stderr));
        Immutable(path)
    }

    fn clear(&self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).output();
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        self.clear();
    }
}

#[test]
fn gc_and_run_report_what_they_cannot_remove() {
    let case = Case::new();
    let work = case.workdir();
    let file = long_chain(&case);
    let mut cli = Watched::start(&run_args(&case, &file));
    cli.wait_for("[1/2] chainlink-test/busybox: started");
    let run = run_id_in(&work);
    let dir = private_dir(&work).join(format!("chainlink-run-{run}"));
    // An immutable file: not even root (nor a root cleanup container, which lacks
    // CAP_LINUX_IMMUTABLE) may remove it.
    let stuck = Immutable::set(dir.join("stuck"));
    signal(cli.pid(), libc::SIGKILL);
    let (status, _) = cli.finish();
    assert_eq!(status.code(), None, "killed by a signal");

    let gc_args = strings(&["gc", "--workdir", work.to_str().unwrap(), "--cleanup-image", IMAGE]);
    let gc = chainlink(&gc_args, &[]);
    assert_eq!(gc.code(), Some(3), "{}", gc.show());
    assert!(gc.stderr.contains(&dir.display().to_string()), "the failure names the directory\n{}", gc.show());
    assert!(!gc.stdout.contains("nothing to remove"), "{}", gc.show());
    // Whatever else happened, the dead run's container is gone.
    assert_eq!(containers_of_run(&run), Vec::<String>::new(), "{}", gc.show());
    assert!(dir.join("stuck").exists());

    // `run` sweeps the same workdir first: a warning, and the run goes on.
    let quick = case.file("quick.yaml", &format!("- image: {IMAGE}\n  entrypoint: ['true']\n"));
    let ran = case.run(&quick, &[]);
    assert_eq!(ran.code(), Some(0), "{}", ran.show());
    let warning = ran.stderr.lines().find(|l| l.starts_with("chainlink: warning:")).unwrap_or_default();
    assert!(warning.contains(&dir.display().to_string()), "{}", ran.show());
    assert_eq!(case.workdir_entries(), [format!("chainlink-run-{run}")], "the quick run left nothing\n{}", ran.show());

    stuck.clear();
    let gc = chainlink(&gc_args, &[]);
    assert_eq!(gc.code(), Some(0), "{}", gc.show());
    assert!(gc.stdout.contains(&format!("removed directory {}\n", dir.display())), "{}", gc.show());
    assert_eq!(gc.stderr, "", "{}", gc.show());
    assert_eq!(case.workdir_entries(), Vec::<String>::new());
}

#[test]
fn gc_refuses_a_workdir_that_is_not_a_directory() {
    let case = Case::new();
    let missing = case.path("missing");
    let file = case.file("a-file", "");
    // Checked before the engine is asked anything.
    let env = [("DOCKER_HOST", UNREACHABLE)];
    for (path, why) in [(&missing, "expected an existing directory"), (&file, "expected a directory, found a file")] {
        let gc = chainlink(&strings(&["gc", "--workdir", path.to_str().unwrap()]), &env);
        assert_eq!(gc.code(), Some(2), "{}", gc.show());
        assert!(gc.stderr.contains(&format!("chainlink: error: --workdir {}: {why}", path.display())), "{}", gc.show());
        assert_eq!(gc.stdout, "", "{}", gc.show());
    }
}

#[test]
fn run_sweeps_dead_runs_in_its_workdir_first() {
    let case = Case::new();
    // A run directory whose runner is gone: its lock is free.
    let run = "999999997-00000000000000ef";
    let private = private_dir(&case.workdir());
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let dead = private.join(format!("chainlink-run-{run}"));
    std::fs::create_dir_all(dead.join("job/nested")).unwrap();
    std::fs::write(dead.join("job/nested/file"), "left over").unwrap();
    std::fs::write(dead.join("lock"), format!("{run}\n0\n")).unwrap();
    // And one that is not a run directory at all.
    std::fs::create_dir(case.workdir().join("keep-me")).unwrap();

    let file = case.file("chain.yaml", &format!("- image: {IMAGE}\n  entrypoint: ['true']\n"));
    let ran = case.run(&file, &[]);
    assert_eq!(ran.code(), Some(0), "{}", ran.show());
    assert!(ran.stderr.contains(&format!("removed directory {} left by a dead run", dead.display())), "{}", ran.show());
    assert_eq!(case.workdir_entries(), ["keep-me"]);
}

// ---------------------------------------------------------------------------------------------
// validate, help, version.

#[test]
fn validate_checks_without_the_engine() {
    let case = Case::new();
    let file = case.file("chain.yaml", &format!("- image: {IMAGE}\n- image: {IMAGE}\n  timeout: 2.5\n"));
    let env = [("DOCKER_HOST", UNREACHABLE)];
    let ran = chainlink(&strings(&["validate", file.to_str().unwrap()]), &env);
    assert_eq!(ran.code(), Some(0), "{}", ran.show());
    assert_eq!(ran.stdout, "ok: 2 stages\n");
    assert_eq!(ran.stderr, "", "nothing here needs the engine to check");

    // What only the engine can tell is named as not checked.
    let engine_bound = case.file("engine.yaml", &format!("- image: {IMAGE}\n- image: {IMAGE}\n  cpus: 64\n"));
    let ran = chainlink(&strings(&["validate", engine_bound.to_str().unwrap()]), &env);
    assert_eq!(ran.code(), Some(0), "{}", ran.show());
    assert!(ran.stderr.contains("not checked without an engine") && ran.stderr.contains("for stages[1]"), "{}", ran.show());
    assert!(ran.stderr.contains("cpus is at most the engine's CPU count"), "{}", ran.show());

    // `-` reads standard input.
    let mut child = command(&strings(&["validate", "-"]), &env).stdin(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"stages: [{image: busybox}]\nenv: {A: b}\n").unwrap();
    let output = wait_output(child);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok: 1 stage\n");

    // The examples are valid chains.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    for (name, stages) in [("hello.yaml", 2), ("autograder.yaml", 3)] {
        let ran = chainlink(&strings(&["validate", examples.join(name).to_str().unwrap()]), &env);
        assert_eq!(ran.code(), Some(0), "{name}: {}", ran.show());
        assert_eq!(ran.stdout, format!("ok: {stages} stages\n"));
    }
}

#[test]
fn the_autograder_example_grades_its_submission() {
    let case = Case::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/autograder.yaml");
    let ran = case.run(&example, &["--json"]);
    assert_eq!(ran.code(), Some(0), "{}", ran.show());
    let results = ran.json();
    assert_eq!(results.len(), 3);
    let printed = results[2]["logs"]["stdout"].as_str().unwrap();
    let report: Value = serde_json::from_str(printed.split_once(' ').unwrap().1).unwrap();
    assert_eq!(report["passed"], 4);
    assert_eq!(report["score"], 100);
    assert_nothing_left(&case, &ran);
}

#[test]
fn help_shows_examples_and_version_prints() {
    for sub in ["run", "validate", "gc"] {
        let ran = chainlink(&strings(&[sub, "--help"]), &[]);
        assert_eq!(ran.code(), Some(0), "{}", ran.show());
        let example = &ran.stdout[ran.stdout.find("Example:\n").expect("an example")..];
        assert!(example.contains("\n  $ chainlink "), "{sub} --help has no example command\n{}", ran.stdout);
    }
    let ran = chainlink(&strings(&["--version"]), &[]);
    assert_eq!(ran.code(), Some(0));
    assert_eq!(ran.stdout, format!("chainlink {}\n", env!("CARGO_PKG_VERSION")));
}

/// `chainlink validate FILE`, FILE written with `bytes`.
fn validate_bytes(case: &Case, name: &str, bytes: &[u8]) -> Ran {
    let path = case.path(name);
    std::fs::write(&path, bytes).unwrap();
    chainlink(&strings(&["validate", path.to_str().unwrap()]), &[])
}

fn assert_refused(ran: &Ran, message: &str) {
    assert_eq!(ran.code(), Some(2), "{}", ran.show());
    assert_eq!(ran.stderr, format!("chainlink: error: {message}\n"), "{}", ran.show());
}

#[test]
fn endless_input_is_refused_after_16_mib() {
    let started = Instant::now();
    let ran = chainlink(&strings(&["validate", "/dev/zero"]), &[]);
    assert_refused(&ran, "/dev/zero: the file is larger than 16777216 bytes (16 MiB), the most a chain file may hold");
    let mut cmd = command(&strings(&["validate", "-"]), &[]);
    cmd.stdin(std::fs::File::open("/dev/zero").unwrap());
    let output = wait_output(cmd.spawn().unwrap());
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("<stdin>: the file is larger than 16777216 bytes"));
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
}

#[test]
fn deep_nesting_is_refused_at_once_with_its_position() {
    let case = Case::new();
    let text = format!("stages: {}{}", "[".repeat(100_000), "]".repeat(100_000));
    let started = Instant::now();
    let ran = validate_bytes(&case, "deep.yaml", text.as_bytes());
    let name = case.path("deep.yaml").display().to_string();
    assert_refused(
        &ran,
        &format!("{name}:1:73: failed to parse YAML: expected lists and mappings nested at most 64 levels deep, got deeper"),
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // Brackets in strings, comments and block scalars do not count.
    let fine = format!("- image: {IMAGE}  # {}\n  entrypoint:\n    - sh\n    - |\n      [ -f x ] {}\n    - '{}'\n", "[".repeat(99), "[".repeat(99), "{".repeat(99));
    let ran = validate_bytes(&case, "fine.yaml", fine.as_bytes());
    assert_eq!(ran.code(), Some(0), "{}", ran.show());
}

#[test]
fn duplicate_keys_are_refused_with_both_lines() {
    let case = Case::new();
    let ran = validate_bytes(&case, "dup.yaml", format!("- image: {IMAGE}\n  timeout: 3\n  image: other\n").as_bytes());
    let name = case.path("dup.yaml").display().to_string();
    assert_refused(&ran, &format!("{name}:3:3: failed to parse YAML: [0]: expected each key once in a mapping, got `image` twice, at lines 1 and 3"));
    let ran = validate_bytes(&case, "dup.json", format!("{{\"stages\": [{{\"image\": \"{IMAGE}\"}}],\n\"stages\": []}}").as_bytes());
    let name = case.path("dup.json").display().to_string();
    assert_refused(&ran, &format!("{name}:2:8: failed to parse JSON: expected each key once in a mapping, got `stages` twice, at lines 1 and 2"));
}

#[test]
fn empty_and_non_utf8_files_are_refused_clearly() {
    let case = Case::new();
    for (file, text) in [("empty.yaml", ""), ("comments.yaml", "# nothing yet\n\n")] {
        let ran = validate_bytes(&case, file, text.as_bytes());
        let name = case.path(file).display().to_string();
        assert_refused(&ran, &format!("{name}: the file is empty (expected a list of stages or a mapping with `stages`)"));
    }
    let mut latin1 = format!("- image: {IMAGE}\n  hostname: caf").into_bytes();
    latin1.extend(b"\xe9\n");
    let ran = validate_bytes(&case, "latin1.yaml", &latin1);
    let name = case.path("latin1.yaml").display().to_string();
    assert_refused(&ran, &format!("{name}:2:16: failed to parse YAML: expected UTF-8 text, got the byte 0xE9"));
}

#[test]
fn env_flags_with_names_docker_would_misread_exit_2() {
    let case = Case::new();
    let file = case.file("chain.yaml", &format!("- image: {IMAGE}\n  entrypoint: [\"true\"]\n"));
    for (flag, says) in [
        (" A=1", "expected a variable name without leading or trailing whitespace, got \" A\""),
        ("A =1", "expected a variable name without leading or trailing whitespace, got \"A \""),
        ("=1", "expected a variable name before '=', got \"=1\""),
    ] {
        let ran = case.run(&file, &["--env", flag]);
        assert_eq!(ran.code(), Some(2), "{flag:?}: {}", ran.show());
        assert!(ran.stderr.contains(says), "{flag:?}: {}", ran.show());
        assert_eq!(case.workdir_entries(), Vec::<String>::new());
    }
}
