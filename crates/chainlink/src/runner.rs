//! The life of a chain: construction (validate, connect, pull) and runs (for each stage:
//! create, start, wait with the timeout, kill, collect output, inspect, remove).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::cleanup::{container_labels, RunGuard, RunId};
use crate::engine::{
    ContainerSpec, DockerEngine, Engine, EngineError, EngineErrorKind, ImageRef, LogChunk, LogsRequest, SharedEngine, StreamKind,
};
use crate::error::{Error, ImageFailure};
use crate::events::{emit, Event, EventSink, ImageSource};
use crate::outcome::{log_stamp, Outcome, OutputBuffer, StageResult};
use crate::spec::{check_stages, Problem, Problems, PullPolicy, Stage};
use crate::workspace::{check_workdir, Workspace};

/// How long a killed container may take to be reported stopped before we call the engine stuck.
const KILL_GRACE: Duration = Duration::from_secs(30);

/// How long a stage's container may legitimately outlive its timeout: waiting for its start,
/// the kill grace, reading the rest of its output, measuring `/job` once more, inspecting its
/// state. Deadline labels add it to every timeout, so that a sweep that cannot see a run's lock
/// never removes a container its live runner still uses; generous, since it only delays the
/// sweep of what a runner on another machine left.
pub(crate) const STAGE_SLACK: Duration = Duration::from_secs(300);

/// How often a running stage's disk use is measured against its `disk_limit`. A stage must be
/// killed within 5 s of passing its limit: one interval, one measurement (walks of `/job` and
/// of the writable layer, a few milliseconds on small trees) and the kill fit well inside that;
/// a shorter interval would repeat the walks (or, without access to the layer's directory, the
/// engine's far costlier diff of the container's filesystem) more often for little gain.
const DISK_POLL: Duration = Duration::from_secs(1);

/// Lines read again from the end of a stage's log once it stopped, to catch a last partial
/// line that the follow stream ended before.
const CATCH_UP_LINES: u32 = 64;

/// Options of a chain as a whole.
#[derive(Clone)]
pub struct ChainOptions {
    /// Where run directories are created (the seed's `workdir`, default `/tmp`).
    pub workdir: PathBuf,
    pub pull: PullPolicy,
    /// Receives pull and run events.
    pub events: Option<EventSink>,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions { workdir: PathBuf::from("/tmp"), pull: PullPolicy::Always, events: None }
    }
}

impl std::fmt::Debug for ChainOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainOptions")
            .field("workdir", &self.workdir)
            .field("pull", &self.pull)
            .field("events", &self.events.is_some())
            .finish()
    }
}

impl ChainOptions {
    pub fn workdir(mut self, workdir: impl Into<PathBuf>) -> Self {
        self.workdir = workdir.into();
        self
    }

    pub fn pull(mut self, policy: PullPolicy) -> Self {
        self.pull = policy;
        self
    }

    pub fn events(mut self, sink: EventSink) -> Self {
        self.events = Some(sink);
        self
    }
}

/// What a single run may be given beyond its base environment.
#[derive(Clone, Default)]
pub struct RunControl {
    /// Cancelling it kills the running stage and removes everything; the run then returns
    /// [`Error::Cancelled`].
    pub cancel: CancellationToken,
    /// Receives this run's events instead of the chain's sink.
    pub events: Option<EventSink>,
}

/// A validated chain whose images are ready on the engine. Runs may go on at once, each with
/// its own `/job` directory.
#[derive(Debug, Clone)]
pub struct Chain {
    stages: Arc<[Stage]>,
    options: ChainOptions,
    engine: SharedEngine,
}

impl Chain {
    /// Validates the stages, connects to the engine (`DOCKER_HOST` or the default socket), and
    /// gets every distinct image in parallel under the pull policy.
    pub async fn new(stages: Vec<Stage>, mut options: ChainOptions) -> Result<Chain, Error> {
        // The engine resolves bind mounts on its own side: a relative path means nothing there.
        options.workdir = std::path::absolute(&options.workdir).unwrap_or(options.workdir);
        check_input(&stages, &options)?;
        let engine = DockerEngine::connect().await.map_err(Error::EngineUnavailable)?;
        Self::with_engine(stages, options, Arc::new(engine)).await
    }

