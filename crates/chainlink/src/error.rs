//! The library's errors. A stage that fails is not one of them: see [`crate::Outcome`].

use std::path::PathBuf;

use crate::cleanup::CleanupError;
use crate::engine::EngineError;
use crate::outcome::StageResult;
use crate::spec::Problems;

/// An image the chain needs that could be neither pulled nor found on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFailure {
    pub image: String,
    /// Why the pull failed (or why it was not tried, with pull policy `never`).
    pub reason: String,
}

/// Why a chain could not be built or run to the end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is not a valid chain; every problem is listed.
    #[error("invalid chain: {0}")]
    Invalid(#[from] Problems),

    /// The engine could not be reached at all.
    #[error("failed to connect to the Docker engine: {0}")]
    EngineUnavailable(#[source] EngineError),

    /// Some images are neither pullable nor local.
    #[error("failed to get {}", describe_images(.0))]
    ImagesUnavailable(Vec<ImageFailure>),

    /// The engine failed while running a stage. Cleanup has already run; `results` holds the
    /// stages that finished before it.
    #[error("failed to run stages[{index}] ({image}): {source}")]
    Stage {
        index: usize,
        image: String,
        results: Vec<StageResult>,
        #[source]
        source: EngineError,
    },

    /// An engine call outside any stage failed.
    #[error("failed to {action}: {source}")]
    Engine {
        action: &'static str,
        #[source]
        source: EngineError,
    },

    /// The run's `/job` directory could not be made.
    #[error("failed to create the job directory under {}: {source}", path.display())]
    Workspace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The run was cancelled through its token; everything it held has been removed.
    #[error("the run was cancelled")]
    Cancelled { results: Vec<StageResult> },

    /// The run ended but something it held could not be removed.
    #[error("failed to clean up after the run: {source}")]
    Cleanup {
        results: Vec<StageResult>,
        #[source]
        source: CleanupError,
    },
}

impl Error {
    /// The results of the stages that finished before the error, where there are any.
    pub fn partial_results(&self) -> &[StageResult] {
        match self {
            Error::Stage { results, .. } | Error::Cancelled { results } | Error::Cleanup { results, .. } => results,
            _ => &[],
        }
    }
}

fn describe_images(failures: &[ImageFailure]) -> String {
    let parts: Vec<String> =
        failures.iter().map(|f| format!("image {}: not pullable and not on the engine ({})", f.image, f.reason)).collect();
    parts.join("; ")
}
