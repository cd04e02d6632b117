//! Cleanup when the runner is not root and a stage leaves root-owned, mode-000 files in /job.
//!
//! As root (CI), the test runs itself again as the unprivileged user `chainlink-ci` (a member
//! of the docker group, made by `.ci/run`); as any other user it runs directly.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::common::*;

const INNER: &str = "CHAINLINK_TEST_NONROOT_INNER";
const CI_USER: &str = "chainlink-ci";

#[tokio::test(flavor = "multi_thread")]
async fn root_owned_files_in_job_do_not_stop_cleanup_by_a_non_root_runner() {
    let euid = unsafe { libc::geteuid() };
    if euid != 0 || std::env::var_os(INNER).is_some() {
        assert_ne!(euid, 0, "this part must run as a user that is not root");
        return cleanup_as_this_user().await;
    }
    let id = Command::new("id").args(["-u", CI_USER]).output().expect("id");
    assert!(
        id.status.success(),
        "user {CI_USER} is missing: .ci/run creates it (useradd -m -G docker {CI_USER})"
    );
    // The checkout may sit where the unprivileged user cannot reach (under /root, say): run a
    // copy of this test binary from a directory every user can read.
    let reachable = tempfile::Builder::new().prefix("chainlink-test-exe-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(reachable.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = reachable.path().join("engine-tests");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", CI_USER, "--regid", CI_USER, "--init-groups", "--reset-env"])
        .arg(&exe)
        .args(["--exact", "nonroot::root_owned_files_in_job_do_not_stop_cleanup_by_a_non_root_runner", "--nocapture"])
        .env(INNER, "1")
        .output()
        .expect("setpriv");
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the run as {CI_USER} failed:\n{report}");
    assert!(report.contains("1 passed"), "the inner test did not run:\n{report}");
}

async fn cleanup_as_this_user() {
    // A workdir this user owns, in a place every user can reach.
    let dir = tempfile::Builder::new().prefix("chainlink-test-nonroot-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = "mkdir -p /job/a/b/c && echo x > /job/a/b/c/f && chmod 000 /job/a/b/c/f /job/a/b/c /job/a/b /job/a && ls -ld /job/a | cut -c1-10";
    // Without a disk limit: what this runner cannot read it cannot measure either (below).
    let mut stage = sh(script);
    stage.disk_limit = None;
    let results = run(&chain(vec![stage], dir.path()).await).await;
    assert!(results[0].success(), "{}", stderr(&results[0]));
    assert_eq!(stdout(&results[0]), "d---------");
    assert_nothing_left(dir.path());

    // With one (the default), a directory closed to this runner cannot be measured: the stage
    // is held to have gone over its limit (fail closed), and its files are still removed.
    let results = run(&chain(vec![sh(script)], dir.path()).await).await;
    assert_eq!(results[0].outcome, chainlink::Outcome::DiskLimit, "{}", stderr(&results[0]));
    assert!(stderr(&results[0]).contains("could not be measured"), "{}", stderr(&results[0]));
    assert_nothing_left(dir.path());

    // A dead run's directory holding root-owned, mode-000 files, and a sweep given no cleanup
    // image (a bare `chainlink gc` as this user): it finds one on the engine.
    let run = "999999998-00000000000000cd";
    let private = chainlink::workspace::private_dir(dir.path());
    let run_dir = private.join(format!("chainlink-run-{run}"));
    std::fs::create_dir_all(run_dir.join("job")).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(run_dir.join("job"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(run_dir.join("lock"), format!("{run}\n0\n")).unwrap();
    let made = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "-v", &format!("{}:/job", run_dir.join("job").display()), BUSYBOX])
        .args(["sh", "-c", "mkdir -p /job/x/y && touch /job/x/y/z && chmod 000 /job/x/y /job/x"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let engine = chainlink::DockerEngine::connect().await.unwrap();
    let report = chainlink::sweep_dead_runs(&engine, dir.path(), &[]).await.unwrap();
    assert_eq!(report.directories, [run_dir], "{report:?}");
    assert!(report.failures.is_empty(), "{report:?}");
    assert_nothing_left(dir.path());
}