    /// As [`Chain::new`], on an engine the caller connected.
    pub async fn with_engine(stages: Vec<Stage>, mut options: ChainOptions, engine: SharedEngine) -> Result<Chain, Error> {
        options.workdir = std::path::absolute(&options.workdir).unwrap_or(options.workdir);
        check_input(&stages, &options)?;
        check_against_engine(&stages, &*engine).await?;
        let chain = Chain { stages: stages.into(), options, engine };
        chain.prepare_images().await?;
        Ok(chain)
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    pub fn options(&self) -> &ChainOptions {
        &self.options
    }

    pub fn engine(&self) -> &SharedEngine {
        &self.engine
    }

    /// The distinct images of the chain, in stage order, each under its first spelling
    /// (`alpine` and `docker.io/library/alpine:latest` are one image, pulled once).
    pub fn images(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.stages
            .iter()
            .filter(|stage| {
                let key = ImageRef::parse(&stage.image).map_or_else(|_| stage.image.clone(), |r| r.pull_reference());
                seen.insert(key)
            })
            .map(|stage| stage.image.clone())
            .collect()
    }

    async fn prepare_images(&self) -> Result<(), Error> {
        let sink = &self.options.events;
        let policy = self.options.pull;
        let engine = &*self.engine;
        let jobs = self.images().into_iter().map(|image| async move {
            let started = Instant::now();
            let result = get_image(engine, &image, policy, sink).await;
            match result {
                Ok(source) => {
                    emit(sink, || Event::PullFinished { image: image.clone(), source, duration: started.elapsed() });
                    Ok(())
                }
                Err(reason) => Err(ImageFailure { image, reason }),
            }
        });
        let failures: Vec<ImageFailure> =
            futures_util::future::join_all(jobs).await.into_iter().filter_map(Result::err).collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::ImagesUnavailable(failures))
        }
    }

    /// Runs the chain with `environ` as every stage's base environment.
    pub async fn run(&self, environ: &BTreeMap<String, String>) -> Result<Vec<StageResult>, Error> {
        self.run_with(environ, RunControl::default()).await
    }

    /// Runs the chain under `control`: cancellation and a sink of this run's events.
    pub async fn run_with(
        &self,
        environ: &BTreeMap<String, String>,
        control: RunControl,
    ) -> Result<Vec<StageResult>, Error> {
        // Before anything is created: the engine's errors for these come late and name nothing.
        let environ_problems = crate::spec::environ_problems(environ, &self.stages);
        if !environ_problems.is_empty() {
            return Err(Error::Invalid(Problems(environ_problems)));
        }
        let run = RunId::new();
        let longest: Duration = self.stages.iter().map(|s| s.timeout + STAGE_SLACK).sum();
        let workspace = Workspace::create(&self.options.workdir, &run, SystemTime::now() + longest + STAGE_SLACK)
            .map_err(|source| Error::Workspace { path: self.options.workdir.clone(), source })?;
        let guard = RunGuard::new(self.engine.clone(), run.clone(), &workspace, self.images());
        let sink = control.events.or_else(|| self.options.events.clone());
        let mut results = Vec::with_capacity(self.stages.len());
        let ended = tokio::select! {
            biased;
            _ = control.cancel.cancelled() => Err(None),
            ended = self.run_stages(&run, &workspace, &guard, environ, &sink, &mut results) => ended.map_err(Some),
        };
        let cleaned = guard.cleanup().await;
        match (ended, cleaned) {
            (Err(None), _) => Err(Error::Cancelled { results }),
            (Err(Some((index, mut source))), _) => {
                // The engine's own words ("error reading a body from connection") do not say
                // that it is the engine that went away, nor which one.
                if source.kind == EngineErrorKind::Unavailable {
                    source.message =
                        format!("lost the connection to the Docker engine at {}: {}", self.engine.endpoint(), source.message);
                }
                Err(Error::Stage { index, image: self.stages[index].image.clone(), results, source })
            }
            (Ok(()), Err(source)) => Err(Error::Cleanup { results, source }),
            (Ok(()), Ok(())) => Ok(results),
        }
    }

    async fn run_stages(
        &self,
        run: &RunId,
        workspace: &Workspace,
        guard: &RunGuard,
        environ: &BTreeMap<String, String>,
        sink: &Option<EventSink>,
        results: &mut Vec<StageResult>,
    ) -> Result<(), (usize, EngineError)> {
        let total = self.stages.len();
        let mut failed = false;
        // The next stage's container is created while the current one runs: creation depends
        // on nothing a stage does, and it takes the engine's create time off the critical path.
        let mut created_next: Option<Result<String, EngineError>> = None;
        // `/job`'s usage as the last stage left it, when measured: the next one's baseline.
        let mut job_known: Option<u64> = None;
        for (index, stage) in self.stages.iter().enumerate() {
            if failed {
                emit(sink, || Event::StageSkipped { index, total });
                results.push(StageResult::skipped(index, &stage.image, stage.logs));
                continue;
            }
            let id = match created_next.take() {
                Some(created) => created,
                None => self.create(run, workspace, guard, environ, index, SystemTime::now()).await,
            }
            .map_err(|e| (index, e))?;
            emit(sink, || Event::StageStarted { index, total, image: stage.image.clone() });
            let job_baseline = job_baseline(workspace, stage, job_known.take()).await;
            let started = Instant::now();
            if let Err(refused) = self.engine.start(&id).await {
                if refused.kind != EngineErrorKind::CannotStart {
                    return Err((index, refused));
                }
                let result = self.start_failed(sink, index, stage, &id, refused, started).await.map_err(|e| (index, e))?;
                guard.release_in_background(&id);
                failed = true;
                results.push(result);
                continue;
            }
            // The next container starts once this stage has ended: at the latest its timeout
            // and slack from now.
            let next_starts_by = SystemTime::now() + stage.timeout + STAGE_SLACK;
            let create_next = async {
                match index + 1 < total {
                    true => Some(self.create(run, workspace, guard, environ, index + 1, next_starts_by).await),
                    false => None,
                }
            };
            let (result, next) = tokio::join!(self.finish(sink, index, stage, &id, started, workspace, job_baseline), create_next);
            let (result, job_after) = result.map_err(|e| (index, e))?;
            job_known = job_after;
            guard.release_in_background(&id);
            failed = !result.success();
            if failed {
                if let Some(Ok(next_id)) = &next {
                    guard.release_in_background(next_id);
                }
            } else {
                created_next = next;
            }
            results.push(result);
        }
        Ok(())
    }

    /// Creates the container of stage `index`, named after the run and the stage, to be started
    /// by `starts_by` at the latest (for its deadline label).
    async fn create(
        &self,
        run: &RunId,
        workspace: &Workspace,
        guard: &RunGuard,
        environ: &BTreeMap<String, String>,
        index: usize,
        starts_by: SystemTime,
    ) -> Result<String, EngineError> {
        let stage = &self.stages[index];
        let mut env = environ.clone();
        env.extend(stage.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let spec = ContainerSpec {
            name: format!("chainlink-{run}-{index}"),
            stage,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            job: workspace.mount(),
            labels: container_labels(run, Some(index), workspace.root(), starts_by + stage.timeout + STAGE_SLACK),
            user_override: None,
            entrypoint_override: None,
        };
        guard.create(&spec).await
    }

    /// The result of a stage whose program the engine could not start: a failed stage, with
    /// the engine's reason as a timestamped line of its stderr, and the exit code a shell would
    /// give (127 not found, 126 cannot execute), which the engine sets in the `State` too.
    async fn start_failed(
        &self,
        sink: &Option<EventSink>,
        index: usize,
        stage: &Stage,
        id: &str,
        refused: EngineError,
        started: Instant,
    ) -> Result<StageResult, EngineError> {
        let mut state = self.engine.inspect_state(id).await?;
        let code = match state.exit_code() {
            Some(code @ (126 | 127)) => code,
            _ => 126,
        };
        state.raw.insert("ExitCode".to_string(), code.into());
        let mut stderr = OutputBuffer::new(stage.output_limit);
        stderr.mark(format!("the stage could not start: {}", refused.message));
        let duration = started.elapsed();
        let outcome = Outcome::StartFailed(code);
        emit(sink, || Event::StageFinished { index, total: self.stages.len(), outcome, duration });
        Ok(StageResult {
            index,
            image: stage.image.clone(),
            outcome,
            state: Some(state.raw),
            stdout: stage.logs.then(Default::default),
            stderr: stage.logs.then(|| stderr.finish()),
            duration,
        })
    }

    /// Drives a started stage to its end: waits up to the timeout and watches its disk use
    /// against `disk_limit` (killing it when either is passed), collects its output as it
    /// comes, and inspects its final state. `job_baseline` is `/job`'s usage before the start
    /// (`None`: no disk limit); with the result comes `/job`'s usage after the exit, when it
    /// was measured in full.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        sink: &Option<EventSink>,
        index: usize,
        stage: &Stage,
        id: &str,
        started: Instant,
        workspace: &Workspace,
        job_baseline: Option<u64>,
    ) -> Result<(StageResult, Option<u64>), EngineError> {
        let engine = &*self.engine;
        let total = self.stages.len();
        let mut output = Collector::new(stage.output_limit, sink, index);
        let collect = async {
            // Read both streams until one fills its buffer; then only the other, from where it
            // was; then nothing. What a full stream prints later is never read: the engine
            // serves its logs line by line, far slower than a stage can print, and keeps only
            // a bounded tail of them anyway.
            let mut first = true;
            loop {
                let wanted = output.wanted();
                if wanted == [false, false] {
                    return Ok(());
                }
                let since = if first { 0 } else { output.resume_from() };
                let mut stream = engine.logs(id, output.request(true, since));
                let mut filled = false;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    if first || output.is_new(&chunk) {
                        output.take(chunk);
                    }
                    if output.wanted() != wanted {
                        filled = true;
                        break;
                    }
                }
                if !filled {
                    return Ok::<_, EngineError>(());
                }
                first = false;
            }
        };
        let limits = stage.disk_limit.zip(job_baseline);
        let watch = async {
            match limits {
                Some((limit, baseline)) => watch_disk(engine, workspace, id, baseline, limit).await,
                None => std::future::pending().await,
            }
        };
        let wait = async {
            let remaining = stage.timeout.saturating_sub(started.elapsed());
            // Whichever of the timeout and the disk limit fires first decides; when both are
            // ready in one poll, the timeout (listed first) wins.
            let stop = tokio::select! {
                biased;
                waited = tokio::time::timeout(remaining, engine.wait(id)) => match waited {
                    Ok(code) => return Ok((code?, None)),
                    Err(_) => Stop::Timeout,
                },
                written = watch => Stop::DiskLimit(written?),
            };
            engine.kill(id).await?;
            let code = tokio::time::timeout(KILL_GRACE, engine.wait(id)).await.map_err(|_| {
                EngineError::new(crate::engine::EngineErrorKind::Timeout, "the killed container did not stop")
            })??;
            Ok((code, Some(stop)))
        };
        // The wait decides: when it fails (the engine went away, a killed container that never
        // stops), the output collection is dropped with it rather than followed for ever.
        let (waited, collected) = {
            tokio::pin!(wait, collect);
            let mut collected = None;
            let waited = loop {
                tokio::select! {
                    waited = &mut wait => break waited,
                    done = &mut collect, if collected.is_none() => collected = Some(done),
                }
            };
            if waited.is_ok() && collected.is_none() {
                // The container has stopped: its log follow ends soon; an engine that never
                // ends it must not hold the run (what is missing is read below from the tail).
                collected = tokio::time::timeout(KILL_GRACE, &mut collect).await.ok();
            }
            (waited, collected)
        };
        let (exit_code, mut stop) = waited?;
        let duration = started.elapsed();
        collected.transpose()?;
        // A follow stream may end when the container stops, before the engine has written the
        // last partial line (output without a final newline). Once the wait has returned the
        // log is complete: read again from the last second seen and keep only what is newer.
        // Only the last lines can be missing, so the engine reads its log from the end.
        if output.wanted() != [false, false] {
            let request = LogsRequest { tail: Some(CATCH_UP_LINES), ..output.request(false, 0) };
            let mut rest = engine.logs(id, request);
            while let Some(chunk) = rest.next().await {
                let chunk = chunk?;
                if output.is_new(&chunk) {
                    output.take(chunk);
                }
            }
        }
        // A stage that wrote past its limit and exited before the next measurement is caught
        // here: what it left in /job stays for later stages. Its writable layer is not measured
        // again: it goes with the container, and measuring it would be on every stage's path.
        let (state, job_after) = tokio::join!(engine.inspect_state(id), async {
            match limits {
                Some((_, baseline)) if stop.is_none() => Some(job_growth(workspace, baseline).await),
                _ => None,
            }
        });
        let state = state?;
        let mut exited_over = false;
        let mut job_now = None;
        if let (Some((limit, _)), Some(growth)) = (limits, job_after) {
            match growth {
                Ok(JobGrowth { now, growth, complete: true }) if growth <= limit => job_now = Some(now),
                Ok(JobGrowth { growth, complete: true, .. }) => stop = Some(Stop::DiskLimit(Some(growth))),
                // What it left cannot be measured (closed to a runner that is not root): it
                // cannot be let through, and it is the stage's doing, not the engine's.
                Ok(JobGrowth { complete: false, .. }) | Err(_) => stop = Some(Stop::DiskLimit(None)),
            }
            exited_over = stop.is_some();
        }
        if let (Some(Stop::DiskLimit(written)), Some(limit)) = (stop, stage.disk_limit) {
            output.stderr.mark(match written {
                None => format!(
                    "disk_limit: what the stage wrote into /job could not be measured (its directories kept moving \
                     under the measurement, or were closed to the runner's user), so it could not be held to its \
                     disk_limit {limit}; {}",
                    if exited_over { "it had exited" } else { "killed" }
                ),
                Some(written) => format!(
                    "disk_limit exceeded: the stage wrote at least {written} bytes into /job and its writable layer \
                     (disk_limit {limit}); {}",
                    if exited_over { "it had already exited" } else { "killed" }
                ),
            });
        }
        let (stdout, stderr) = (output.stdout.finish(), output.stderr.finish());
        let outcome = match stop {
            Some(Stop::DiskLimit(_)) => Outcome::DiskLimit,
            stop => Outcome::from_exit(stop.is_some(), state.exit_code().unwrap_or(exit_code), state.oom_killed()),
        };
        emit(sink, || Event::StageFinished { index, total, outcome, duration });
        let result = StageResult {
            index,
            image: stage.image.clone(),
            outcome,
            state: Some(state.raw),
            stdout: stage.logs.then_some(stdout),
            stderr: stage.logs.then_some(stderr),
            duration,
        };
        Ok((result, job_now))
    }
}

