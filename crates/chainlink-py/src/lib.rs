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
//! - `gc(workdir, cleanup_images)` sweeps what runs of dead processes left (GIL released).
//! - Every run in flight is registered by its cancellation token: `cancel_runs()` stops them
//!   all and `wait_runs(timeout)` waits (GIL released) until their cleanup is over, for the
//!   SIGTERM handler of `chainlink/__init__.py`.

mod convert;
mod errors;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chainlink::{CancellationToken, ChainOptions, Error, RunControl, StageResult};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
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
        .on_thread_start(block_asynchronous_signals)
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("failed to start chainlink's runtime: {e}")))?;
    // Never dropped: it lives as long as the process (and a forked parent's copy must not be
    // shut down from a child that does not own its threads).
    let runtime: &'static Runtime = Box::leak(Box::new(built));
    *slot = Some((pid, runtime));
    Ok(runtime)
}

/// The runs in flight in this process, by their cancellation tokens. Like the runtime, it
/// belongs to the process that made it: a forked child starts with none (the parent's runs are
/// not its own and will never end in it).
struct InFlight {
    pid: u32,
    next: u64,
    runs: HashMap<u64, CancellationToken>,
}

static IN_FLIGHT: Mutex<Option<InFlight>> = Mutex::new(None);
/// Notified each time a run leaves `IN_FLIGHT`.
static RUN_ENDED: Condvar = Condvar::new();

fn in_flight() -> MutexGuard<'static, Option<InFlight>> {
    let mut slot = IN_FLIGHT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let pid = std::process::id();
    if slot.as_ref().is_none_or(|registry| registry.pid != pid) {
        *slot = Some(InFlight { pid, next: 0, runs: HashMap::new() });
    }
    slot
}

/// A run's place in `IN_FLIGHT`, given up (on every path, a panic included) when the run's task
/// drops it, after the run has returned and so after its cleanup.
struct Registered(u64);

impl Registered {
    fn new(cancel: &CancellationToken) -> Registered {
        let mut slot = in_flight();
        let registry = slot.as_mut().expect("made by in_flight");
        let id = registry.next;
        registry.next += 1;
        registry.runs.insert(id, cancel.clone());
        Registered(id)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(registry) = in_flight().as_mut() {
            registry.runs.remove(&self.0);
        }
        RUN_ENDED.notify_all();
    }
}

