//! A fake engine, in memory, for unit tests of the runner's logic. It is a test double, not a
//! backend: nothing here talks to Docker.
//!
//! Each container follows the [`Script`] of its stage (found by the stage label the runner puts
//! on it): an exit code after a delay, output chunks in `docker logs --timestamps` form, a kill
//! it ignores, a start it refuses, a create that takes time, the whole engine going away at some
//! point. Time is tokio's, so tests run it paused and virtual. Every call is recorded, for tests
//! to assert on what the runner did.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::time::Instant;

use super::{
    ContainerSpec, ContainerState, Engine, EngineError, EngineErrorKind, EngineInfo, LabelledContainer, LogChunk,
    LogsRequest, PullProgress, SharedEngine, StreamKind,
};
use crate::cleanup::LABEL_STAGE;

pub(crate) const FAKE_ENDPOINT: &str = "fake://engine";

/// The Unix second of log offset zero: 2026-11-28T14:00:00Z.
pub(crate) const LOG_EPOCH: i64 = 1_795_874_400;

/// The exit code of a container the fake killed (SIGKILL, as Docker reports it).
pub(crate) const KILLED_CODE: i64 = 137;

/// One chunk of a container's output, due `at` after its start.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub at: Duration,
    pub stream: StreamKind,
    pub text: String,
}

impl Chunk {
    /// The chunk as the engine serves it: `<RFC 3339 stamp with nanoseconds> <text>`.
    pub(crate) fn bytes(&self) -> Bytes {
        Bytes::from(format!("{} {}", stamp(self.at), self.text))
    }

    fn unix_secs(&self) -> i64 {
        LOG_EPOCH + self.at.as_secs() as i64
    }
}

/// The engine's timestamp of log offset `at` (kept under ten hours, so the date never turns).
pub(crate) fn stamp(at: Duration) -> String {
    let secs = at.as_secs();
    assert!(secs < 10 * 3600, "fake log offsets stay within the day");
    format!("2026-11-28T{:02}:{:02}:{:02}.{:09}Z", 14 + secs / 3600, secs / 60 % 60, secs % 60, at.subsec_nanos())
}

/// What a stage's container does.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    pub exit_code: i64,
    /// From start to exit; `None`: until killed.
    pub runs_for: Option<Duration>,
    pub ignores_kill: bool,
    pub output: Vec<Chunk>,
    /// The start fails with this kind (the container stays, created).
    pub start_error: Option<EngineErrorKind>,
    pub create_takes: Duration,
    pub remove_takes: Duration,
    /// The whole engine becomes unreachable this long after this container starts.
    pub loses_engine_after: Option<Duration>,
}

impl Default for Script {
    fn default() -> Self {
        Script::exits(0, Duration::ZERO)
    }
}

impl Script {
    pub(crate) fn exits(code: i64, after: Duration) -> Script {
        Script {
            exit_code: code,
            runs_for: Some(after),
            ignores_kill: false,
            output: Vec::new(),
            start_error: None,
            create_takes: Duration::ZERO,
            remove_takes: Duration::ZERO,
            loses_engine_after: None,
        }
    }

    pub(crate) fn runs_until_killed() -> Script {
        Script { runs_for: None, ..Script::default() }
    }

    pub(crate) fn ignoring_kill(mut self) -> Script {
        self.ignores_kill = true;
        self
    }

    pub(crate) fn prints(mut self, stream: StreamKind, at: Duration, text: &str) -> Script {
        self.output.push(Chunk { at, stream, text: text.to_string() });
        self.output.sort_by_key(|c| c.at);
        self
    }

    pub(crate) fn start_refused(mut self, kind: EngineErrorKind) -> Script {
        self.start_error = Some(kind);
        self
    }

    pub(crate) fn create_takes(mut self, delay: Duration) -> Script {
        self.create_takes = delay;
        self
    }

    pub(crate) fn remove_takes(mut self, delay: Duration) -> Script {
        self.remove_takes = delay;
        self
    }

    pub(crate) fn loses_engine_after(mut self, delay: Duration) -> Script {
        self.loses_engine_after = Some(delay);
        self
    }
}