/// Why the runner stopped a stage before it ended by itself.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Timeout,
    /// With the bytes it had written when measured; `None` when what it wrote could not be
    /// measured.
    DiskLimit(Option<u64>),
}

/// `/job`'s usage before a stage with a disk limit starts (`None` without a limit: nothing is
/// measured then): `known` when the previous stage's last measurement gave it (nothing writes
/// `/job` between a stage's exit and the next one's start), else a walk. What cannot be read
/// counts as nothing: the stage's own measurements then fail closed.
async fn job_baseline(workspace: &Workspace, stage: &Stage, known: Option<u64>) -> Option<u64> {
    stage.disk_limit?;
    match known {
        Some(bytes) => Some(bytes),
        None => Some(workspace.disk_usage().await.map_or(0, |usage| usage.bytes)),
    }
}

/// `/job`'s usage now, its growth since `baseline` (what a stage deletes of earlier stages'
/// files is not credited beyond zero), and whether the measurement saw everything (`false`:
/// directories closed to a runner that is not root).
async fn job_growth(workspace: &Workspace, baseline: u64) -> Result<JobGrowth, EngineError> {
    let usage = workspace.disk_usage().await.map_err(job_error)?;
    Ok(JobGrowth { now: usage.bytes, growth: usage.bytes.saturating_sub(baseline), complete: usage.skipped == 0 })
}