/// Python runs signal handlers on its main thread only, woken by the signal interrupting what
/// that thread waits on. A signal the kernel delivers to one of our threads instead interrupts
/// nothing: a main thread blocked in a lock (a multiprocessing worker told to stop with
/// SIGTERM, once a Python-level SIGTERM handler is installed) would wait for ever. So our
/// threads block every signal a process is sent, and the main thread gets them all.
/// Signals of faults (SIGSEGV, ...) stay unblocked: they go to the thread that faulted.
fn block_asynchronous_signals() {
    // SAFETY: a zeroed sigset_t is a valid argument to sigfillset, which initialises it; the
    // mask applies to the calling thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for fault in [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGTRAP, libc::SIGABRT, libc::SIGSYS] {
            libc::sigdelset(&mut set, fault);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
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
        let registered = Registered::new(&cancel);
        runtime()?.spawn(async move {
            let ended = chain.run_with(&environ, control).await;
            drop(registered);
            finished.store(true, Ordering::Release);
            // Building Python objects needs the GIL, which may take a while to get: not on a
            // worker thread.
            let delivered = tokio::task::spawn_blocking(move || {
                let _delivering = Delivering::enter();
                if CLOSED.load(Ordering::SeqCst) {
                    // The interpreter is exiting: nobody waits for this any more, and a thread
                    // that enters Python while it finalizes is ended under our feet (its
                    // unwinding then releases a GIL state that is not current: an abort).
                    // `on_done` is dropped without the GIL: pyo3 defers that decref.
                    return;
                }
                Python::try_attach(|py| {
                    let (ok, value) = match finish(py, ended) {
                        Ok(results) => (true, results.unbind()),
                        Err(error) => (false, error.into_value(py).into_any()),
                    };
                    if let Err(error) = on_done.call1(py, (ok, value)) {
                        error.write_unraisable(py, Some(on_done.bind(py)));
                    }
                });
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
        let registered = Registered::new(&cancel);
        let control = RunControl { cancel, events: None };
        runtime()?.spawn(async move {
            let ended = chain.run_with(&environ, control).await;
            drop(registered);
            let _ = tx.send(ended);
        });
        Ok(rx)
    }
}

/// The run's results, or its exception. A run whose only trouble was cleanup (an immutable
/// file left in `/job`) returns its complete results with a `CleanupWarning`: the stages ran,
/// and what is left is the sweep's to remove.
fn finish<'py>(py: Python<'py>, ended: Result<Vec<StageResult>, Error>) -> PyResult<Bound<'py, PyAny>> {
    match ended {
        Ok(results) => Ok(convert::results_to_py(py, &results)?.into_any()),
        Err(Error::Cleanup { results, source }) => {
            let category = py.import("chainlink._errors")?.getattr("CleanupWarning")?;
            let message = format!("the run's results are complete, but {source}").replace('\0', "\\0");
            let message = std::ffi::CString::new(message).unwrap_or_default();
            // A program that turns warnings into errors still gets its results: they are what
            // the run was for, and the leftovers are the sweep's.
            let _ = PyErr::warn(py, &category, &message, 1);
            Ok(convert::results_to_py(py, &results)?.into_any())
        }
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

/// Removes what runs of dead processes left: their containers (on this host) and their run
/// directories under `workdir`. Returns `{"containers": [ids], "directories": [paths],
/// "failures": ["what: why"]}`. Blocks with the GIL released; on Ctrl-C the sweep is finished
/// (it is short and must not stop half-way through a removal) before `KeyboardInterrupt`.
#[pyfunction]
#[pyo3(signature = (workdir, cleanup_images = Vec::new()))]
fn gc<'py>(py: Python<'py>, workdir: PathBuf, cleanup_images: Vec<String>) -> PyResult<Bound<'py, PyDict>> {
    let workdir = std::path::absolute(&workdir).unwrap_or(workdir);
    let why = match std::fs::metadata(&workdir) {
        Ok(meta) if meta.is_dir() => None,
        Ok(_) => Some("a file".to_string()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = why {
        let problem = chainlink::Problem::new(None, Some("workdir"), "an existing directory", why);
        return Err(errors::invalid(py, vec![problem]));
    }
    let (tx, rx) = mpsc::channel();
    runtime()?.spawn(async move {
        let swept = match chainlink::DockerEngine::connect().await {
            Ok(engine) => chainlink::sweep_dead_runs(&engine, &workdir, &cleanup_images).await.map_err(Ok),
            Err(e) => Err(Err(Error::EngineUnavailable(e))),
        };
        let _ = tx.send(swept);
    });
    let report = match wait_interruptibly(py, rx, || ())? {
        Ok(report) => report,
        Err(Err(error)) => return Err(errors::to_py(py, error)),
        Err(Ok(cleanup)) => {
            return Err(errors::engine_error(py, format!("failed to sweep what dead runs left: {cleanup}"), &[], None))
        }
    };
    let dict = PyDict::new(py);
    dict.set_item("containers", report.containers)?;
    let directories: Vec<String> = report.directories.iter().map(|d| d.to_string_lossy().into_owned()).collect();
    dict.set_item("directories", directories)?;
    let failures: Vec<String> = report.failures.iter().map(ToString::to_string).collect();
    dict.set_item("failures", failures)?;
    Ok(dict)
}

/// Set at interpreter exit (`at_exit`): no runtime thread may enter Python any more.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// Runtime threads delivering a result to Python right now, with the pid they count for (a
/// forked child starts from zero): `pid << 32 | count`.
static DELIVERING: AtomicU64 = AtomicU64::new(0);

/// One delivery in progress, counted in `DELIVERING` for its lifetime.
struct Delivering;

impl Delivering {
    fn enter() -> Delivering {
        add_delivering(1);
        Delivering
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        add_delivering(-1);
    }
}

fn add_delivering(delta: i64) {
    let pid = u64::from(std::process::id());
    let _ = DELIVERING.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |current| {
        let count = if current >> 32 == pid { (current & 0xffff_ffff) as i64 } else { 0 };
        Some(pid << 32 | (count + delta).max(0) as u64)
    });
}

fn delivering_now() -> u64 {
    let current = DELIVERING.load(Ordering::SeqCst);
    if current >> 32 == u64::from(std::process::id()) {
        current & 0xffff_ffff
    } else {
        0
    }
}

/// Registered with `atexit` by the Python package: before the interpreter finalizes, stop
/// runtime threads from entering it, cancel the runs still in flight and wait (GIL released,
/// at most `timeout` seconds) for their cleanup and for deliveries already inside Python.
/// Without this, a delivery racing the interpreter's exit aborted the process (SIGABRT,
/// "PyGILState_Release: thread state must be current when releasing").
#[pyfunction]
fn at_exit(py: Python<'_>, timeout: f64) -> bool {
    CLOSED.store(true, Ordering::SeqCst);
    cancel_runs();
    let timeout = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::ZERO);
    let deadline = Instant::now() + timeout;
    let runs_done = wait_runs(py, timeout.as_secs_f64());
    py.detach(move || {
        while delivering_now() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        runs_done
    })
}

/// Cancels every run in flight in this process (their containers are killed and everything
/// they hold removed, as for `RunHandle.cancel`); returns how many there were.
#[pyfunction]
fn cancel_runs() -> usize {
    let slot = in_flight();
    let runs = &slot.as_ref().expect("made by in_flight").runs;
    for cancel in runs.values() {
        cancel.cancel();
    }
    runs.len()
}

/// Waits, GIL released, until no run is in flight in this process (each has returned, its
/// cleanup done) or `timeout` seconds have passed; whether none is left.
#[pyfunction]
fn wait_runs(py: Python<'_>, timeout: f64) -> bool {
    let timeout = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::ZERO);
    py.detach(move || {
        let deadline = Instant::now() + timeout;
        let mut slot = in_flight();
        loop {
            if slot.as_ref().is_none_or(|registry| registry.runs.is_empty()) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            slot = RUN_ENDED.wait_timeout(slot, left).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
    })
}

/// The native half of chainlink: chains as tokio tasks on a runtime shared by the process.
#[pymodule]
fn _chainlink(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Chain>()?;
    m.add_class::<RunHandle>()?;
    m.add_function(wrap_pyfunction!(gc, m)?)?;
    m.add_function(wrap_pyfunction!(cancel_runs, m)?)?;
    m.add_function(wrap_pyfunction!(wait_runs, m)?)?;
    m.add_function(wrap_pyfunction!(at_exit, m)?)?;
    Ok(())
}