/// One call the runner made, with the container's name (not its id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    /// A create was sent; `Created` once the container exists.
    Create(String),
    Created(String),
    Start(String),
    Kill(String),
    Logs(String, LogsRequest),
    /// A removal was asked; `Removed` when a container was actually removed.
    Remove(String),
    Removed(String),
}

#[derive(Debug)]
struct Container {
    id: String,
    name: String,
    script: Script,
    labels: BTreeMap<String, String>,
    started: Option<Instant>,
    /// When a kill it obeyed arrived.
    killed: Option<Instant>,
}

impl Container {
    fn stops_at(&self) -> Option<Instant> {
        self.killed.or_else(|| Some(self.started? + self.script.runs_for?))
    }

    /// Its exit code once it has stopped by `now`.
    fn exited(&self, now: Instant) -> Option<i64> {
        let stopped = self.stops_at().is_some_and(|at| at <= now);
        stopped.then(|| if self.killed.is_some() { KILLED_CODE } else { self.script.exit_code })
    }

    /// Whether output chunk `chunk` has been written by `now`.
    fn has_written(&self, chunk: &Chunk, now: Instant) -> bool {
        let Some(started) = self.started else { return false };
        let due = started + chunk.at;
        due <= now && self.stops_at().is_none_or(|stop| due <= stop)
    }
}

#[derive(Debug, Default)]
struct State {
    scripts: BTreeMap<usize, Script>,
    containers: Vec<Container>,
    calls: Vec<Call>,
    lost_at: Option<Instant>,
    created: u64,
}

impl State {
    fn lost(&self, now: Instant) -> bool {
        self.lost_at.is_some_and(|at| at <= now)
    }

    /// The error of every call once the engine is gone.
    fn check(&self, now: Instant) -> Result<(), EngineError> {
        match self.lost(now) {
            true => Err(EngineError::new(EngineErrorKind::Unavailable, "fake: error reading a body from connection")),
            false => Ok(()),
        }
    }

    /// Containers are addressed by id or by name, as Docker's are.
    fn find(&self, id: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.id == id || c.name == id)
    }

    fn find_mut(&mut self, id: &str) -> Option<&mut Container> {
        self.containers.iter_mut().find(|c| c.id == id || c.name == id)
    }

    fn name_of(&self, id: &str) -> String {
        self.find(id).map_or_else(|| id.to_string(), |c| c.name.clone())
    }
}

fn not_found(id: &str) -> EngineError {
    EngineError::new(EngineErrorKind::NotFound, format!("fake: no such container: {id}"))
}

/// The fake engine; clones share one state, so a test keeps one to look at what happened.
#[derive(Debug, Clone)]
pub(crate) struct FakeEngine {
    state: Arc<Mutex<State>>,
    /// Bumped on every change, to wake waits and log follows.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl FakeEngine {
    /// An engine whose stage `i` container follows `scripts[i]` (unscripted: exits 0 at once).
    pub(crate) fn new(scripts: impl IntoIterator<Item = Script>) -> FakeEngine {
        let state = State { scripts: scripts.into_iter().enumerate().collect(), ..Default::default() };
        FakeEngine { state: Arc::new(Mutex::new(state)), changed: Arc::new(tokio::sync::watch::channel(0).0) }
    }