struct JobGrowth {
    now: u64,
    growth: u64,
    complete: bool,
}

fn job_error(e: std::io::Error) -> EngineError {
    EngineError::new(EngineErrorKind::Other, format!("failed to measure the disk usage of /job: {e}"))
}

/// Measures a running stage's writes every [`DISK_POLL`] (`/job`'s growth and its writable
/// layer, at the same time) and returns the total once it is above `limit`. Never returns
/// while the stage stays under it.
async fn watch_disk(
    engine: &dyn Engine,
    workspace: &Workspace,
    id: &str,
    baseline: u64,
    limit: u64,
) -> Result<Option<u64>, EngineError> {
    let mut failed_in_a_row = 0;
    loop {
        tokio::time::sleep(DISK_POLL).await;
        let (job, layer) = tokio::join!(job_growth(workspace, baseline), engine.container_disk_usage(id));
        // A walk of /job fails only when the stage keeps moving directories under it. That is
        // the stage's doing, never the engine's: it must not become a run error, nor a way
        // past the limit, so after a few failures in a row the stage is stopped as over it.
        // So is a directory closed to a runner that is not root: what is inside cannot be
        // measured, so it cannot be let through either.
        // The same for a layer or volume that cannot be measured. (An engine that went away
        // ends the stage's wait first, as the error it is.)
        let (Ok(JobGrowth { growth: job, complete: true, .. }), Ok(layer)) = (job, layer) else {
            failed_in_a_row += 1;
            if failed_in_a_row >= UNMEASURABLE_POLLS {
                return Ok(None);
            }
            continue;
        };
        failed_in_a_row = 0;
        let written = job.saturating_add(layer.unwrap_or(0));
        if written > limit {
            return Ok(Some(written));
        }
    }
}

