//! chainlink runs Docker containers in sequence.
//!
//! A chain is a list of [`Stage`]s; each is a container with its own image, entrypoint,
//! environment, memory cap, CPU set, networking, privilege, hostname and timeout. One fresh
//! directory is mounted at `/job` in every stage of a run, so stages pass files along. The first
//! stage that fails (a non-zero exit, a timeout, an OOM kill) stops the chain; the run returns
//! one [`StageResult`] per stage, skipped stages included, each with the container's inspected
//! `State`, whether the timeout killed it, and its stdout and stderr with the engine's
//! timestamps. Everything a run creates is removed on every path.
//!
//! ```no_run
//! # async fn demo() -> Result<(), chainlink::Error> {
//! use chainlink::{Chain, ChainOptions, Stage};
//! let stages = vec![
//!     Stage::new("busybox").entrypoint(["sh", "-c", "echo hello > /job/greeting"]),
//!     Stage::new("busybox").entrypoint(["cat", "/job/greeting"]),
//! ];
//! let chain = Chain::new(stages, ChainOptions::default()).await?;
//! let results = chain.run(&Default::default()).await?;
//! assert!(results.iter().all(|r| r.success()));
//! # Ok(()) }
//! ```
//!
//! Modules, in the order a stage meets them: [`spec`] (input and validation), [`engine`] (the
//! only code that talks to Docker), [`runner`] (the life of a stage), [`outcome`] (results),
//! [`cleanup`] (removal on every path), [`events`] (what the runner reports while it works).

pub mod blocking;
pub mod cleanup;
pub mod engine;
pub mod error;
pub mod events;
pub mod outcome;
pub mod runner;
pub mod spec;
pub mod tree;
pub mod units;
pub mod workspace;

pub use cleanup::{sweep_dead_runs, SweepFailure, SweepReport};
pub use engine::{CredentialSource, DockerEngine, Engine, EngineError, EngineErrorKind, ImageRef, StreamKind};
pub use error::{Error, ImageFailure};
pub use events::{Event, EventSink, ImageSource};
pub use outcome::{Outcome, Output, StageResult};
pub use runner::{Chain, ChainOptions, RunControl};
pub use spec::{parse_stages, ChainFile, Problem, Problems, PullPolicy, Stage};
pub use tokio_util::sync::CancellationToken;
pub use units::{CpuSet, MemorySize};
