//! The engine's floor: the same containers chainlink makes, by the plainest direct loops.
//!
//! Both loops give the engine the configuration a default chainlink stage has (the same host
//! config: `/job` bind mount, 2 GiB memory without swap, 1024 pids, `core=0`, bounded
//! json-file logs, bridge networking, hostname `container`), so that the engine does the same
//! work for every contender and the difference is the client's.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};

use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;

/// Every container the floor loops make carries this label (`docker ps -a --filter label=...`).
pub const BENCH_LABEL: &str = "org.chainlink.bench";

/// A chainlink stage's defaults, as the engine sees them.
const MEMORY: i64 = 2 << 30;
const PIDS_LIMIT: i64 = 1024;
/// Twice the default `output_limit` (16 MiB): the engine-side cap chainlink sets.
const LOG_MAX_SIZE: u64 = 32 << 20;

/// What one container is: the image and the argv that replaces its entrypoint and command.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    pub image: &'a str,
    pub argv: &'a [String],
    /// Host directory mounted at `/job`.
    pub dir: &'a Path,
}

fn body(job: &Job<'_>) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(job.image.to_string()),
        hostname: Some("container".to_string()),
        entrypoint: Some(job.argv.to_vec()),
        cmd: Some(Vec::new()),
        env: Some(Vec::new()),
        labels: Some(HashMap::from([(BENCH_LABEL.to_string(), "true".to_string())])),
        tty: Some(false),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        open_stdin: Some(false),
        network_disabled: Some(false),
        host_config: Some(HostConfig {
            binds: Some(vec![format!("{}:/job:rw", job.dir.display())]),
            memory: Some(MEMORY),
            memory_swap: Some(MEMORY),
            pids_limit: Some(PIDS_LIMIT),
            privileged: Some(false),
            readonly_rootfs: Some(false),
            ulimits: Some(vec![ResourcesUlimits { name: Some("core".into()), soft: Some(0), hard: Some(0) }]),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_string()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
                    ("max-file".to_string(), "2".to_string()),
                ])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One container by the plainest loop: create, start, wait, read its logs, inspect, remove, one
/// request after the other. Returns the exit code and the number of log bytes read.
pub async fn bollard_one(docker: &Docker, job: &Job<'_>) -> Result<(i64, u64), String> {
    let created = docker
        .create_container(None::<CreateContainerOptions>, body(job))
        .await
        .map_err(|e| format!("create: {e}"))?;
    let id = created.id;
    let ran = async {
        docker.start_container(&id, None).await.map_err(|e| format!("start: {e}"))?;
        let options = WaitContainerOptions { condition: "not-running".to_string() };
        let code = match docker.wait_container(&id, Some(options)).next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(format!("wait: {e}")),
            None => return Err("wait: no answer".to_string()),
        };
        let options = LogsOptions { follow: false, stdout: true, stderr: true, timestamps: true, ..Default::default() };
        let mut logs = docker.logs(&id, Some(options));
        let mut bytes = 0u64;
        while let Some(chunk) = logs.next().await {
            bytes += chunk.map_err(|e| format!("logs: {e}"))?.into_bytes().len() as u64;
        }
        let inspected = docker.inspect_container(&id, None).await.map_err(|e| format!("inspect: {e}"))?;
        let code = inspected.state.and_then(|s| s.exit_code).unwrap_or(code);
        Ok((code, bytes))
    }
    .await;
    let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
    docker.remove_container(&id, Some(options)).await.map_err(|e| format!("remove: {e}"))?;
    ran
}

/// `count` containers in a row by [`bollard_one`]; every one must exit 0.
pub async fn bollard_loop(docker: &Docker, job: &Job<'_>, count: usize) -> Result<(), String> {
    for _ in 0..count {
        let (code, _) = bollard_one(docker, job).await?;
        if code != 0 {
            return Err(format!("a floor container exited {code}"));
        }
    }
    Ok(())
}

/// One container whose output is followed through the logs endpoint with timestamps, as
/// chainlink reads it, and counted (not kept): the floor of reading output that way. Returns the
/// bytes seen.
pub async fn bollard_followed(docker: &Docker, job: &Job<'_>) -> Result<u64, String> {
    let created = docker
        .create_container(None::<CreateContainerOptions>, body(job))
        .await
        .map_err(|e| format!("create: {e}"))?;
    let id = created.id;
    let ran = async {
        docker.start_container(&id, None).await.map_err(|e| format!("start: {e}"))?;
        let options = LogsOptions { follow: true, stdout: true, stderr: true, timestamps: true, ..Default::default() };
        let mut logs = docker.logs(&id, Some(options));
        let mut bytes = 0u64;
        while let Some(chunk) = logs.next().await {
            bytes += chunk.map_err(|e| format!("logs: {e}"))?.into_bytes().len() as u64;
        }
        let options = WaitContainerOptions { condition: "not-running".to_string() };
        match docker.wait_container(&id, Some(options)).next().await {
            Some(Ok(_)) => Ok(bytes),
            Some(Err(e)) => Err(format!("wait: {e}")),
            None => Err("wait: no answer".to_string()),
        }
    }
    .await;
    let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
    docker.remove_container(&id, Some(options)).await.map_err(|e| format!("remove: {e}"))?;
    ran
}

/// `docker run --rm` with the flags that give the engine a default chainlink stage's config.
pub fn docker_run_command(job: &Job<'_>) -> Command {
    let mut command = Command::new("docker");
    command
        .arg("run")
        .arg("--rm")
        .args(["--label", &format!("{BENCH_LABEL}=true")])
        .args(["--hostname", "container"])
        .args(["--memory", &MEMORY.to_string(), "--memory-swap", &MEMORY.to_string()])
        .args(["--pids-limit", &PIDS_LIMIT.to_string()])
        .args(["--ulimit", "core=0:0"])
        .args(["--log-driver", "json-file", "--log-opt", &format!("max-size={LOG_MAX_SIZE}"), "--log-opt", "max-file=2"])
        .args(["-v", &format!("{}:/job:rw", job.dir.display())])
        .args(["--entrypoint", &job.argv[0]])
        .arg(job.image)
        .args(&job.argv[1..])
        .stdin(Stdio::null());
    command
}

/// `count` `docker run --rm` in a row, output discarded; every one must exit 0.
pub fn docker_run_loop(job: &Job<'_>, count: usize) -> Result<(), String> {
    for _ in 0..count {
        let status = docker_run_command(job)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("docker run: {e}"))?;
        if !status.success() {
            return Err(format!("docker run ended with {status}"));
        }
    }
    Ok(())
}

/// Removes whatever the floor loops may have left (an interrupted run).
pub async fn remove_leftovers(docker: &Docker) -> usize {
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([("label".to_string(), vec![BENCH_LABEL.to_string()])])),
        ..Default::default()
    };
    let found = docker.list_containers(Some(options)).await.unwrap_or_default();
    let mut removed = 0;
    for id in found.into_iter().filter_map(|c| c.id) {
        let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        if docker.remove_container(&id, Some(options)).await.is_ok() {
            removed += 1;
        }
    }
    removed
}