/// Failed measurements of `/job` in a row after which a stage is stopped as over its limit.
const UNMEASURABLE_POLLS: u32 = 3;

/// A stage's two output streams as they arrive, each bounded, each chunk also sent as an event.
struct Collector<'a> {
    stdout: OutputBuffer,
    stderr: OutputBuffer,
    /// The engine's latest timestamp taken, per stream (stdout, stderr): the two streams
    /// arrive interleaved, not in timestamp order.
    latest: [Option<(i64, u32)>; 2],
    sink: &'a Option<EventSink>,
    index: usize,
}

impl<'a> Collector<'a> {
    fn new(limit: u64, sink: &'a Option<EventSink>, index: usize) -> Self {
        Collector { stdout: OutputBuffer::new(limit), stderr: OutputBuffer::new(limit), latest: [None; 2], sink, index }
    }

    fn take(&mut self, chunk: LogChunk) {
        let latest = &mut self.latest[chunk.stream as usize];
        *latest = (*latest).max(log_stamp(&chunk.bytes));
        match chunk.stream {
            StreamKind::Stdout => self.stdout.push(&chunk.bytes),
            StreamKind::Stderr => self.stderr.push(&chunk.bytes),
        }
        let index = self.index;
        emit(self.sink, || Event::Output { index, stream: chunk.stream, bytes: chunk.bytes });
    }

    /// Which streams (stdout, stderr) still have room.
    fn wanted(&self) -> [bool; 2] {
        [!self.stdout.full(), !self.stderr.full()]
    }

    /// Whether a chunk read again comes after everything taken from its stream.
    fn is_new(&self, chunk: &LogChunk) -> bool {
        self.latest[chunk.stream as usize].is_none_or(|seen| log_stamp(&chunk.bytes).is_some_and(|stamp| stamp > seen))
    }

    /// The second to read again from: the earliest of the wanted streams' latest. A partial
    /// line is flushed when its stream closes, at the end, so nothing before that is missed.
    fn resume_from(&self) -> i64 {
        let wanted = self.wanted();
        // Both streams come in one sequence, in the order the engine logged them: a stream with
        // nothing seen yet had nothing before the latest chunk of the other.
        let overall = self.latest[0].max(self.latest[1]);
        (0..2).filter(|&i| wanted[i]).filter_map(|i| self.latest[i].or(overall)).map(|(secs, _)| secs).min().unwrap_or(0)
    }

    fn request(&self, follow: bool, since_unix_secs: i64) -> LogsRequest {
        let [stdout, stderr] = self.wanted();
        LogsRequest { follow, since_unix_secs, stdout, stderr, tail: None }
    }
}

