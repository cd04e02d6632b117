//! The Docker Engine API through bollard: connection and version negotiation, the container
//! configuration a stage becomes, and the mapping of bollard's errors onto [`EngineError`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, WaitContainerOptions,
};
use bollard::auth::DockerCredentials;
use bollard::{BollardRequest, Docker};
use futures_util::stream::{BoxStream, StreamExt};

use super::credentials::{CredentialSource, RegistryCredentials, Secret};
use super::endpoint::{self, Endpoint, EndpointError};
use super::reference::ImageRef;
use super::{
    ContainerSpec, ContainerState, Engine, EngineError, EngineErrorKind, EngineInfo, JobMount, LabelledContainer,
    LogChunk, LogsRequest, PullProgress, SharedEngine, StreamKind,
};

/// bollard's per-request timeout, as its `connect_with_host` sets it.
const BOLLARD_TIMEOUT_SECS: u64 = 120;
/// How long the first contact may take before the engine counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A Docker engine reached through its API.
#[derive(Clone)]
pub struct DockerEngine {
    client: Docker,
    endpoint: String,
    credentials: CredentialSource,
}

impl std::fmt::Debug for DockerEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerEngine")
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl DockerEngine {
    /// Connects as the docker CLI does (see [`endpoint::resolve`]): `DOCKER_HOST` (TLS for
    /// `tcp://` when `DOCKER_TLS_VERIFY` is set, files from `DOCKER_CERT_PATH`), else the
    /// context `DOCKER_CONTEXT` names, else `currentContext` in `$DOCKER_CONFIG/config.json`,
    /// else the default socket; then agrees on an API version with the engine (older engines
    /// speak older versions). A missing TLS file, an unknown context or a malformed config is
    /// an [`EngineErrorKind::Unavailable`] error before any request.
    pub async fn connect() -> Result<DockerEngine, EngineError> {
        let endpoint = endpoint::resolve_from_process().map_err(endpoint_error)?;
        Self::connect_endpoint(endpoint).await
    }

    /// Connects to the engine at `endpoint` (`unix:///path`, `tcp://host:port`, `ssh://user@host`,
    /// or a socket path), as `docker -H endpoint` would: `tcp://` uses TLS when
    /// `DOCKER_TLS_VERIFY` is set. The endpoint [`connect`](Self::connect) chose keeps its
    /// context's TLS files when named again (a reconnection).
    pub async fn connect_to(endpoint: &str) -> Result<DockerEngine, EngineError> {
        let endpoint = endpoint::for_host_from_process(endpoint).map_err(endpoint_error)?;
        Self::connect_endpoint(endpoint).await
    }

    async fn connect_endpoint(resolved: Endpoint) -> Result<DockerEngine, EngineError> {
        let client = Self::client_for(&resolved)?;
        let endpoint = resolved.host;
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, client.negotiate_version()).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(unavailable(&endpoint, e)),
            Err(_) => {
                return Err(EngineError::new(
                    EngineErrorKind::Unavailable,
                    format!(
                        "the Docker engine at {endpoint} did not answer within {} s; check that the daemon is \
                         running and not stuck",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                ))
            }
        };
        Ok(DockerEngine { client, endpoint, credentials: CredentialSource::from_env() })
    }

    /// Looks registry credentials up in `source` rather than where the docker CLI would
    /// (`$DOCKER_CONFIG`, `~/.docker`, and helpers on `$PATH`).
    pub fn with_credentials(mut self, source: CredentialSource) -> DockerEngine {
        self.credentials = source;
        self
    }

    /// Where this engine's pulls look for registry credentials.
    pub fn credentials(&self) -> &CredentialSource {
        &self.credentials
    }

    /// The bollard client for a resolved endpoint. bollard's own `connect_with_host` is not
    /// used for `tcp://`: it turns TLS on whenever `DOCKER_TLS_VERIFY` exists, empty or not,
    /// and reads the files itself; here the resolution alone decides.
    fn client_for(resolved: &Endpoint) -> Result<Docker, EngineError> {
        let host = resolved.host.as_str();
        let client = match (&resolved.tls, host) {
            (Some(tls), _) => {
                // Without a client pair, paths that do not exist: bollard's resolver then
                // offers no certificate (an engine that does not ask for one).
                let (cert, key) = match &tls.client {
                    Some(pair) => (pair.cert.clone(), pair.key.clone()),
                    None => (tls.ca.with_file_name("cert.pem"), tls.ca.with_file_name("key.pem")),
                };
                Docker::connect_with_ssl(host, &key, &cert, &tls.ca, BOLLARD_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
            (None, h) if h.starts_with("tcp://") || h.starts_with("http://") => {
                Docker::connect_with_http(h, BOLLARD_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
            (None, h) if h.starts_with("ssh://") => {
                Docker::connect_with_ssh(h, BOLLARD_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION, None)
            }
            (None, h) => Docker::connect_with_host(h),
        };
        client.map(|client| client.with_request_modifier(url_safe_registry_auth)).map_err(|e| unavailable(host, e))
    }

    async fn remove_once(&self, id: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        match self.client.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => match map_error(e) {
                e if e.is_not_found() => Ok(()),
                // Already being removed by another layer of cleanup.
                EngineError { kind: EngineErrorKind::Refused, message, .. } if message.contains("already in progress") => Ok(()),
                e => Err(e),
            },
        }
    }

    /// Removes everything in a stopped container's writable layer, where it is a directory on
    /// this host we may write; whether it could.
    async fn empty_writable_layer(&self, id: &str) -> bool {
        let Ok(inspected) = self.client.inspect_container(id, None).await else { return false };
        let Some(upper) = inspected.graph_driver.and_then(|mut g| g.data.remove("UpperDir")) else { return false };
        tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&upper) else { return false };
            entries.flatten().all(|entry| crate::tree::remove_tree(&entry.path()).is_complete())
        })
        .await
        .unwrap_or(false)
    }

    /// The engine's API version agreed at connection (`1.41`).
    pub fn api_version(&self) -> String {
        self.client.client_version().to_string()
    }

    fn container_body(spec: &ContainerSpec<'_>) -> ContainerCreateBody {
        let stage = spec.stage;
        let memory = i64::try_from(stage.memory.bytes()).unwrap_or(i64::MAX);
        let JobMount::HostDir(dir) = &spec.job;
        let mut tmpfs: HashMap<String, String> =
            stage.tmpfs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if stage.read_only && !tmpfs.contains_key("/tmp") {
            tmpfs.insert("/tmp".to_string(), "rw,nosuid,nodev,size=64m".to_string());
        }
        let mut security_opt = Vec::new();
        if stage.no_new_privileges {
            security_opt.push("no-new-privileges".to_string());
        }
        // The engine's own copy of the output is bounded too, so a stage that prints for ever
        // cannot fill the daemon's disk: two files of at most the kept size plus slack. The
        // `local` driver stores the bytes as written (`json-file` turns invalid UTF-8 into
        // U+FFFD); rotated files are left uncompressed to spare the engine's CPU.
        let log_max = (stage.output_limit.saturating_mul(2)).max(1 << 20);
        let host_config = HostConfig {
            binds: Some(vec![format!("{}:/job:rw", dir.display())]),
            memory: Some(memory),
            memory_swap: Some(memory),
            cpuset_cpus: stage.cpuset_cpus.as_ref().map(|c| c.as_str().to_string()),
            nano_cpus: stage.cpus.map(|c| (c * 1e9).round() as i64),
            network_mode: (!stage.networking).then(|| "none".to_string()),
            privileged: Some(stage.privileged),
            pids_limit: stage.pids_limit,
            readonly_rootfs: Some(stage.read_only),
            cap_add: (!stage.cap_add.is_empty()).then(|| stage.cap_add.clone()),
            cap_drop: (!stage.cap_drop.is_empty()).then(|| stage.cap_drop.clone()),
            security_opt: (!security_opt.is_empty()).then_some(security_opt),
            ulimits: (!stage.ulimits.is_empty()).then(|| {
                stage
                    .ulimits
                    .iter()
                    .map(|(name, l)| ResourcesUlimits { name: Some(name.clone()), soft: Some(l.soft), hard: Some(l.hard) })
                    .collect()
            }),
            tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
            runtime: stage.runtime.clone(),
            log_config: Some(HostConfigLogConfig {
                typ: Some("local".to_string()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), log_max.to_string()),
                    ("max-file".to_string(), "2".to_string()),
                    ("compress".to_string(), "false".to_string()),
                ])),
            }),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(stage.image.clone()),
            hostname: Some(stage.hostname.clone()),
            entrypoint: spec.entrypoint_override.clone().or_else(|| stage.entrypoint.clone()),
            // An explicit entrypoint replaces the image's command too, as `docker run
            // --entrypoint` does; otherwise the image's own command stays.
            cmd: if spec.entrypoint_override.is_some() || stage.entrypoint.is_some() { Some(Vec::new()) } else { None },
            user: spec.user_override.clone().or_else(|| stage.user.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            tty: Some(stage.tty),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            open_stdin: Some(false),
            network_disabled: Some(!stage.networking),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}