    pub(crate) fn shared(&self) -> SharedEngine {
        Arc::new(self.clone())
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    fn names(&self, pick: impl Fn(&Call) -> Option<&String>) -> Vec<String> {
        self.calls().iter().filter_map(|c| pick(c).cloned()).collect()
    }

    pub(crate) fn created(&self) -> Vec<String> {
        self.names(|c| if let Call::Created(n) = c { Some(n) } else { None })
    }

    pub(crate) fn started(&self) -> Vec<String> {
        self.names(|c| if let Call::Start(n) = c { Some(n) } else { None })
    }

    pub(crate) fn killed(&self) -> Vec<String> {
        self.names(|c| if let Call::Kill(n) = c { Some(n) } else { None })
    }

    pub(crate) fn removed(&self) -> Vec<String> {
        self.names(|c| if let Call::Removed(n) = c { Some(n) } else { None })
    }

    pub(crate) fn logs_requests(&self) -> Vec<LogsRequest> {
        self.calls().into_iter().filter_map(|c| if let Call::Logs(_, r) = c { Some(r) } else { None }).collect()
    }

    /// Names of the containers that exist now.
    pub(crate) fn live(&self) -> Vec<String> {
        self.state.lock().unwrap().containers.iter().map(|c| c.name.clone()).collect()
    }

    fn record(&self, call: Call) {
        self.state.lock().unwrap().calls.push(call);
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Runs `step` until it is done: it returns the answer, or the moment to look again at
    /// (`None`: only after a change).
    async fn until<T>(&self, mut step: impl FnMut(&State, Instant) -> Result<T, Option<Instant>>) -> T {
        let mut changes = self.changed.subscribe();
        loop {
            changes.borrow_and_update();
            let next = match step(&self.state.lock().unwrap(), Instant::now()) {
                Ok(answer) => return answer,
                Err(next) => next,
            };
            match next {
                Some(at) => tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = changes.changed() => {}
                },
                None => {
                    let _ = changes.changed().await;
                }
            }
        }
    }

    fn check(&self) -> Result<(), EngineError> {
        self.state.lock().unwrap().check(Instant::now())
    }
}

fn earliest(times: impl IntoIterator<Item = Option<Instant>>) -> Option<Instant> {
    times.into_iter().flatten().min()
}

#[async_trait]
impl Engine for FakeEngine {
    fn endpoint(&self) -> &str {
        FAKE_ENDPOINT
    }

    async fn local_images(&self) -> Result<Vec<String>, EngineError> {
        self.check()?;
        Ok(Vec::new())
    }

    async fn image_present(&self, _image: &str) -> Result<bool, EngineError> {
        self.check()?;
        Ok(true)
    }

    async fn pull(&self, _image: &str, progress: &(dyn Fn(PullProgress) + Send + Sync)) -> Result<(), EngineError> {
        self.check()?;
        progress(PullProgress { current: 1, total: 1 });
        Ok(())
    }