/// Everything that can be checked without the engine, at once.
fn check_input(stages: &[Stage], options: &ChainOptions) -> Result<(), Problems> {
    let mut problems = match check_stages(stages) {
        Ok(()) => Vec::new(),
        Err(Problems(found)) => found,
    };
    if let Err(why) = check_workdir(&options.workdir) {
        problems.push(Problem::new(None, Some("workdir"), "an existing directory this user can write to", why));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Problems(problems))
    }
}

/// The checks only the engine's host can answer (CPUs, memory, runtimes: see
/// [`crate::spec::ENGINE_CHECKS`]), every problem at once, before anything is created.
async fn check_against_engine(stages: &[Stage], engine: &dyn Engine) -> Result<(), Error> {
    if !stages.iter().any(Stage::needs_engine_check) {
        return Ok(());
    }
    let info = engine.info().await.map_err(|source| Error::Engine { action: "read the engine's CPUs, memory and runtimes", source })?;
    let problems: Vec<Problem> = stages.iter().enumerate().flat_map(|(i, s)| s.check_engine(i, &info)).collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(Problems(problems)))
    }
}

/// Gets one image under the pull policy; the error is the reason, for the caller's message.
async fn get_image(engine: &dyn Engine, image: &str, policy: PullPolicy, sink: &Option<EventSink>) -> Result<ImageSource, String> {
    let present = || async { engine.image_present(image).await.map_err(|e| e.to_string()) };
    match policy {
        PullPolicy::Never => {
            if present().await? {
                Ok(ImageSource::Local)
            } else {
                Err("pull policy is never and the engine does not have it".to_string())
            }
        }
        PullPolicy::IfMissing if present().await? => Ok(ImageSource::Local),
        PullPolicy::IfMissing | PullPolicy::Always => {
            emit(sink, || Event::PullStarted { image: image.to_string() });
            let progress = |progress| emit(sink, || Event::PullProgress { image: image.to_string(), progress });
            match engine.pull(image, &progress).await {
                Ok(()) => Ok(ImageSource::Pulled),
                Err(pull_error) => {
                    if present().await? {
                        Ok(ImageSource::LocalAfterFailedPull(pull_error.to_string()))
                    } else {
                        Err(pull_error.to_string())
                    }
                }
            }
        }
    }
}