/// The engine decodes `X-Registry-Auth` and `X-Registry-Config` as URL-safe base64 and, for a
/// pull, silently drops a header it cannot decode; bollard 0.21 encodes them in the standard
/// alphabet (fussybeaver/bollard#169, moby/moby#33434). Credentials whose encoding holds a `+`
/// or a `/` (many passwords with symbols) would be sent as no credentials at all, so the header
/// is translated to the URL-safe alphabet on its way out.
fn url_safe_registry_auth(mut request: BollardRequest) -> BollardRequest {
    for name in ["x-registry-auth", "x-registry-config"] {
        let fixed = request.headers().get(name).and_then(|v| v.to_str().ok()).and_then(to_url_safe_base64);
        if let Some(fixed) = fixed {
            if let Ok(value) = fixed.try_into() {
                request.headers_mut().insert(name, value);
            }
        }
    }
    request
}

/// `Some(translated)` when `value` holds characters of the standard alphabet only.
fn to_url_safe_base64(value: &str) -> Option<String> {
    value.contains(['+', '/']).then(|| value.replace('+', "-").replace('/', "_"))
}

/// What bollard sends for credentials we found.
fn docker_credentials(creds: &RegistryCredentials) -> DockerCredentials {
    let (password, identitytoken) = match &creds.secret {
        Secret::Password(p) => (Some(p.clone()), None),
        Secret::IdentityToken(t) => (None, Some(t.clone())),
    };
    DockerCredentials {
        username: creds.username.clone(),
        password,
        identitytoken,
        serveraddress: Some(creds.registry.clone()),
        ..Default::default()
    }
}