    async fn create(&self, spec: &ContainerSpec<'_>) -> Result<String, EngineError> {
        self.record(Call::Create(spec.name.clone()));
        self.check()?;
        let index = spec.labels.get(LABEL_STAGE).and_then(|i| i.parse::<usize>().ok());
        let script = index.and_then(|i| self.state.lock().unwrap().scripts.get(&i).cloned()).unwrap_or_default();
        tokio::time::sleep(script.create_takes).await;
        let mut state = self.state.lock().unwrap();
        state.check(Instant::now())?;
        if state.find(&spec.name).is_some() {
            return Err(EngineError::new(EngineErrorKind::Refused, format!("fake: name {} in use", spec.name)));
        }
        state.created += 1;
        let id = format!("fake-{:04}", state.created);
        state.containers.push(Container {
            id: id.clone(),
            name: spec.name.clone(),
            script,
            labels: spec.labels.clone(),
            started: None,
            killed: None,
        });
        state.calls.push(Call::Created(spec.name.clone()));
        drop(state);
        self.bump();
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        let now = Instant::now();
        {
            let mut state = self.state.lock().unwrap();
            let name = state.name_of(id);
            state.calls.push(Call::Start(name));
            state.check(now)?;
            let container = state.find_mut(id).ok_or_else(|| not_found(id))?;
            if let Some(kind) = container.script.start_error {
                return Err(EngineError::new(kind, "fake: exec: \"missing\": executable file not found in $PATH"));
            }
            container.started.get_or_insert(now);
            if let Some(after) = container.script.loses_engine_after {
                let at = now + after;
                state.lost_at = Some(state.lost_at.map_or(at, |t| t.min(at)));
            }
        }
        self.bump();
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<i64, EngineError> {
        self.until(|state, now| {
            if let Err(lost) = state.check(now) {
                return Ok(Err(lost));
            }
            let Some(container) = state.find(id) else { return Ok(Err(not_found(id))) };
            match container.exited(now) {
                Some(code) => Ok(Ok(code)),
                None => Err(earliest([container.stops_at(), state.lost_at])),
            }
        })
        .await
    }

    async fn kill(&self, id: &str) -> Result<(), EngineError> {
        let now = Instant::now();
        {
            let mut state = self.state.lock().unwrap();
            let name = state.name_of(id);
            state.calls.push(Call::Kill(name));
            state.check(now)?;
            let container = state.find_mut(id).ok_or_else(|| not_found(id))?;
            let running = container.started.is_some() && container.exited(now).is_none();
            if running && !container.script.ignores_kill {
                container.killed = Some(now);
            }
        }
        self.bump();
        Ok(())
    }

    fn logs(&self, id: &str, request: LogsRequest) -> BoxStream<'static, Result<LogChunk, EngineError>> {
        let chunks: Vec<Chunk> = {
            let mut state = self.state.lock().unwrap();
            let name = state.name_of(id);
            state.calls.push(Call::Logs(name, request));
            let script = state.find(id).map(|c| c.script.output.clone()).unwrap_or_default();
            let wanted = |c: &Chunk| match c.stream {
                StreamKind::Stdout => request.stdout,
                StreamKind::Stderr => request.stderr,
            };
            // `since` counts whole seconds: what was logged earlier in that second comes again.
            script.into_iter().filter(|c| wanted(c) && c.unix_secs() >= request.since_unix_secs).collect()
        };
        assert!(request.tail.is_none() || !request.follow, "the fake serves a tail only without follow");
        let engine = self.clone();
        let id = id.to_string();
        // (chunks still to serve, the next one's position, whether the stream has ended)
        let start = (chunks, 0usize, false);
        stream::unfold(start, move |(mut chunks, position, ended)| {
            let (engine, id) = (engine.clone(), id.clone());
            async move {
                if ended {
                    return None;
                }
                if position == 0 && !request.follow {
                    // What the engine holds now, its last `tail` lines.
                    let state = engine.state.lock().unwrap();
                    let now = Instant::now();
                    let written = |c: &Chunk| state.find(&id).is_some_and(|container| container.has_written(c, now));
                    chunks.retain(written);
                    if let Some(tail) = request.tail {
                        chunks.drain(..chunks.len().saturating_sub(tail as usize));
                    }
                }
                let next = engine
                    .until(|state, now| {
                        if let Err(lost) = state.check(now) {
                            return Ok(Some(Err(lost)));
                        }
                        let Some(container) = state.find(&id) else {
                            return Ok((position == 0).then(|| Err(not_found(&id))));
                        };
                        let chunk = chunks.get(position);
                        if let Some(chunk) = chunk.filter(|c| !request.follow || container.has_written(c, now)) {
                            return Ok(Some(Ok(LogChunk { stream: chunk.stream, bytes: chunk.bytes() })));
                        }
                        // A follow ends only once the container has stopped (what is due after
                        // that was never written); a plain read ends with what it holds.
                        if !request.follow || container.exited(now).is_some() {
                            return Ok(None);
                        }
                        let due = chunk.and_then(|c| Some(container.started? + c.at));
                        Err(earliest([due, container.stops_at(), state.lost_at]))
                    })
                    .await?;
                let ended = next.is_err();
                Some((next, (chunks, position + 1, ended)))
            }
        })
        .boxed()
    }

    async fn inspect_state(&self, id: &str) -> Result<ContainerState, EngineError> {
        let now = Instant::now();
        let state = self.state.lock().unwrap();
        state.check(now)?;
        let container = state.find(id).ok_or_else(|| not_found(id))?;
        let (status, code) = match (container.started, container.exited(now)) {
            (_, Some(code)) => ("exited", code),
            (Some(_), None) => ("running", 0),
            // A refused start leaves the code a shell would give.
            (None, None) if container.script.start_error.is_some() => ("created", container.script.exit_code),
            (None, None) => ("created", 0),
        };
        let raw = serde_json::json!({
            "Status": status,
            "Running": status == "running",
            "ExitCode": code,
            "OOMKilled": false,
        });
        let serde_json::Value::Object(raw) = raw else { unreachable!("an object literal") };
        Ok(ContainerState { raw })
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let (name, takes) = {
            let mut state = self.state.lock().unwrap();
            let name = state.name_of(id);
            state.calls.push(Call::Remove(name.clone()));
            (name, state.find(id).map_or(Duration::ZERO, |c| c.script.remove_takes))
        };
        tokio::time::sleep(takes).await;
        {
            let mut state = self.state.lock().unwrap();
            state.check(Instant::now())?;
            // Forced, as Docker's: even a container that ignores kills goes.
            let before = state.containers.len();
            state.containers.retain(|c| c.id != id && c.name != id);
            if state.containers.len() < before {
                state.calls.push(Call::Removed(name));
            }
        }
        self.bump();
        Ok(())
    }

