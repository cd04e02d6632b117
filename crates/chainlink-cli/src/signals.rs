//! SIGINT, SIGTERM and SIGHUP: the first cancels the run (the library then kills and removes what
//! it holds); a second SIGINT or SIGTERM exits at once.
//!
//! SIGHUP (the terminal or SSH session closed) never forces an exit: a hang-up often arrives
//! twice (the kernel signals the terminal's foreground group and the shell signals its jobs), and
//! nobody sends it on purpose to skip cleanup. Standard error may be gone by then; nothing here
//! or in the renderer fails on an unwritable stream.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use chainlink::CancellationToken;
use tokio::signal::unix::{signal, SignalKind};

use crate::render::Renderer;

/// The signal that cancelled the run, once one has.
#[derive(Clone)]
pub struct Signals {
    received: Arc<AtomicI32>,
}

impl Signals {
    /// Takes over SIGINT, SIGTERM and SIGHUP for the rest of the process: the first cancels
    /// `cancel`; a second SIGINT or SIGTERM exits with 128 + its number without waiting for
    /// cleanup; a later SIGHUP is ignored.
    pub fn install(cancel: CancellationToken, renderer: Arc<Renderer>) -> std::io::Result<Signals> {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let received = Arc::new(AtomicI32::new(0));
        let signals = Signals { received: received.clone() };
        tokio::spawn(async move {
            loop {
                let number = tokio::select! {
                    _ = interrupt.recv() => libc::SIGINT,
                    _ = terminate.recv() => libc::SIGTERM,
                    _ = hangup.recv() => libc::SIGHUP,
                };
                if received.compare_exchange(0, number, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                    if number == libc::SIGHUP {
                        continue;
                    }
                    std::process::exit(128 + number);
                }
                renderer.note(&format!(
                    "chainlink: {}: stopping the run and removing its containers and files (Ctrl-C again to exit at once)",
                    crate::ending::signal_name(number)
                ));
                cancel.cancel();
            }
        });
        Ok(signals)
    }

    /// The signal that cancelled the run (SIGINT if none was recorded).
    pub fn received(&self) -> i32 {
        match self.received.load(Ordering::SeqCst) {
            0 => libc::SIGINT,
            number => number,
        }
    }
}
