//! The engine's floor: the same containers chainlink makes, by the plainest direct loops.
//!
//! The containers are the same because their configuration is chainlink's own, read back from
//! the engine: [`Template::probe`] starts a one-stage chain, inspects the container it made
//! and cancels the run. The floor loops then create containers from that configuration (only
//! the entrypoint, the `/job` bind and the labels changed), and `docker run` gets the
//! equivalent flags, so the engine does the same work for every contender (log driver and its
//! options, memory without swap, pids limit, ulimits, bridge networking, hostname).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use chainlink::{CancellationToken, Chain, ChainOptions, PullPolicy, RunControl, Stage};
use futures_util::StreamExt;

/// Every container the floor loops make carries this label (`docker ps -a --filter label=...`).
pub const BENCH_LABEL: &str = "org.chainlink.bench";

/// The configuration of a default chainlink stage's container, as the engine holds it.
#[derive(Debug, Clone)]
pub struct Template {
    body: ContainerCreateBody,
}

impl Template {
    /// Runs a one-stage chain (`sleep`) of `image` under `workdir`, inspects its container and
    /// cancels the run.
    pub async fn probe(docker: &Docker, image: &str, workdir: &Path) -> Result<Template, String> {
        let options = ChainOptions::default().workdir(workdir).pull(PullPolicy::Never);
        let chain = Chain::new(vec![Stage::new(image).entrypoint(["sleep", "30"])], options)
            .await
            .map_err(|e| format!("probe chain: {e}"))?;
        let cancel = CancellationToken::new();
        let control = RunControl { cancel: cancel.clone(), events: None };
        let run = tokio::spawn(async move { chain.run_with(&BTreeMap::new(), control).await });
        let found = Self::find(docker).await;
        cancel.cancel();
        let ran = run.await;
        let inspected = found.map_err(|e| format!("{e} (the probe run ended with {ran:?})"))?;
        let config = inspected.config.ok_or("probe: no Config")?;
        let host_config = inspected.host_config.ok_or("probe: no HostConfig")?;
        let body = ContainerCreateBody {
            hostname: config.hostname,
            domainname: config.domainname,
            user: config.user,
            attach_stdin: config.attach_stdin,
            attach_stdout: config.attach_stdout,
            attach_stderr: config.attach_stderr,
            tty: config.tty,
            open_stdin: config.open_stdin,
            stdin_once: config.stdin_once,
            env: config.env,
            image: config.image,
            working_dir: config.working_dir,
            network_disabled: config.network_disabled,
            stop_signal: config.stop_signal,
            host_config: Some(host_config),
            ..Default::default()
        };
        Ok(Template { body })
    }

    async fn find(docker: &Docker) -> Result<bollard::models::ContainerInspectResponse, String> {
        let prefix = format!("chainlink-{}-", std::process::id());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let options = ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([
                    ("label".to_string(), vec!["org.chainlink.managed".to_string()]),
                    ("name".to_string(), vec![prefix.clone()]),
                ])),
                ..Default::default()
            };
            let listed = docker.list_containers(Some(options)).await.map_err(|e| format!("probe: {e}"))?;
            for id in listed.into_iter().filter_map(|c| c.id) {
                // A container being removed (an earlier run's) may be listed and gone.
                if let Ok(inspected) = docker.inspect_container(&id, None).await {
                    return Ok(inspected);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err("probe: the chain's container never showed up".to_string())
    }

    fn host_config(&self) -> &HostConfig {
        self.body.host_config.as_ref().expect("probed with a HostConfig")
    }

    /// What the engine's log driver is and its options (`json-file {max-file: 2, ...}`).
    pub fn log_driver(&self) -> String {
        let log = self.host_config().log_config.clone().unwrap_or_default();
        let options: BTreeMap<_, _> = log.config.unwrap_or_default().into_iter().collect();
        format!("{} {options:?}", log.typ.unwrap_or_default())
    }

    fn body(&self, job: &Job<'_>) -> ContainerCreateBody {
        let mut body = self.body.clone();
        body.entrypoint = Some(job.argv.to_vec());
        body.cmd = Some(Vec::new());
        body.labels = Some(HashMap::from([(BENCH_LABEL.to_string(), "true".to_string())]));
        let host = body.host_config.as_mut().expect("probed with a HostConfig");
        host.binds = Some(vec![format!("{}:/job:rw", job.dir.display())]);
        body
    }

    /// `docker run --rm` flags for the same configuration (those a default stage sets).
    fn docker_run_flags(&self) -> Vec<String> {
        let host = self.host_config();
        let mut flags: Vec<String> = Vec::new();
        let mut flag = |name: &str, value: String| {
            flags.push(name.to_string());
            flags.push(value);
        };
        if let Some(hostname) = &self.body.hostname {
            flag("--hostname", hostname.clone());
        }
        if let Some(memory) = host.memory.filter(|m| *m > 0) {
            flag("--memory", memory.to_string());
        }
        if let Some(swap) = host.memory_swap.filter(|m| *m != 0) {
            flag("--memory-swap", swap.to_string());
        }
        if let Some(pids) = host.pids_limit.filter(|p| *p > 0) {
            flag("--pids-limit", pids.to_string());
        }
        for u in host.ulimits.iter().flatten() {
            if let (Some(name), Some(soft), Some(hard)) = (&u.name, u.soft, u.hard) {
                flag("--ulimit", format!("{name}={soft}:{hard}"));
            }
        }
        if let Some(mode) = host.network_mode.as_ref().filter(|m| m.as_str() != "default") {
            flag("--network", mode.clone());
        }
        if let Some(log) = &host.log_config {
            if let Some(typ) = &log.typ {
                flag("--log-driver", typ.clone());
            }
            let options: BTreeMap<_, _> = log.config.clone().unwrap_or_default().into_iter().collect();
            for (k, v) in options {
                flag("--log-opt", format!("{k}={v}"));
            }
        }
        flags
    }
}

/// What one container is: the argv that replaces the image's entrypoint and command, and the
/// host directory mounted at `/job`.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    pub template: &'a Template,
    pub argv: &'a [String],
    pub dir: &'a Path,
}

/// One container by the plainest loop: create, start, wait, read its logs, inspect, remove, one
/// request after the other. Returns the exit code and the number of log bytes read.
pub async fn bollard_one(docker: &Docker, job: &Job<'_>) -> Result<(i64, u64), String> {
    let created = docker
        .create_container(None::<CreateContainerOptions>, job.template.body(job))
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
        .create_container(None::<CreateContainerOptions>, job.template.body(job))
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

/// `docker run --rm` of the same configuration (see [`Template::docker_run_flags`]).
pub fn docker_run_command(job: &Job<'_>) -> Command {
    let mut command = Command::new("docker");
    command
        .arg("run")
        .arg("--rm")
        .args(["--label", &format!("{BENCH_LABEL}=true")])
        .args(job.template.docker_run_flags())
        .args(["-v", &format!("{}:/job:rw", job.dir.display())])
        .args(["--entrypoint", &job.argv[0]])
        .arg(job.template.body.image.as_deref().unwrap_or_default())
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