    async fn list_labelled(&self, label: &str) -> Result<Vec<LabelledContainer>, EngineError> {
        let state = self.state.lock().unwrap();
        state.check(Instant::now())?;
        let (key, value) = label.split_once('=').map_or((label, None), |(k, v)| (k, Some(v)));
        let matches = |c: &&Container| c.labels.get(key).is_some_and(|v| value.is_none_or(|want| v == want));
        Ok(state
            .containers
            .iter()
            .filter(matches)
            .map(|c| LabelledContainer { id: c.id.clone(), labels: c.labels.clone(), image: None })
            .collect())
    }

    async fn reconnect(&self) -> Result<SharedEngine, EngineError> {
        self.check()?;
        Ok(self.shared())
    }

    async fn container_disk_usage(&self, id: &str) -> Result<Option<u64>, EngineError> {
        let state = self.state.lock().unwrap();
        state.check(Instant::now())?;
        state.find(id).ok_or_else(|| not_found(id))?;
        Ok(Some(0))
    }

    async fn info(&self) -> Result<EngineInfo, EngineError> {
        self.check()?;
        Ok(EngineInfo { cpus: 4, mem_total: 8 << 30, runtimes: vec!["runc".to_string()] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(stage: &'a crate::spec::Stage, index: usize) -> ContainerSpec<'a> {
        ContainerSpec {
            name: format!("chainlink-test-{index}"),
            stage,
            env: Vec::new(),
            job: super::super::JobMount::HostDir("/nonexistent".into()),
            labels: BTreeMap::from([(LABEL_STAGE.to_string(), index.to_string())]),
            user_override: None,
            entrypoint_override: None,
        }
    }

    /// The runner's tests lean on these: a follow serves chunks when due and ends at the stop,
    /// `since` re-serves the whole second, a kill an ignoring container gets changes nothing.
    #[tokio::test(start_paused = true)]
    async fn follows_in_virtual_time_and_obeys_its_script() {
        let secs = Duration::from_secs_f64;
        let script = Script::exits(0, secs(3.0))
            .prints(StreamKind::Stdout, secs(1.5), "a\n")
            .prints(StreamKind::Stderr, secs(2.5), "b\n")
            .prints(StreamKind::Stdout, secs(4.0), "never\n");
        let fake = FakeEngine::new([script, Script::runs_until_killed().ignoring_kill()]);
        let stage = crate::spec::Stage::new("img");
        let (first, second) = (fake.create(&spec(&stage, 0)).await.unwrap(), fake.create(&spec(&stage, 1)).await.unwrap());
        fake.start(&first).await.unwrap();
        let began = Instant::now();
        let all = LogsRequest { follow: true, since_unix_secs: 0, stdout: true, stderr: true, tail: None };
        let chunks: Vec<_> = fake.logs(&first, all).map(|c| c.unwrap().bytes).collect().await;
        assert_eq!(chunks, [format!("{} a\n", stamp(secs(1.5))), format!("{} b\n", stamp(secs(2.5)))]);
        assert_eq!(began.elapsed(), secs(3.0));
        let since = LogsRequest { follow: false, since_unix_secs: LOG_EPOCH + 2, ..all };
        assert_eq!(fake.logs(&first, since).count().await, 1);
        assert_eq!(fake.wait(&first).await.unwrap(), 0);

        fake.start(&second).await.unwrap();
        fake.kill(&second).await.unwrap();
        assert!(tokio::time::timeout(secs(3600.0), fake.wait(&second)).await.is_err());
        fake.remove(&second).await.unwrap();
        assert_eq!(fake.live(), ["chainlink-test-0"]);
    }
}
