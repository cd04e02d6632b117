//! `chainlink._chainlink`: the native half of the Python module.
//!
//! Every chain runs as a task on one tokio runtime shared by the process, so runs started from
//! several threads or awaited together on an asyncio loop go on at the same time. A run is
//! never a future that Python could drop: it is spawned, and stopped through its
//! cancellation token, so the library's cleanup (kill and remove the container, remove the run
//! directory) always runs to the end.
//!
//! - `Chain(stages, workdir)` validates, connects and gets the images (GIL released).
//! - `Chain.run(environ)` blocks with the GIL released, waking every few milliseconds to let
//!   Python handle signals: on Ctrl-C the run is cancelled, its cleanup awaited, and
//!   `KeyboardInterrupt` raised.
//! - `Chain.start(environ, on_done)` returns a `RunHandle` at once; `on_done(ok, value)` is called
//!   once from a runtime thread with the results (or the exception). `chainlink.Chainlink`
//!   builds `run_async` on it.

mod convert;
mod errors;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chainlink::{CancellationToken, ChainOptions, Error, RunControl, StageResult};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

/// How long `run()` and the constructor wait, GIL released, between looks at pending signals.
const SIGNAL_SLICE: Duration = Duration::from_millis(50);

/// The runtime and the process that made it. A child forked from that process (multiprocessing's
/// default on Linux) inherits the runtime's memory but none of its threads: it makes its own.
static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

fn runtime() -> PyResult<&'static Runtime> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((owner, runtime)) = *slot {
        if owner == pid {
            return Ok(runtime);
        }
    }
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("chainlink")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("failed to start chainlink's runtime: {e}")))?;
    // Never dropped: it lives as long as the process (and a forked parent's copy must not be
    // shut down from a child that does not own its threads).
    let runtime: &'static Runtime = Box::leak(Box::new(built));
    *slot = Some((pid, runtime));
    Ok(runtime)
}

/// Waits for `rx` with the GIL released, in slices, handling signals between slices. When a
/// signal handler raises (KeyboardInterrupt), `interrupt` is called, the wait for `rx` goes on
/// (GIL released) until the task has finished its cleanup, and the handler's exception is
/// returned.
fn wait_interruptibly<T: Send>(py: Python<'_>, mut rx: mpsc::Receiver<T>, interrupt: impl FnOnce()) -> PyResult<T> {
    loop {
        // A receiver is Send but not Sync: it goes into the GIL-free closure and comes back.
        let (received, back) = py.detach(move || (rx.recv_timeout(SIGNAL_SLICE), rx));
        rx = back;
        match received {
            Ok(value) => return Ok(value),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(raised) = py.check_signals() {
                    interrupt();
                    // The value (a cancelled run's error) is of no interest: what matters is
                    // that the task has finished, and with it the cleanup.
                    let _ = py.detach(move || rx.recv());
                    return Err(raised);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err("chainlink's task ended without a result (a bug: it panicked)"))
            }
        }
    }
}

/// A validated chain whose images are on the engine.
#[pyclass(frozen, module = "chainlink._chainlink")]
struct Chain {
    inner: chainlink::Chain,
}

#[pymethods]
impl Chain {
    #[new]
    #[pyo3(signature = (stages, workdir = None))]
    fn new(py: Python<'_>, stages: &Bound<'_, PyAny>, workdir: Option<PathBuf>) -> PyResult<Chain> {
        let converted = convert::stages_to_value(stages)?;
        let parsed = match chainlink::parse_stages(&converted.value) {
            Ok(stages) if converted.problems.is_empty() => stages,
            Ok(_) => return Err(errors::invalid(py, converted.problems)),
            Err(problems) => return Err(errors::invalid(py, convert::merge_problems(converted.problems, problems.0))),
        };
        let options = ChainOptions::default().workdir(workdir.unwrap_or_else(|| PathBuf::from("/tmp")));
        let (tx, rx) = mpsc::channel();
        let task = runtime()?.spawn(async move {
            let _ = tx.send(chainlink::Chain::new(parsed, options).await);
        });
        // Construction holds nothing that needs cleaning: an interrupted one is just aborted.
        let built = wait_interruptibly(py, rx, || task.abort())?;
        built.map(|inner| Chain { inner }).map_err(|e| errors::to_py(py, e))
    }

