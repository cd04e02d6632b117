//! The one place that talks to a container engine.
//!
//! The runner sees only the [`Engine`] trait and the plain types of this module; the Docker
//! implementation in [`docker`] keeps every bollard type to itself. A second backend (a remote
//! engine without host bind mounts, Kubernetes) implements the same trait, and a fake engine for
//! unit tests of pure runner logic can too.

pub mod credentials;
pub mod docker;
pub mod endpoint;
// The fake is for the crate's own unit tests only: it stays out of the public API and builds.
#[cfg(test)]
pub(crate) mod fake;
pub mod reference;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::spec::Stage;

pub use credentials::{CredentialError, CredentialSource, RegistryCredentials, Secret};
pub use docker::DockerEngine;
pub use reference::{ImageRef, ReferenceError};

/// A shared handle on an engine.
pub type SharedEngine = Arc<dyn Engine>;

/// Where a run's shared `/job` directory comes from when a container is created.
///
/// Today it is a directory on the engine's host, bind-mounted; a remote backend would use a
/// volume instead, which is why the runner never builds the mount itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobMount {
    HostDir(PathBuf),
}

/// Everything the engine needs to create one container.
#[derive(Debug, Clone)]
pub struct ContainerSpec<'a> {
    pub name: String,
    pub stage: &'a Stage,
    /// `KEY=VALUE` pairs: the run's base environment with the stage's laid over it.
    pub env: Vec<String>,
    pub job: JobMount,
    pub labels: BTreeMap<String, String>,
    /// Overrides the stage's own user and entrypoint (used by the cleanup container).
    pub user_override: Option<String>,
    pub entrypoint_override: Option<Vec<String>>,
}

/// Which of a container's output streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

/// One chunk of a container's output, as `docker logs --timestamps` prints it (a line, or a
/// part of a long line, prefixed with the engine's RFC 3339 timestamp).
#[derive(Debug, Clone)]
pub struct LogChunk {
    pub stream: StreamKind,
    pub bytes: Bytes,
}

/// Which of a container's output to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogsRequest {
    /// Keep reading until the container stops; else only what the engine holds now.
    pub follow: bool,
    /// From this second on (0: from the start).
    pub since_unix_secs: i64,
    pub stdout: bool,
    pub stderr: bool,
    /// Only the last lines, this many; all when `None`.
    pub tail: Option<u32>,
}

/// A container's `State` as the engine reports it on inspection, with the engine's own keys.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerState {
    pub raw: serde_json::Map<String, serde_json::Value>,
}

impl ContainerState {
    pub fn exit_code(&self) -> Option<i64> {
        self.raw.get("ExitCode").and_then(|v| v.as_i64())
    }

    pub fn oom_killed(&self) -> bool {
        self.raw.get("OOMKilled").and_then(|v| v.as_bool()).unwrap_or(false)
    }
}

/// Progress of one image pull, as the engine reports it (summed over the image's layers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PullProgress {
    pub current: u64,
    pub total: u64,
}

/// A container the engine holds with our labels on it.
#[derive(Debug, Clone)]
pub struct LabelledContainer {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    /// The image it was created from, as the engine names it.
    pub image: Option<String>,
}

/// What the engine's host offers, for the checks of a chain against it (see
/// [`crate::spec::ENGINE_CHECKS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// CPUs the engine may use.
    pub cpus: u32,
    /// The host's memory in bytes.
    pub mem_total: u64,
    /// The OCI runtimes the engine knows by name (`runc`, `runsc`, ...).
    pub runtimes: Vec<String>,
}

/// What kind of failure an engine call met; the runner decides on this, never on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineErrorKind {
    /// The engine could not be reached (socket missing, refused, permission, connection lost).
    Unavailable,
    /// The object (container, image) does not exist.
    NotFound,
    /// The engine did not answer in time.
    Timeout,
    /// The engine refused the request (bad parameter, conflict, runtime failure).
    Refused,
    /// The container exists but its program could not be started: not found, not executable,
    /// or run as a user or group the image does not have. The stage's failure, not the
    /// engine's.
    CannotStart,
    /// Anything else (malformed answers and the like).
    Other,
}

/// A failure of one engine call, with the engine's own message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub kind: EngineErrorKind,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl EngineError {
    pub fn new(kind: EngineErrorKind, message: impl Into<String>) -> Self {
        EngineError { kind, message: message.into(), source: None }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == EngineErrorKind::NotFound
    }
}

/// The operations the runner needs from a container engine.
///
/// Every call is safe to repeat: killing a container that is not running and removing one that
/// is gone succeed, so cleanup can be run from several layers without coordination.
#[async_trait]
pub trait Engine: Send + Sync + fmt::Debug + 'static {
    /// Where the engine is (`unix:///var/run/docker.sock`), for messages.
    fn endpoint(&self) -> &str;
    /// Names (`repo:tag`) of the images the engine holds, newest first: candidates for a
    /// root cleanup container when nothing better is known.
    async fn local_images(&self) -> Result<Vec<String>, EngineError>;
    async fn image_present(&self, image: &str) -> Result<bool, EngineError>;
    async fn pull(
        &self,
        image: &str,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<(), EngineError>;
    /// Creates a container and returns its id.
    async fn create(&self, spec: &ContainerSpec<'_>) -> Result<String, EngineError>;
    async fn start(&self, id: &str) -> Result<(), EngineError>;
    /// Waits for the container to stop and returns its exit code (any code: an outcome).
    async fn wait(&self, id: &str) -> Result<i64, EngineError>;
    async fn kill(&self, id: &str) -> Result<(), EngineError>;
    /// The container's output as `request` asks.
    fn logs(&self, id: &str, request: LogsRequest) -> BoxStream<'static, Result<LogChunk, EngineError>>;
    async fn inspect_state(&self, id: &str) -> Result<ContainerState, EngineError>;
    /// Removes the container, killing it first if it runs; a missing container is fine.
    async fn remove(&self, id: &str) -> Result<(), EngineError>;
    /// Containers that carry `label` (a `key` or `key=value` filter), running or not.
    async fn list_labelled(&self, label: &str) -> Result<Vec<LabelledContainer>, EngineError>;
    /// A new connection to the same engine, for cleanup from a thread of its own when the
    /// caller's runtime cannot be used (a dropped future).
    async fn reconnect(&self) -> Result<SharedEngine, EngineError>;
    /// Bytes the container holds on the engine's disk outside `/job`: its writable layer (its
    /// root filesystem outside mounts and tmpfs), the volumes the engine made for the image's
    /// `VOLUME` lines, and the engine's own files of it (`/etc/hosts` and the like); measured
    /// where the engine keeps them when we can read them there, else as the engine reports the
    /// layer; `None` when neither is possible.
    async fn container_disk_usage(&self, id: &str) -> Result<Option<u64>, EngineError>;
    /// The host's CPUs, memory and runtimes, read when a chain is checked against the engine.
    async fn info(&self) -> Result<EngineInfo, EngineError>;
}
