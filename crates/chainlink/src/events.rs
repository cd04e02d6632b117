//! What the library tells the world while it works. The CLI and the Python module render these;
//! the library itself prints nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::engine::{PullProgress, StreamKind};
use crate::outcome::Outcome;

/// Where an image that a chain uses came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// Pulled from its registry just now.
    Pulled,
    /// Already on the engine and not pulled (policy `if-missing` or `never`).
    Local,
    /// The pull failed and the engine's local copy is used; the pull's reason.
    LocalAfterFailedPull(String),
}

/// Something that happened during construction or a run.
#[derive(Debug, Clone)]
pub enum Event {
    PullStarted { image: String },
    PullProgress { image: String, progress: PullProgress },
    PullFinished { image: String, source: ImageSource, duration: Duration },
    StageStarted { index: usize, total: usize, image: String },
    /// One chunk of a stage's output, as the engine delivered it (usually a timestamped line).
    Output { index: usize, stream: StreamKind, bytes: Bytes },
    StageFinished { index: usize, total: usize, outcome: Outcome, duration: Duration },
    StageSkipped { index: usize, total: usize },
}

/// A receiver of events. It is called on the runner's tasks: keep it quick.
pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

pub(crate) fn emit(sink: &Option<EventSink>, event: impl FnOnce() -> Event) {
    if let Some(sink) = sink {
        sink(&event());
    }
}