/// Unit tests of the runner's logic against [`crate::engine::fake::FakeEngine`] (no Docker), in
/// tokio's paused time: delays are virtual, and a run that would hang is caught by a virtual
/// bound instead of stalling the suite.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::{stamp, Call, FakeEngine, Script, FAKE_ENDPOINT, KILLED_CODE, LOG_EPOCH};
    use crate::events::Event;
    use crate::outcome::StageResult;
    use std::sync::Mutex;
    use tokio::time::Instant as VirtualInstant;

    fn secs(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    /// `n` stages `img-0`, `img-1`, ...; no disk limit, so nothing measures the run directory.
    fn stages(n: usize) -> Vec<Stage> {
        (0..n)
            .map(|i| {
                let mut stage = Stage::new(format!("img-{i}"));
                stage.disk_limit = None;
                stage
            })
            .collect()
    }

    async fn chain(stages: Vec<Stage>, fake: &FakeEngine, workdir: &tempfile::TempDir) -> Chain {
        Chain::with_engine(stages, ChainOptions::default().workdir(workdir.path()), fake.shared()).await.unwrap()
    }

    /// A run bounded by a virtual hour: a hang fails the test rather than stalling it.
    async fn run(chain: &Chain, control: RunControl) -> Result<Vec<StageResult>, Error> {
        tokio::time::timeout(Duration::from_secs(3600), chain.run_with(&BTreeMap::new(), control))
            .await
            .expect("the run hung")
    }

    /// Stage indices of container names (`chainlink-<run>-<index>`), sorted.
    fn indices(names: &[String]) -> Vec<usize> {
        let mut indices: Vec<usize> = names.iter().map(|n| n.rsplit('-').next().unwrap().parse().unwrap()).collect();
        indices.sort();
        indices
    }

    /// Every container the engine made was removed, and none is left.
    fn assert_nothing_left(fake: &FakeEngine) {
        assert_eq!(fake.live(), Vec::<String>::new(), "left behind; calls: {:?}", fake.calls());
        assert_eq!(indices(&fake.created()), indices(&fake.removed()), "calls: {:?}", fake.calls());
    }

    fn outcomes(results: &[StageResult]) -> Vec<Outcome> {
        results.iter().map(|r| r.outcome).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_stage_skips_the_rest_and_its_precreated_container_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        // Slow removals make it visible when each one begins.
        let fake = FakeEngine::new([
            Script::exits(0, secs(1.0)),
            Script::exits(3, secs(2.0)).remove_takes(secs(5.0)),
            Script::default().remove_takes(secs(5.0)),
        ]);
        let chain = chain(stages(3), &fake, &dir).await;
        let began = VirtualInstant::now();
        let results = run(&chain, RunControl::default()).await.unwrap();
        assert_eq!(outcomes(&results), [Outcome::Exited(0), Outcome::Exited(3), Outcome::Skipped]);
        assert_eq!(results[2].state, None);
        // Stage 2's container was made while stage 1 ran (the pre-create), never started, and
        // is gone.
        assert_eq!(indices(&fake.created()), [0, 1, 2]);
        assert_eq!(indices(&fake.started()), [0, 1]);
        assert_nothing_left(&fake);
        // Its removal began as soon as stage 1 failed (at 3 s), alongside stage 1's, rather than
        // after it in the final sweep (which would end at 13 s).
        assert!(began.elapsed() < secs(9.0), "{:?}", began.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn every_path_removes_every_container() {
        // Success.
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeEngine::new([Script::exits(0, secs(1.0)), Script::exits(0, secs(1.0)), Script::exits(0, secs(1.0))]);
        let results = run(&chain(stages(3), &fake, &dir).await, RunControl::default()).await.unwrap();
        assert_eq!(outcomes(&results), [Outcome::Exited(0); 3]);
        assert_eq!(indices(&fake.started()), [0, 1, 2]);
        assert_nothing_left(&fake);

        // A program that cannot start: the stage's failure, the rest skipped.
        let fake = FakeEngine::new([
            Script::exits(0, secs(1.0)),
            Script { exit_code: 127, ..Script::default() }.start_refused(EngineErrorKind::CannotStart),
        ]);
        let results = run(&chain(stages(3), &fake, &dir).await, RunControl::default()).await.unwrap();
        assert_eq!(outcomes(&results), [Outcome::Exited(0), Outcome::StartFailed(127), Outcome::Skipped]);
        assert_nothing_left(&fake);

        // A start the engine refuses: an engine error, after which everything still goes.
        let fake = FakeEngine::new([Script::exits(0, secs(1.0)), Script::default().start_refused(EngineErrorKind::Refused)]);
        match run(&chain(stages(3), &fake, &dir).await, RunControl::default()).await {
            Err(Error::Stage { index: 1, results, source, .. }) => {
                assert_eq!(outcomes(&results), [Outcome::Exited(0)]);
                assert_eq!(source.kind, EngineErrorKind::Refused);
            }
            other => panic!("expected a stage error, got {other:?}"),
        }
        // The start failed before stage 2's container was made.
        assert_eq!(indices(&fake.created()), [0, 1]);
        assert_nothing_left(&fake);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_kills_the_stage() {
        let dir = tempfile::tempdir().unwrap();
        let mut stages = stages(2);
        stages[0].timeout = secs(5.0);
        let script = Script::runs_until_killed().prints(StreamKind::Stdout, secs(1.0), "working\n");
        let fake = FakeEngine::new([script]);
        let chain = chain(stages, &fake, &dir).await;
        let began = VirtualInstant::now();
        let results = run(&chain, RunControl::default()).await.unwrap();
        let took = began.elapsed();
        assert_eq!(outcomes(&results), [Outcome::TimedOut, Outcome::Skipped]);
        assert!(results[0].killed());
        assert_eq!(results[0].exit_code(), Some(KILLED_CODE));
        assert_eq!(indices(&fake.killed()), [0]);
        // Killed at the timeout, not later; its output up to then is kept.
        assert!(took >= secs(5.0) && took < secs(6.0), "{took:?}");
        let stdout = results[0].stdout.as_ref().unwrap();
        assert_eq!(stdout.bytes, format!("{} working\n", stamp(secs(1.0))).into_bytes());
        assert_nothing_left(&fake);
    }

    #[tokio::test(start_paused = true)]
    async fn a_killed_stage_that_never_stops_ends_the_run_within_the_kill_grace() {
        let dir = tempfile::tempdir().unwrap();
        let mut stages = stages(2);
        stages[0].timeout = secs(5.0);
        let fake = FakeEngine::new([Script::runs_until_killed().ignoring_kill()]);
        let chain = chain(stages, &fake, &dir).await;
        let began = VirtualInstant::now();
        let ended = run(&chain, RunControl::default()).await;
        let took = began.elapsed();
        match ended {
            Err(Error::Stage { index: 0, results, source, .. }) => {
                assert!(results.is_empty());
                assert_eq!(source.kind, EngineErrorKind::Timeout, "{source}");
            }
            other => panic!("expected a stage error, got {other:?}"),
        }
        assert_eq!(indices(&fake.killed()), [0]);
        // The timeout, then one kill grace: not a moment of virtual time more.
        assert!(took >= secs(5.0) + KILL_GRACE && took < secs(6.0) + KILL_GRACE, "{took:?}");
        // The removal is forced, so even this container goes.
        assert_nothing_left(&fake);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_during_a_create_still_removes_what_the_create_makes() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeEngine::new([Script::default().create_takes(secs(10.0))]);
        let chain = chain(stages(2), &fake, &dir).await;
        let control = RunControl::default();
        let cancel = control.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(secs(5.0)).await;
            cancel.cancel();
        });
        let began = VirtualInstant::now();
        let ended = run(&chain, control).await;
        assert!(matches!(ended, Err(Error::Cancelled { ref results }) if results.is_empty()), "{ended:?}");
        // The create was answered after the cancel (at 10 s), and the run waited for it.
        assert!(began.elapsed() >= secs(10.0), "{:?}", began.elapsed());
        assert_eq!(indices(&fake.created()), [0]);
        assert_eq!(fake.started(), Vec::<String>::new());
        // Long after: nothing the engine made late is left.
        tokio::time::sleep(secs(60.0)).await;
        assert_nothing_left(&fake);
        let calls = fake.calls();
        let position = |wanted: &dyn Fn(&Call) -> bool| calls.iter().position(wanted).unwrap();
        assert!(
            position(&|c| matches!(c, Call::Created(_))) < position(&|c| matches!(c, Call::Removed(_))),
            "{calls:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_engine_mid_stage_is_an_error_of_that_stage_with_the_results_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeEngine::new([
            Script::exits(0, secs(1.0)),
            Script::exits(0, secs(10.0)).loses_engine_after(secs(2.0)),
            Script::default(),
        ]);
        let chain = chain(stages(3), &fake, &dir).await;
        let began = VirtualInstant::now();
        match run(&chain, RunControl::default()).await {
            Err(Error::Stage { index, image, results, source }) => {
                assert_eq!((index, image.as_str()), (1, "img-1"));
                assert_eq!(outcomes(&results), [Outcome::Exited(0)]);
                assert_eq!(source.kind, EngineErrorKind::Unavailable);
                let lost = format!("lost the connection to the Docker engine at {FAKE_ENDPOINT}: ");
                assert!(source.message.starts_with(&lost), "{}", source.message);
            }
            other => panic!("expected a stage error, got {other:?}"),
        }
        // Ended when the engine went away (1 s + 2 s), not at the stage's own exit.
        assert!(began.elapsed() < secs(4.0), "{:?}", began.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn output_read_again_is_not_duplicated_and_a_full_stream_is_no_longer_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut stages = stages(1);
        // Each chunk is 37 bytes (a 30-character stamp, a space, 6 bytes): three fit.
        stages[0].output_limit = 120;
        let (out, err) = (StreamKind::Stdout, StreamKind::Stderr);
        let script = Script::exits(0, secs(4.0))
            .prints(err, secs(1.0), "err-1\n")
            .prints(out, secs(1.1), "out-a\n")
            .prints(out, secs(1.2), "out-b\n")
            .prints(err, secs(1.25), "err-2\n")
            .prints(out, secs(1.3), "out-c\n")
            // Fills stdout: dropped, and nothing of stdout is read after it.
            .prints(out, secs(1.4), "out-d\n")
            .prints(out, secs(2.0), "out-e\n")
            .prints(err, secs(3.0), "err-3\n")
            .prints(out, secs(3.5), "out-f\n");
        let fake = FakeEngine::new([script]);
        let chain = chain(stages, &fake, &dir).await;
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let sink: EventSink = Arc::new(move |event: &Event| {
            if let Event::Output { stream: StreamKind::Stderr, bytes, .. } = event {
                seen.lock().unwrap().push(bytes.clone());
            }
        });
        let results = run(&chain, RunControl { events: Some(sink), ..Default::default() }).await.unwrap();
        let line = |at: f64, text: &str| format!("{} {text}", stamp(secs(at)));

        // Stderr's first two chunks come again (the re-read starts at their second), and again
        // in the catch-up read at the end: each is kept, and sent as an event, once.
        let expected_stderr = [line(1.0, "err-1\n"), line(1.25, "err-2\n"), line(3.0, "err-3\n")];
        let stderr = results[0].stderr.as_ref().unwrap();
        assert_eq!(String::from_utf8_lossy(&stderr.bytes), expected_stderr.concat());
        let sent: Vec<String> = events.lock().unwrap().iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        assert_eq!(sent, expected_stderr);

        // Stdout keeps its first three chunks; only the one that filled it was dropped: what it
        // printed later (out-e, out-f) was never read.
        let stdout = results[0].stdout.as_ref().unwrap();
        let kept = [line(1.1, "out-a\n"), line(1.2, "out-b\n"), line(1.3, "out-c\n")].concat();
        assert!(String::from_utf8_lossy(&stdout.bytes).starts_with(&kept), "{stdout:?}");
        assert_eq!(stdout.dropped, line(1.4, "out-d\n").len() as u64);
        let follow = |since_unix_secs, stdout| LogsRequest { follow: true, since_unix_secs, stdout, stderr: true, tail: None };
        assert_eq!(
            fake.logs_requests(),
            [
                follow(0, true),
                // Resumed from stderr's latest second, stderr only.
                follow(LOG_EPOCH + 1, false),
                LogsRequest { follow: false, tail: Some(CATCH_UP_LINES), ..follow(0, false) },
            ]
        );
        assert_nothing_left(&fake);
    }
}