/// Removes every copy of the secret from a message, whatever produced it.
fn redact(message: String, creds: Option<&RegistryCredentials>) -> String {
    match creds.map(|c| c.secret.expose()).filter(|s| !s.is_empty()) {
        Some(secret) if message.contains(secret) => message.replace(secret, "<redacted>"),
        _ => message,
    }
}

/// An endpoint that cannot be decided (a missing TLS file, an unknown context, a malformed
/// config): the engine is unavailable, and nothing was sent to it.
fn endpoint_error(error: EndpointError) -> EngineError {
    EngineError { kind: EngineErrorKind::Unavailable, message: error.to_string(), source: Some(Box::new(error)) }
}

fn unavailable(endpoint: &str, error: BollardError) -> EngineError {
    let mut mapped = map_error(error);
    mapped.kind = EngineErrorKind::Unavailable;
    mapped.message = format!(
        "cannot reach the Docker engine at {endpoint} ({}); check that the daemon is running and \
         that this user may use its socket (root, or a member of the docker group), or set DOCKER_HOST",
        mapped.message
    );
    mapped
}

/// Whether the engine's refusal to start a container is about the stage's program: the runtime
/// could not exec it (`exec: "/job/a.out": stat /job/a.out: no such file or directory`,
/// `permission denied`, ...), or the image has no such user or group. Refusals of the
/// container's configuration (a mount, capabilities, rlimits) are the engine's and stay errors.
/// The engine says which only in words; these are moby's and runc's since Docker 1.13.
fn cannot_start(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    // runc's `exec: "<path>": stat <path>: ...` is always about the path the stage gave (or
    // made: a symlink loop, a name too long).
    let exec_failed = message.contains("exec: \"")
        && (message.contains("\": stat ")
            || ["no such file or directory", "executable file not found", "permission denied", "not a directory", "exec format error"]
                .iter()
                .any(|why| message.contains(why)));
    let no_such_identity = ["unable to find user", "unable to find group", "no matching entries in passwd file", "no matching entries in group file"]
        .iter()
        .any(|why| message.contains(why));
    exec_failed || no_such_identity
}

