//! Helpers shared by the tests against the real engine.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chainlink::{Chain, ChainOptions, Error, Stage, StageResult};

/// Built by `scripts/build-test-images.sh`: static busybox, `CMD ["sh"]`,
/// `ENV CHAINLINK_IMAGE_VAR=from-image`.
pub const BUSYBOX: &str = "chainlink-test/busybox";
/// The same filesystem with `ENTRYPOINT ["echo", "image-entrypoint"]`.
pub const BUSYBOX_ENTRYPOINT: &str = "chainlink-test/busybox-entrypoint";

/// A busybox stage running `script` under `sh -c`.
pub fn sh(script: &str) -> Stage {
    Stage::new(BUSYBOX).entrypoint(["sh", "-c", script])
}

/// A fresh workdir for one test, so its leftovers can be told from other tests'.
pub fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("chainlink-test-").tempdir().expect("temp workdir")
}

pub async fn chain(stages: Vec<Stage>, workdir: &Path) -> Chain {
    match Chain::new(stages, ChainOptions::default().workdir(workdir)).await {
        Ok(chain) => chain,
        Err(e) => panic!("chain construction failed: {e}"),
    }
}

pub async fn run(chain: &Chain) -> Vec<StageResult> {
    run_env(chain, &[]).await
}

pub async fn run_env(chain: &Chain, environ: &[(&str, &str)]) -> Vec<StageResult> {
    let environ: BTreeMap<String, String> = environ.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    match chain.run(&environ).await {
        Ok(results) => results,
        Err(e) => panic!("run failed: {e}"),
    }
}

pub fn stdout(result: &StageResult) -> String {
    text(&result.stdout.as_ref().expect("stdout kept").bytes)
}

pub fn stderr(result: &StageResult) -> String {
    text(&result.stderr.as_ref().expect("stderr kept").bytes)
}

/// Output without the engine's timestamps: the part of each line after the first space.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|line| line.split_once(' ').map_or(line, |(_, rest)| rest))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a test's runs left: labelled containers whose `/job` was under `workdir`, and
/// anything left in `workdir` itself. Both must be empty after every run.
pub fn leftovers(workdir: &Path) -> Vec<String> {
    let mut found: Vec<String> =
        containers_under(workdir).into_iter().map(|(id, owner)| format!("container {id} (owner {owner})")).collect();
    // The user's private directory stays between runs, empty: what is in it is left.
    let private = chainlink::workspace::private_dir(workdir);
    if let Ok(entries) = std::fs::read_dir(workdir) {
        found.extend(entries.flatten().filter(|e| e.path() != private).map(|e| format!("entry {}", e.path().display())));
    }
    if let Ok(entries) = std::fs::read_dir(&private) {
        found.extend(entries.flatten().map(|e| format!("entry {}", e.path().display())));
    }
    found
}

/// Labelled containers on the engine whose `/job` is under `workdir`: full id and owner label.
pub fn containers_under(workdir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let ids = docker(&["ps", "-aq", "--no-trunc", "--filter", "label=org.chainlink.managed"]);
    for id in ids.split_whitespace() {
        let info = docker(&[
            "inspect",
            "--format",
            "{{index .Config.Labels \"org.chainlink.owner\"}}|{{range .HostConfig.Binds}}{{.}} {{end}}",
            id,
        ]);
        let Some((owner, binds)) = info.trim().split_once('|') else { continue };
        if binds.contains(&format!("{}/", workdir.display())) {
            found.push((id.to_string(), owner.to_string()));
        }
    }
    found
}

pub fn assert_nothing_left(workdir: &Path) {
    // Removal is complete when a run returns; no waiting here on purpose.
    let left = leftovers(workdir);
    assert!(left.is_empty(), "the run left: {left:?}");
}

pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether this engine lets a container run privileged. Sandboxed engines may refuse outright
/// ("unable to apply caps"); the privileged tests then check that the refusal is reported.
pub fn engine_allows_privileged() -> bool {
    let status = Command::new("docker")
        .args(["run", "--rm", "--privileged", "--network", "none", "--label", "org.chainlink.test-probe=true", BUSYBOX, "true"])
        .output()
        .expect("docker CLI");
    status.status.success()
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Unwraps a run's error, for tests that expect one.
pub fn expect_error(result: Result<Vec<StageResult>, Error>) -> Error {
    match result {
        Ok(results) => panic!("expected an error, got {} results", results.len()),
        Err(e) => e,
    }
}