    /// Runs the chain and returns one result per stage. Blocks with the GIL released.
    #[pyo3(signature = (environ = None))]
    fn run<'py>(&self, py: Python<'py>, environ: Option<&Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
        let environ = convert::environ_to_map(environ)?;
        let cancel = CancellationToken::new();
        let rx = self.spawn_run(environ, cancel.clone())?;
        let ended = wait_interruptibly(py, rx, || cancel.cancel())?;
        finish(py, ended)
    }

    /// Starts a run and returns its handle at once; `on_done(ok, value)` is called exactly once,
    /// from a thread of the runtime, with the list of results (`ok` true) or the exception.
    #[pyo3(signature = (environ, on_done))]
    fn start(&self, environ: Option<&Bound<'_, PyAny>>, on_done: Py<PyAny>) -> PyResult<RunHandle> {
        let environ = convert::environ_to_map(environ)?;
        let cancel = CancellationToken::new();
        let done = Arc::new(AtomicBool::new(false));
        let chain = self.inner.clone();
        let control = RunControl { cancel: cancel.clone(), events: None };
        let finished = done.clone();
        runtime()?.spawn(async move {
            let ended = chain.run_with(&environ, control).await;
            finished.store(true, Ordering::Release);
            // Building Python objects needs the GIL, which may take a while to get: not on a
            // worker thread.
            let delivered = tokio::task::spawn_blocking(move || {
                Python::try_attach(|py| {
                    let (ok, value) = match finish(py, ended) {
                        Ok(results) => (true, results.unbind()),
                        Err(error) => (false, error.into_value(py).into_any()),
                    };
                    if let Err(error) = on_done.call1(py, (ok, value)) {
                        error.write_unraisable(py, Some(on_done.bind(py)));
                    }
                })
            })
            .await;
            drop(delivered);
        });
        Ok(RunHandle { cancel, done })
    }

    /// The directory under which each run's `/job` directory is made.
    #[getter]
    fn workdir(&self) -> String {
        self.inner.options().workdir.to_string_lossy().into_owned()
    }

    /// The distinct images of the chain, in stage order.
    #[getter]
    fn images(&self) -> Vec<String> {
        self.inner.images()
    }

    fn __len__(&self) -> usize {
        self.inner.stages().len()
    }
}

impl Chain {
    fn spawn_run(
        &self,
        environ: BTreeMap<String, String>,
        cancel: CancellationToken,
    ) -> PyResult<mpsc::Receiver<Result<Vec<StageResult>, Error>>> {
        let (tx, rx) = mpsc::channel();
        let chain = self.inner.clone();
        let control = RunControl { cancel, events: None };
        runtime()?.spawn(async move {
            let _ = tx.send(chain.run_with(&environ, control).await);
        });
        Ok(rx)
    }
}

fn finish<'py>(py: Python<'py>, ended: Result<Vec<StageResult>, Error>) -> PyResult<Bound<'py, PyAny>> {
    match ended {
        Ok(results) => Ok(convert::results_to_py(py, &results)?.into_any()),
        Err(error) => Err(errors::to_py(py, error)),
    }
}

/// A run started by `Chain.start`.
#[pyclass(frozen, module = "chainlink._chainlink")]
struct RunHandle {
    cancel: CancellationToken,
    done: Arc<AtomicBool>,
}

#[pymethods]
impl RunHandle {
    /// Asks the run to stop: the running container is killed and everything the run holds is
    /// removed; then `on_done` is called with a `ChainlinkError`. Does nothing once the run has
    /// ended.
    fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Whether the run has ended, its cleanup included (`on_done` may still be on its way).
    fn done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// The native half of chainlink: chains as tokio tasks on a runtime shared by the process.
#[pymodule]
fn _chainlink(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Chain>()?;
    m.add_class::<RunHandle>()?;
    Ok(())
}