fn map_error(error: BollardError) -> EngineError {
    let kind = match &error {
        BollardError::DockerResponseServerError { status_code: 404, .. } => EngineErrorKind::NotFound,
        BollardError::DockerResponseServerError { .. } => EngineErrorKind::Refused,
        BollardError::DockerStreamError { .. } => EngineErrorKind::Refused,
        BollardError::RequestTimeoutError => EngineErrorKind::Timeout,
        BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::SocketNotFoundError(_)
        | BollardError::HyperLegacyError { .. } => EngineErrorKind::Unavailable,
        _ => EngineErrorKind::Other,
    };
    let message = match &error {
        BollardError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        BollardError::DockerStreamError { error } => error.trim().to_string(),
        BollardError::SocketNotFoundError(path) => format!("no socket at {path}"),
        other => other.to_string(),
    };
    EngineError { kind, message, source: Some(Box::new(error)) }
}

#[async_trait]
impl Engine for DockerEngine {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn local_images(&self) -> Result<Vec<String>, EngineError> {
        let mut images = self.client.list_images(None::<bollard::query_parameters::ListImagesOptions>).await.map_err(map_error)?;
        images.sort_by_key(|image| std::cmp::Reverse(image.created));
        Ok(images
            .into_iter()
            .flat_map(|image| image.repo_tags)
            .filter(|tag| tag != "<none>:<none>")
            .collect())
    }

    async fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        match self.client.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = map_error(e);
                if e.is_not_found() {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn pull(
        &self,
        image: &str,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<(), EngineError> {
        let reference = ImageRef::parse(image).map_err(|e| EngineError::new(EngineErrorKind::Refused, e.to_string()))?;
        let registry = reference.registry().to_string();
        let source = self.credentials.clone();
        let key = reference.credentials_key();
        let creds = match tokio::task::spawn_blocking(move || source.lookup(&key)).await {
            Ok(Ok(creds)) => creds,
            Ok(Err(e)) => {
                return Err(EngineError::new(EngineErrorKind::Refused, format!("cannot pull {reference}: {e}")));
            }
            Err(e) => {
                return Err(EngineError::new(EngineErrorKind::Other, format!("credential lookup for {reference} failed: {e}")));
            }
        };
        // Said on every failure, so a rejected or missing login is plain to see.
        let sent = match &creds {
            Some(creds) => format!("sent {}", creds.describe()),
            None => match self.credentials.config_file() {
                Some(file) => format!("no credentials for {} in {}: anonymous pull", reference.credentials_key(), file.display()),
                None => "no docker configuration directory: anonymous pull".to_string(),
            },
        };
        let failed = |error: EngineError| {
            let message = format!("pulling {reference} from registry {registry} failed: {}; {sent}", error.message);
            EngineError { kind: error.kind, message: redact(message, creds.as_ref()), source: None }
        };
        let options = CreateImageOptions { from_image: Some(reference.pull_reference()), ..Default::default() };
        let mut stream = self.client.create_image(Some(options), None, creds.as_ref().map(docker_credentials));
        // Per-layer progress, summed: the engine reports each layer on its own.
        let mut layers: HashMap<String, (u64, u64)> = HashMap::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| failed(map_error(e)))?;
            if let (Some(id), Some(detail)) = (info.id, info.progress_detail) {
                let entry = layers.entry(id).or_default();
                if let Some(current) = detail.current {
                    entry.0 = current.max(0) as u64;
                }
                if let Some(total) = detail.total {
                    entry.1 = total.max(0) as u64;
                }
                let (current, total) = layers.values().fold((0, 0), |(c, t), (lc, lt)| (c + lc, t + lt));
                progress(PullProgress { current, total });
            }
        }
        Ok(())
    }

