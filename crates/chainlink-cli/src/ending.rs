//! How a command ended, and the one mapping from that to the process's exit status.

/// How a command ended.
#[derive(Debug)]
pub enum Ending {
    /// Every stage succeeded (or the command did what it was asked).
    Success,
    /// A stage failed: a non-zero exit, a timeout, an OOM kill.
    StageFailed,
    /// The input was unusable: an unreadable file, a syntax error, an unwritable logs
    /// directory. The message says what and where.
    Input(String),
    /// The library refused or failed.
    Library(chainlink::Error),
    /// The sweep could not even list what dead runs left (`gc`).
    Cleanup(chainlink::cleanup::CleanupError),
    /// `gc` removed what it could, and this many things could not be removed (each already
    /// printed on standard error).
    Unremoved(usize),
    /// A signal cancelled the run; its number.
    Interrupted(i32),
}

impl Ending {
    /// What to print after `chainlink: error: `, if anything.
    pub fn message(&self) -> Option<String> {
        match self {
            Ending::Success | Ending::StageFailed => None,
            Ending::Input(message) => Some(message.clone()),
            Ending::Library(error) => Some(error.to_string()),
            Ending::Cleanup(error) => Some(format!("failed to sweep what dead runs left: {error}")),
            Ending::Unremoved(count) => Some(format!(
                "failed to remove {count} thing{} that dead runs left (listed above)",
                if *count == 1 { "" } else { "s" }
            )),
            Ending::Interrupted(signal) => {
                Some(format!("interrupted by {}; the run was stopped and cleaned up", signal_name(*signal)))
            }
        }
    }
}

/// The exit status of every way a command can end: 0 success; 1 a stage failed; 2 invalid
/// input; 3 the engine, or something `gc` could not remove; 128 + the signal's number after
/// SIGHUP (129), SIGINT (130) or SIGTERM (143).
pub fn exit_code(ending: &Ending) -> u8 {
    use chainlink::Error as E;
    match ending {
        Ending::Success => 0,
        Ending::StageFailed => 1,
        Ending::Input(_) | Ending::Library(E::Invalid(_)) => 2,
        Ending::Library(
            E::EngineUnavailable(_)
            | E::ImagesUnavailable(_)
            | E::Stage { .. }
            | E::Engine { .. }
            | E::Workspace { .. }
            | E::Cleanup { .. },
        )
        | Ending::Cleanup(_)
        | Ending::Unremoved(_) => 3,
        // Only a signal cancels a run, and that ends as `Interrupted`; SIGINT's status is the
        // fallback.
        Ending::Library(E::Cancelled { .. }) => 128 + libc::SIGINT as u8,
        Ending::Interrupted(signal) => 128u8.saturating_add(u8::try_from(*signal).unwrap_or(0)),
    }
}

pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ending_has_its_status() {
        assert_eq!(exit_code(&Ending::Success), 0);
        assert_eq!(exit_code(&Ending::StageFailed), 1);
        assert_eq!(exit_code(&Ending::Input("x".into())), 2);
        let invalid = chainlink::Error::Invalid(chainlink::Problems(vec![]));
        assert_eq!(exit_code(&Ending::Library(invalid)), 2);
        let unavailable = chainlink::Error::EngineUnavailable(chainlink::EngineError::new(
            chainlink::EngineErrorKind::Unavailable,
            "gone",
        ));
        assert_eq!(exit_code(&Ending::Library(unavailable)), 3);
        assert_eq!(exit_code(&Ending::Interrupted(libc::SIGINT)), 130);
        assert_eq!(exit_code(&Ending::Interrupted(libc::SIGTERM)), 143);
        assert_eq!(exit_code(&Ending::Interrupted(libc::SIGHUP)), 129);
        assert_eq!(exit_code(&Ending::Unremoved(2)), 3);
    }
}