    async fn create(&self, spec: &ContainerSpec<'_>) -> Result<String, EngineError> {
        let options = CreateContainerOptions { name: Some(spec.name.clone()), ..Default::default() };
        let response = self
            .client
            .create_container(Some(options), Self::container_body(spec))
            .await
            .map_err(map_error)?;
        Ok(response.id)
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.client.start_container(id, None).await.map_err(map_error).map_err(|mut e| {
            if e.kind == EngineErrorKind::Refused && cannot_start(&e.message) {
                e.kind = EngineErrorKind::CannotStart;
            }
            e
        })
    }

    async fn wait(&self, id: &str) -> Result<i64, EngineError> {
        let options = WaitContainerOptions { condition: "not-running".to_string() };
        let mut stream = self.client.wait_container(id, Some(options));
        match stream.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports a non-zero exit as an error; for us it is an outcome.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(map_error(e)),
            None => Err(EngineError::new(EngineErrorKind::Other, "the engine closed the wait without an exit code")),
        }
    }

    async fn kill(&self, id: &str) -> Result<(), EngineError> {
        let options = KillContainerOptions { signal: "SIGKILL".to_string() };
        match self.client.kill_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) => match map_error(e) {
                // 409: not running (already exited); 404: already gone. Both are what we wanted.
                e if e.is_not_found() => Ok(()),
                EngineError { kind: EngineErrorKind::Refused, message, .. } if message.contains("is not running") => Ok(()),
                e => Err(e),
            },
        }
    }

    fn logs(&self, id: &str, request: LogsRequest) -> BoxStream<'static, Result<LogChunk, EngineError>> {
        let LogsRequest { follow, since_unix_secs, stdout, stderr, tail } = request;
        let since = i32::try_from(since_unix_secs).unwrap_or(0);
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptions { follow, since, stdout, stderr, tail, timestamps: true, ..Default::default() };
        self.client
            .logs(id, Some(options))
            .filter_map(|item| async move {
                match item {
                    Ok(bollard::container::LogOutput::StdOut { message })
                    | Ok(bollard::container::LogOutput::Console { message }) => {
                        Some(Ok(LogChunk { stream: StreamKind::Stdout, bytes: message }))
                    }
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        Some(Ok(LogChunk { stream: StreamKind::Stderr, bytes: message }))
                    }
                    Ok(bollard::container::LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(map_error(e))),
                }
            })
            .boxed()
    }

    async fn inspect_state(&self, id: &str) -> Result<ContainerState, EngineError> {
        let response = self.client.inspect_container(id, None).await.map_err(map_error)?;
        let raw = match response.state.map(serde_json::to_value) {
            Some(Ok(serde_json::Value::Object(map))) => map,
            _ => return Err(EngineError::new(EngineErrorKind::Other, "the engine's inspection holds no State")),
        };
        Ok(ContainerState { raw })
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        match self.remove_once(id).await {
            // The engine removes a container's filesystem with a recursive walk that a tree a
            // few thousand directories deep, made by the stage in its own root filesystem,
            // defeats ("too many open files"): the container then stays, half removed, for
            // good. Where the layer is a directory we may remove (a root runner on the
            // engine's host), empty it with our own walk and ask again.
            Err(e) if e.message.contains("failed to remove root filesystem") => {
                if self.empty_writable_layer(id).await {
                    self.remove_once(id).await
                } else {
                    Err(e)
                }
            }
            other => other,
        }
    }

    async fn list_labelled(&self, label: &str) -> Result<Vec<LabelledContainer>, EngineError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), vec![label.to_string()])])),
            ..Default::default()
        };
        let found = self.client.list_containers(Some(options)).await.map_err(map_error)?;
        Ok(found
            .into_iter()
            .filter_map(|c| {
                Some(LabelledContainer { id: c.id?, labels: c.labels.unwrap_or_default().into_iter().collect(), image: c.image })
            })
            .collect())
    }

    async fn reconnect(&self) -> Result<SharedEngine, EngineError> {
        Ok(Arc::new(DockerEngine::connect_to(&self.endpoint).await?.with_credentials(self.credentials.clone())))
    }

    async fn container_disk_usage(&self, id: &str) -> Result<Option<u64>, EngineError> {
        // Where the layer is a directory on this host that we may read (overlay2,
        // fuse-overlayfs: `UpperDir`, when the runner is root), a walk of just what the
        // container wrote takes a millisecond. `size=true` instead makes the engine diff the
        // container's whole filesystem against its image on every call (1.6 s of the engine's
        // CPU for an image of 20,000 files on fuse-overlayfs): only the fallback.
        let inspected = self.client.inspect_container(id, None).await.map_err(map_error)?;
        // /etc/hosts, /etc/resolv.conf and /etc/hostname are writable files of the engine's
        // own (bind-mounted from its container directory), outside the layer: a stage could
        // grow them without end.
        let engine_files: Vec<String> =
            [&inspected.hosts_path, &inspected.resolv_conf_path, &inspected.hostname_path].into_iter().flatten().cloned().collect();
        let files = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::MetadataExt;
            engine_files.iter().filter_map(|f| std::fs::symlink_metadata(f).ok()).map(|m| m.blocks() * 512).sum::<u64>()
        })
        .await
        .unwrap_or(0);
        // Volumes the engine made for the image's `VOLUME` lines are writable outside the layer
        // (even with a read-only root): their directories are walked too.
        let volumes: Vec<std::path::PathBuf> = inspected
            .mounts
            .iter()
            .flatten()
            .filter(|m| m.typ.as_deref() == Some("volume"))
            .filter_map(|m| m.source.clone())
            .map(std::path::PathBuf::from)
            .collect();
        let upper = inspected.graph_driver.and_then(|mut g| g.data.remove("UpperDir")).map(std::path::PathBuf::from);
        // Whatever could not be read in full (a runner that is not root) is measured by the
        // engine instead, or, for volumes, counted as unmeasurable by the caller's rules.
        let walked = tokio::task::spawn_blocking(move || {
            let walk = |path: &std::path::Path| crate::tree::measure(path).ok().filter(|u| u.skipped == 0).map(|u| u.bytes);
            let volumes: Option<u64> = volumes.iter().map(|v| walk(v)).sum();
            (upper.as_deref().and_then(walk), volumes)
        })
        .await
        .unwrap_or((None, None));
        let volumes = match walked.1 {
            Some(bytes) => bytes,
            None => {
                return Err(EngineError::new(
                    EngineErrorKind::Other,
                    "failed to measure the container's volumes: their directories cannot be read by this user",
                ))
            }
        };
        if let Some(layer) = walked.0 {
            return Ok(Some(layer + files + volumes));
        }
        let options = bollard::query_parameters::InspectContainerOptions { size: true };
        let response = self.client.inspect_container(id, Some(options)).await.map_err(map_error)?;
        Ok(response.size_rw.map(|bytes| bytes.max(0) as u64 + files + volumes))
    }

    async fn info(&self) -> Result<EngineInfo, EngineError> {
        let info = self.client.info().await.map_err(map_error)?;
        let mut runtimes: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
        runtimes.sort();
        Ok(EngineInfo {
            cpus: info.ncpu.and_then(|n| u32::try_from(n).ok()).unwrap_or(1),
            mem_total: info.mem_total.and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
            runtimes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::engine::credentials::base64_encode;

    #[test]
    fn pulls_name_a_tag_or_a_digest() {
        let pull = |image: &str| ImageRef::parse(image).unwrap().pull_reference();
        assert_eq!(pull("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(pull("localhost:5000/team/img"), "localhost:5000/team/img:latest");
        assert_eq!(pull("localhost:5000/team/img:v1"), "localhost:5000/team/img:v1");
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(pull(&format!("alpine@{digest}")), format!("docker.io/library/alpine@{digest}"));
    }

    /// The registry tests' password, as bollard would encode it, holds a `+`: without the
    /// translation the engine would drop those credentials (checked here so the integration
    /// test keeps exercising the case).
    #[test]
    fn registry_auth_headers_are_translated_to_url_safe_base64() {
        let creds = RegistryCredentials {
            registry: "127.0.0.1:5000".into(),
            username: Some("chainlink".into()),
            secret: Secret::Password("p?w>~~chainlink".into()),
            origin: "test".into(),
        };
        let standard = base64_encode(serde_json::to_string(&docker_credentials(&creds)).unwrap().as_bytes());
        assert!(standard.contains(['+', '/']), "{standard}");

        let mut request = BollardRequest::new(bollard::body_full(bytes::Bytes::new()));
        request.headers_mut().insert("x-registry-auth", standard.as_str().try_into().unwrap());
        let request = url_safe_registry_auth(request);
        let sent = request.headers().get("x-registry-auth").unwrap().to_str().unwrap();
        assert!(!sent.contains(['+', '/']), "{sent}");
        assert_eq!(sent, standard.replace('+', "-").replace('/', "_"));

        // Untouched: no header, or nothing to translate.
        let request = url_safe_registry_auth(BollardRequest::new(bollard::body_full(bytes::Bytes::new())));
        assert!(request.headers().get("x-registry-auth").is_none());
        assert_eq!(to_url_safe_base64("abc="), None);
    }

    #[test]
    fn start_refusals_about_the_program_or_its_user_are_the_stages() {
        for stage in [
            r#"failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: "/job/a.out": stat /job/a.out: no such file or directory: unknown"#,
            r#"OCI runtime create failed: container_linux.go:380: starting container process caused: exec: "nope": executable file not found in $PATH: unknown"#,
            r#"failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: "/etc/passwd": permission denied: unknown"#,
            r#"failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: "/job/run": stat /job/run: too many levels of symbolic links: unknown"#,
            "unable to find user nosuchuser: no matching entries in passwd file",
        ] {
            assert!(cannot_start(stage), "{stage}");
        }
        for engine in [
            r#"failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error mounting "tmpfs" to rootfs at "/etc/passwd": mount tmpfs:/etc/passwd (via /proc/self/fd/6), flags: 0xe: not a directory: unknown"#,
            "failed to create shim task: OCI runtime create failed: unable to apply caps: operation not permitted",
            "error setting rlimit type 7: operation not permitted",
        ] {
            assert!(!cannot_start(engine), "{engine}");
        }
    }

    /// An endpoint that cannot be decided is the engine being unavailable, with the endpoint
    /// module's message (naming the file or context) as it is.
    #[test]
    fn endpoint_errors_are_unavailable_and_keep_their_message() {
        let error = endpoint_error(EndpointError::ContextSkipsTlsVerify { name: "lax".into() });
        assert_eq!(error.kind, EngineErrorKind::Unavailable);
        assert!(error.message.starts_with("failed to use the docker context \"lax\""), "{}", error.message);
        assert!(error.source.is_some());
    }

    /// A TLS endpoint gets bollard's TLS client and a `tcp://` endpoint without TLS its plain
    /// HTTP one (bollard shows which only in its `Debug`); an engine that does not answer there
    /// is unavailable, named by its endpoint.
    #[tokio::test]
    async fn tls_and_plain_tcp_endpoints_connect_through_their_clients() {
        let certs = tempfile::tempdir().unwrap();
        std::fs::write(certs.path().join("ca.pem"), "").unwrap();
        // A port nobody listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let host = format!("tcp://127.0.0.1:{port}");
        let tls = Endpoint {
            host: host.clone(),
            tls: Some(endpoint::TlsFiles { ca: certs.path().join("ca.pem"), client: None }),
            origin: endpoint::Origin::Host,
        };
        assert!(format!("{:?}", DockerEngine::client_for(&tls).unwrap()).contains("client_type: SSL"));
        let plain = Endpoint { tls: None, ..tls.clone() };
        assert!(format!("{:?}", DockerEngine::client_for(&plain).unwrap()).contains("client_type: Http"));
        let error = DockerEngine::connect_endpoint(tls).await.unwrap_err();
        assert_eq!(error.kind, EngineErrorKind::Unavailable, "{error:?}");
        assert!(error.message.contains(&host), "{}", error.message);
    }

    #[test]
    fn pull_messages_never_hold_the_secret() {
        let creds = RegistryCredentials {
            registry: "r".into(),
            username: Some("u".into()),
            secret: Secret::Password("hunter2".into()),
            origin: "o".into(),
        };
        assert_eq!(redact("bad hunter2 here".into(), Some(&creds)), "bad <redacted> here");
        assert_eq!(redact("fine".into(), Some(&creds)), "fine");
        assert_eq!(redact("hunter2".into(), None), "hunter2");
    }
}
