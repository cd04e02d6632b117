//! chainlink's benchmarks: chainlink next to the engine's own floor, in one run, interleaved.
//!
//! ```text
//! chainlink-bench [--rounds N] [--sections a,b,c,d,e] [--concurrency 8,32] [--python PATH] [--json FILE]
//! ```
//!
//! - (a) a chain of 20 stages `true`, against the same 20 containers by the plainest bollard loop
//!   (create, start, wait, logs, inspect, remove) and by a loop of `docker run --rm`;
//! - (b) 8 and 32 chains of 3 stages at once, in stages per second, against as many concurrent
//!   bollard loops and `docker run --rm` loops (the engine's ceiling);
//! - (c) one stage printing 100 MiB, run by this binary re-executed (`--child-output`) so that
//!   its wall time and peak memory are its own, against `docker run` with output to /dev/null;
//! - (d) the Python module (`bench/python_bench.py` on `--python`): (a) through `run()`, and 8
//!   chains through `run_async` under `asyncio.gather`;
//! - (e) only when asked (`--sections e`): the cost of `disk_limit` for stages that write
//!   nothing, (a)'s chain and one stage `sleep 10`, each with the default limit and with none.
//!
//! Each round runs every contender of a figure next to the others, in alternating order; the
//! table gives median and min–max per contender and the ratios.

mod child;
mod floor;
mod stats;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use bollard::Docker;
use chainlink::{Chain, ChainOptions, PullPolicy, Stage};
use serde_json::{json, Value};

use crate::child::{client_cpu, cpu_of, engine_pids, machine_cpu, run_measured};
use crate::floor::{bollard_loop, docker_run_command, docker_run_loop, Job, Template};
use crate::stats::{fmt3, paired_ratios, round_order, Summary};

const IMAGE: &str = "chainlink-test/busybox";
const SEQ_STAGES: usize = 20;
const CONC_STAGES: usize = 3;
const CONCURRENCY: [usize; 2] = [8, 32];
const PY_CONCURRENCY: usize = 8;
const OUTPUT_BYTES: u64 = 100 << 20;
/// 70 characters; `yes` adds the newline.
/// The stage of (e) that lives through about ten of the disk limit's measurements.
const SLEEP_SECONDS: u32 = 10;
const OUTPUT_LINE: &str = "chainlink bench output: a line of seventy characters to fill the pipe.";

type Res<T> = Result<T, String>;

struct Args {
    rounds: usize,
    warmup: bool,
    sections: Vec<String>,
    /// How many chains at once in (b).
    concurrency: Vec<usize>,
    python: Option<PathBuf>,
    script: PathBuf,
    json: Option<PathBuf>,
    child_output: Option<PathBuf>,
}

fn usage(code: i32) -> ! {
    eprintln!(
        "usage: chainlink-bench [--rounds N] [--no-warmup] [--sections a,b,c,d,e] [--concurrency 8,32] [--python PATH] \
         [--script bench/python_bench.py] [--json FILE]"
    );
    std::process::exit(code)
}

fn parse_args() -> Args {
    let mut args = Args {
        rounds: 5,
        warmup: true,
        sections: ["a", "b", "c", "d"].map(String::from).to_vec(),
        concurrency: CONCURRENCY.to_vec(),
        python: None,
        script: PathBuf::from("bench/python_bench.py"),
        json: None,
        child_output: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage(2));
        match arg.as_str() {
            "--rounds" => args.rounds = value().parse().unwrap_or_else(|_| usage(2)),
            "--no-warmup" => args.warmup = false,
            "--sections" => args.sections = value().split(',').map(|s| s.trim().to_string()).collect(),
            "--concurrency" => {
                args.concurrency = value().split(',').map(|n| n.trim().parse().unwrap_or_else(|_| usage(2))).collect()
            }
            "--python" => args.python = Some(PathBuf::from(value())),
            "--script" => args.script = PathBuf::from(value()),
            "--json" => args.json = Some(PathBuf::from(value())),
            "--child-output" => args.child_output = Some(PathBuf::from(value())),
            "-h" | "--help" => usage(0),
            _ => usage(2),
        }
    }
    args
}

fn main() {
    let args = parse_args();
    // CHAINLINK_BENCH_RUNTIME=current runs everything on one thread, =one-worker on a
    // multi-thread runtime of one worker (experiment knobs: the CLI and the Python module use
    // multi-thread runtimes of two workers, as the default here on two cores).
    let runtime = match std::env::var("CHAINLINK_BENCH_RUNTIME").as_deref() {
        Ok("current") => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Ok("one-worker") => tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build(),
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
    .expect("tokio runtime");
    let code = match &args.child_output {
        Some(workdir) => runtime.block_on(child_output(workdir)),
        None => runtime.block_on(bench(&args)),
    };
    // Dropped before exiting: chains still running in spawned tasks (a stopped bench) are
    // dropped with it, and chainlink's runs remove what they hold when dropped.
    drop(runtime);
    if args.child_output.is_none() {
        // Again: a run dropped above may have made its directory after the first removal.
        let _ = std::fs::remove_dir_all(bench_workdir());
    }
    if let Err(e) = code {
        eprintln!("chainlink-bench: {e}");
        std::process::exit(1);
    }
}

fn output_command() -> Vec<String> {
    vec!["sh".into(), "-c".into(), format!("yes '{OUTPUT_LINE}' | head -c {OUTPUT_BYTES}")]
}

/// `--child-output WORKDIR`: the whole life of a one-stage chain printing 100 MiB (connect,
/// construct, run), in this process alone; one JSON line on stdout.
async fn child_output(workdir: &Path) -> Res<()> {
    let started = Instant::now();
    let stage = Stage::new(IMAGE).entrypoint(output_command());
    let chain = Chain::new(vec![stage], ChainOptions::default().workdir(workdir).pull(PullPolicy::Never))
        .await
        .map_err(|e| e.to_string())?;
    let ran = Instant::now();
    let results = chain.run(&BTreeMap::new()).await.map_err(|e| e.to_string())?;
    let run_seconds = ran.elapsed().as_secs_f64();
    let result = &results[0];
    if !result.success() {
        return Err(format!("the output stage failed: {:?}", result.outcome));
    }
    let stdout = result.stdout.as_ref().ok_or("no stdout kept")?;
    let line = json!({
        "total_seconds": started.elapsed().as_secs_f64(),
        "run_seconds": run_seconds,
        "kept": stdout.bytes.len(),
        "dropped": stdout.dropped,
    });
    println!("{line}");
    Ok(())
}

/// The Python side, kept running across rounds: one command line in, one JSON line out.
struct Python {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Python {
    fn start(python: &Path, script: &Path, workdir: &Path) -> Res<Python> {
        let mut child = Command::new(python)
            .arg(script)
            .args(["--workdir".as_ref(), workdir.as_os_str()])
            .args(["--image", IMAGE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Ok(Python { child, stdin, stdout })
    }

    /// Sends `command`; returns the seconds it took and the CPU seconds Python spent in it.
    fn ask(&mut self, command: &str) -> Res<(f64, f64)> {
        writeln!(self.stdin, "{command}").map_err(|e| format!("python: {e}"))?;
        self.stdin.flush().map_err(|e| format!("python: {e}"))?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| format!("python: {e}"))?;
        let answer: Value = serde_json::from_str(&line).map_err(|e| format!("python answered {line:?}: {e}"))?;
        match answer.get("seconds").and_then(Value::as_f64) {
            Some(seconds) => Ok((seconds, answer.get("cpu").and_then(Value::as_f64).unwrap_or(f64::NAN))),
            None => Err(format!("python: {command}: {}", answer.get("error").unwrap_or(&answer))),
        }
    }

    fn quit(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

impl Drop for Python {
    /// Not quit (the bench was stopped): interrupted as Ctrl-C would, so that its run in
    /// progress cleans up, and waited for.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: a signal to our own child, by its pid.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
            let _ = self.child.wait();
        }
    }
}

/// One contender's samples in one figure.
struct Contender {
    name: &'static str,
    samples: Vec<f64>,
    /// CPU seconds `dockerd` and `containerd` used during each sample.
    engine_cpu: Vec<f64>,
    /// CPU seconds the client used during each sample: this process and its children (the
    /// `docker` CLI, the re-executed chain), or the Python process.
    client_cpu: Vec<f64>,
    /// How busy the machine's CPUs were during each sample, 0 to 1 (everything running on it,
    /// other users included).
    busy: Vec<f64>,
}

/// A figure: its contenders and what a sample is.
struct Figure {
    key: &'static str,
    /// Chains at once, in (b).
    concurrency: usize,
    title: String,
    unit: &'static str,
    contenders: Vec<Contender>,
    /// Other per-round numbers worth reporting (peak memory, bytes).
    extra: BTreeMap<&'static str, Vec<f64>>,
}

impl Figure {
    fn new(key: &'static str, title: String, unit: &'static str, names: &[&'static str]) -> Figure {
        let contenders = names.iter().map(|&name| Contender { name, samples: Vec::new(), engine_cpu: Vec::new(), client_cpu: Vec::new(), busy: Vec::new() }).collect();
        Figure { key, concurrency: 1, title, unit, contenders, extra: BTreeMap::new() }
    }

    /// `a`, `b8`, `b32`, `c`.
    fn label(&self) -> String {
        match self.key {
            "b" => format!("b{}", self.concurrency),
            key => key.to_string(),
        }
    }

    fn samples(&self, name: &str) -> &[f64] {
        self.contenders.iter().find(|c| c.name == name).map_or(&[], |c| &c.samples)
    }
}

struct Bench {
    docker: Docker,
    template: Template,
    seq_chain: Chain,
    conc_chain: Chain,
    python: Option<Python>,
    /// (e): (a)'s chain without a disk limit, and the `sleep` stage with the default and none.
    disk: Option<[Chain; 3]>,
    /// CPU seconds of the latest Python command.
    python_cpu: f64,
    workdir: PathBuf,
    job_dir: PathBuf,
}

const CHAIN: &str = "chain (Rust)";
const BOLLARD: &str = "plain bollard loop";
const DOCKER_RUN: &str = "docker run --rm loop";
const PYTHON: &str = "chain (Python)";
const BOLLARD_LOGS: &str = "bollard, logs followed";
const DOCKER_RUN_NULL: &str = "docker run > /dev/null";
/// The chain's child on a current-thread runtime (an experiment: where the client's CPU goes).
const CHAIN_CURRENT: &str = "chain, 1-thread runtime";
const TRUE_LIMIT: &str = "20 x true, disk_limit 1g";
const TRUE_NONE: &str = "20 x true, disk_limit null";
const SLEEP_LIMIT: &str = "sleep 10, disk_limit 1g";
const SLEEP_NONE: &str = "sleep 10, disk_limit null";

impl Bench {
    fn true_argv() -> Vec<String> {
        vec!["true".to_string()]
    }

    async fn seq(&mut self, contender: &str) -> Res<f64> {
        let argv = Self::true_argv();
        let job = Job { template: &self.template, argv: &argv, dir: &self.job_dir };
        let started = Instant::now();
        match contender {
            CHAIN => check_run(self.seq_chain.run(&BTreeMap::new()).await)?,
            BOLLARD => bollard_loop(&self.docker, &job, SEQ_STAGES).await?,
            DOCKER_RUN => docker_run_loop(&job, SEQ_STAGES)?,
            PYTHON => {
                let (seconds, cpu) = self.python.as_mut().ok_or("no python")?.ask(&format!("seq {SEQ_STAGES}"))?;
                self.python_cpu = cpu;
                return Ok(seconds);
            }
            other => unreachable!("{other}"),
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Stages per second of `n` chains (or loops) of 3 stages at once.
    async fn conc(&mut self, contender: &str, n: usize) -> Res<f64> {
        let stages = (n * CONC_STAGES) as f64;
        let started = Instant::now();
        match contender {
            CHAIN => {
                let runs: Vec<_> = (0..n)
                    .map(|_| {
                        let chain = self.conc_chain.clone();
                        tokio::spawn(async move { check_run(chain.run(&BTreeMap::new()).await) })
                    })
                    .collect();
                for run in runs {
                    run.await.map_err(|e| e.to_string())??;
                }
            }
            BOLLARD => {
                let shared = Arc::new((self.template.clone(), self.job_dir.clone()));
                let loops: Vec<_> = (0..n)
                    .map(|_| {
                        let docker = self.docker.clone();
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let argv = Self::true_argv();
                            let (template, dir) = &*shared;
                            bollard_loop(&docker, &Job { template, argv: &argv, dir }, CONC_STAGES).await
                        })
                    })
                    .collect();
                for l in loops {
                    l.await.map_err(|e| e.to_string())??;
                }
            }
            DOCKER_RUN => {
                let argv = Self::true_argv();
                let job = Job { template: &self.template, argv: &argv, dir: &self.job_dir };
                std::thread::scope(|scope| {
                    let loops: Vec<_> = (0..n).map(|_| scope.spawn(|| docker_run_loop(&job, CONC_STAGES))).collect();
                    loops.into_iter().map(|l| l.join().unwrap_or_else(|_| Err("panicked".into()))).collect::<Res<Vec<()>>>()
                })?;
            }
            PYTHON => {
                let (seconds, cpu) = self.python.as_mut().ok_or("no python")?.ask(&format!("gather {n} {CONC_STAGES}"))?;
                self.python_cpu = cpu;
                return Ok(stages / seconds);
            }
            other => unreachable!("{other}"),
        }
        Ok(stages / started.elapsed().as_secs_f64())
    }

    /// Wall seconds of one run of an (e) chain.
    async fn disk(&mut self, contender: &str) -> Res<f64> {
        let [true_none, sleep_limit, sleep_none] = self.disk.as_ref().ok_or("no (e) chains")?;
        let chain = match contender {
            TRUE_LIMIT => &self.seq_chain,
            TRUE_NONE => true_none,
            SLEEP_LIMIT => sleep_limit,
            SLEEP_NONE => sleep_none,
            other => unreachable!("{other}"),
        };
        let started = Instant::now();
        check_run(chain.run(&BTreeMap::new()).await)?;
        Ok(started.elapsed().as_secs_f64())
    }

    /// Wall seconds of the 100 MiB stage; extra numbers go into `extra`.
    async fn output(&mut self, contender: &str, extra: &mut BTreeMap<&'static str, Vec<f64>>) -> Res<f64> {
        let argv = output_command();
        let job = Job { template: &self.template, argv: &argv, dir: &self.job_dir };
        match contender {
            CHAIN | CHAIN_CURRENT => {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let mut command = Command::new(exe);
                command.arg("--child-output").arg(&self.workdir);
                let current = contender == CHAIN_CURRENT;
                command.env("CHAINLINK_BENCH_RUNTIME", if current { "current" } else { "multi" });
                let measured = tokio::task::spawn_blocking(move || run_measured(command, true))
                    .await
                    .map_err(|e| e.to_string())??;
                if !measured.success {
                    return Err("the chain's child process failed".into());
                }
                let report: Value = serde_json::from_str(measured.stdout.trim()).map_err(|e| e.to_string())?;
                let number = |key: &str| report.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
                let (rss, alone, seen) = match current {
                    false => ("chain peak RSS, MiB", "chain run() alone, s", "chain output seen, MiB"),
                    true => ("1-thread peak RSS, MiB", "1-thread run() alone, s", "1-thread output seen, MiB"),
                };
                extra.entry(rss).or_default().push(measured.max_rss as f64 / (1 << 20) as f64);
                extra.entry(alone).or_default().push(number("run_seconds"));
                extra.entry(seen).or_default().push((number("kept") + number("dropped")) / (1 << 20) as f64);
                Ok(measured.seconds)
            }
            DOCKER_RUN_NULL => {
                let mut command = docker_run_command(&job);
                command.stdout(Stdio::null());
                let measured = tokio::task::spawn_blocking(move || run_measured(command, false))
                    .await
                    .map_err(|e| e.to_string())??;
                if !measured.success {
                    return Err("docker run of the output stage failed".into());
                }
                extra.entry("docker CLI peak RSS, MiB").or_default().push(measured.max_rss as f64 / (1 << 20) as f64);
                Ok(measured.seconds)
            }
            BOLLARD_LOGS => {
                let started = Instant::now();
                let bytes = floor::bollard_followed(&self.docker, &job).await?;
                extra.entry("bollard output seen, MiB").or_default().push(bytes as f64 / (1 << 20) as f64);
                Ok(started.elapsed().as_secs_f64())
            }
            other => unreachable!("{other}"),
        }
    }
}

fn check_run(ran: Result<Vec<chainlink::StageResult>, chainlink::Error>) -> Res<()> {
    let results = ran.map_err(|e| e.to_string())?;
    match results.iter().find(|r| !r.success()) {
        Some(r) => Err(format!("stage {} failed: {:?}", r.index, r.outcome)),
        None => Ok(()),
    }
}

/// Where this process's chains make their run directories and the floor's `/job` is.
fn bench_workdir() -> PathBuf {
    std::env::temp_dir().join(format!("chainlink-bench-{}", std::process::id()))
}

async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

async fn bench(args: &Args) -> Res<()> {
    let docker = Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
    let docker = docker.negotiate_version().await.map_err(|e| format!("engine: {e}"))?;
    docker.inspect_image(IMAGE).await.map_err(|e| format!("{IMAGE}: {e} (run scripts/build-test-images.sh)"))?;
    let workdir = bench_workdir();
    let job_dir = workdir.join("job");
    std::fs::create_dir_all(&job_dir).map_err(|e| format!("{}: {e}", job_dir.display()))?;
    // On SIGINT or SIGTERM the run in progress is dropped (chainlink's runs clean up after
    // themselves when dropped), then the floor's containers and the work directory go.
    let mut report = Report::default();
    let ran = tokio::select! {
        ran = bench_in(args, docker.clone(), &workdir, &job_dir, &mut report) => ran,
        signal = stop_signal() => Err(format!("stopped by {signal}")),
    };
    // What was measured is reported even when the bench was stopped: complete rounds only.
    let written = report.finish(args, ran.as_ref().err());
    let left = floor::remove_leftovers(&docker).await;
    if left > 0 {
        eprintln!("removed {left} leftover floor container(s)");
    }
    let _ = std::fs::remove_dir_all(&workdir);
    ran.and(written)
}

/// The figures measured so far.
#[derive(Default)]
struct Report {
    figures: Vec<Figure>,
    /// Rounds every contender of every figure has a sample of.
    rounds_done: usize,
    load_start: String,
}

impl Report {
    /// Prints the table (complete rounds only) and writes the raw samples.
    fn finish(&mut self, args: &Args, stopped: Option<&String>) -> Res<()> {
        if self.figures.is_empty() {
            return Ok(());
        }
        let n = self.rounds_done;
        for f in self.figures.iter_mut() {
            for c in f.contenders.iter_mut() {
                for v in [&mut c.samples, &mut c.engine_cpu, &mut c.client_cpu, &mut c.busy] {
                    v.truncate(n);
                }
            }
            for v in f.extra.values_mut() {
                v.truncate(n);
            }
        }
        let load_end = load();
        let mut table = render(&self.figures, n, &self.load_start, &load_end);
        if let Some(why) = stopped {
            table = format!("\n(incomplete: {why}; {n} of {} rounds done){table}", args.rounds);
        }
        println!("{table}");
        let Some(path) = &args.json else { return Ok(()) };
        let raw = json!({
            "rounds": n,
            "rounds_asked": args.rounds,
            "load_start": self.load_start,
            "load_end": load_end,
            "figures": self.figures.iter().map(|f| json!({
                "key": f.key,
                "concurrency": f.concurrency,
                "title": f.title,
                "unit": f.unit,
                "samples": f.contenders.iter().map(|c| (c.name.to_string(), json!(c.samples))).collect::<serde_json::Map<_, _>>(),
                "engine_cpu": f.contenders.iter().map(|c| (c.name.to_string(), json!(c.engine_cpu))).collect::<serde_json::Map<_, _>>(),
                "client_cpu": f.contenders.iter().map(|c| (c.name.to_string(), json!(c.client_cpu))).collect::<serde_json::Map<_, _>>(),
                "machine_busy": f.contenders.iter().map(|c| (c.name.to_string(), json!(c.busy))).collect::<serde_json::Map<_, _>>(),
                "extra": f.extra.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&raw).unwrap()).map_err(|e| format!("{}: {e}", path.display()))
    }
}

async fn bench_in(args: &Args, docker: Docker, workdir: &Path, job_dir: &Path, report: &mut Report) -> Res<()> {
    let has = |s: &str| args.sections.iter().any(|x| x == s);
    let options = ChainOptions::default().workdir(workdir).pull(PullPolicy::Never);
    let trivial = |n: usize| vec![Stage::new(IMAGE).entrypoint(["true"]); n];
    let template = Template::probe(&docker, IMAGE, workdir).await?;
    eprintln!("containers as chainlink makes them; log driver {}", template.log_driver());
    let seq_chain = Chain::new(trivial(SEQ_STAGES), options.clone()).await.map_err(|e| e.to_string())?;
    let conc_chain = Chain::new(trivial(CONC_STAGES), options.clone()).await.map_err(|e| e.to_string())?;
    let disk = match has("e") {
        true => {
            let unlimited = |mut stage: Stage| {
                stage.disk_limit = None;
                stage
            };
            let sleep = Stage::new(IMAGE).entrypoint(["sleep".to_string(), SLEEP_SECONDS.to_string()]);
            let new = |stages: Vec<Stage>| Chain::new(stages, options.clone());
            Some([
                new(trivial(SEQ_STAGES).into_iter().map(unlimited).collect()).await.map_err(|e| e.to_string())?,
                new(vec![sleep.clone()]).await.map_err(|e| e.to_string())?,
                new(vec![unlimited(sleep)]).await.map_err(|e| e.to_string())?,
            ])
        }
        false => None,
    };
    let python = match (&args.python, has("d")) {
        (Some(python), true) => Some(Python::start(python, &args.script, workdir)?),
        _ => None,
    };
    let with_python = python.is_some();
    let mut bench = Bench { docker, template, seq_chain, conc_chain, python, disk, python_cpu: 0.0, workdir: workdir.to_path_buf(), job_dir: job_dir.to_path_buf() };

    let figures = &mut report.figures;
    if has("a") {
        let mut names = vec![CHAIN, BOLLARD, DOCKER_RUN];
        if with_python {
            names.push(PYTHON);
        }
        figures.push(Figure::new("a", format!("(a) {SEQ_STAGES} stages `true` in sequence"), "s", &names));
    }
    if has("b") {
        for &n in &args.concurrency {
            let mut names = vec![CHAIN, BOLLARD, DOCKER_RUN];
            if with_python && n == PY_CONCURRENCY {
                names.push(PYTHON);
            }
            let mut figure = Figure::new("b", format!("(b) {n} chains x {CONC_STAGES} stages at once"), "stages/s", &names);
            figure.concurrency = n;
            figures.push(figure);
        }
    }
    if has("c") {
        figures.push(Figure::new("c", "(c) one stage printing 100 MiB".into(), "s", &[CHAIN, DOCKER_RUN_NULL, BOLLARD_LOGS, CHAIN_CURRENT]));
    }
    if has("e") {
        let title = "(e) disk_limit on stages that write nothing".to_string();
        figures.push(Figure::new("e", title, "s", &[TRUE_LIMIT, TRUE_NONE, SLEEP_LIMIT, SLEEP_NONE]));
    }

    let engine = engine_pids();
    if engine.is_empty() {
        eprintln!("dockerd and containerd not found in /proc: engine CPU will read 0");
    }
    report.load_start = load();
    eprintln!("load average at start: {}", report.load_start);
    let passes: Vec<Option<usize>> = if args.warmup { vec![None] } else { vec![] };
    let passes = passes.into_iter().chain((0..args.rounds).map(Some));
    for pass in passes {
        let label = pass.map_or("warm-up".to_string(), |r| format!("round {}/{}", r + 1, args.rounds));
        for figure in report.figures.iter_mut() {
            let order = round_order(figure.contenders.len(), pass.unwrap_or(0));
            let mut extra = BTreeMap::new();
            for i in order {
                let name = figure.contenders[i].name;
                let (engine_before, client_before, machine_before) = (cpu_of(&engine), client_cpu(), machine_cpu());
                bench.python_cpu = 0.0;
                let value = match figure.key {
                    "a" => bench.seq(name).await,
                    "b" => bench.conc(name, figure.concurrency).await,
                    "c" => bench.output(name, &mut extra).await,
                    "e" => bench.disk(name).await,
                    _ => unreachable!(),
                }
                .map_err(|e| format!("{} / {name}: {e}", figure.label()))?;
                let engine_used = cpu_of(&engine) - engine_before;
                let client_used = client_cpu() - client_before + bench.python_cpu;
                let busy = machine_before.busy_until(&machine_cpu());
                eprintln!(
                    "{label:>12}  {:<4} {name:<24} {:>6} {:<8} (CPU s: engine {}, client {}; machine {:.0}% busy)",
                    figure.label(),
                    fmt3(value),
                    figure.unit,
                    fmt3(engine_used),
                    fmt3(client_used),
                    busy * 100.0
                );
                if pass.is_some() {
                    let contender = &mut figure.contenders[i];
                    contender.samples.push(value);
                    contender.engine_cpu.push(engine_used);
                    contender.client_cpu.push(client_used);
                    contender.busy.push(busy);
                }
            }
            if pass.is_some() {
                for (k, v) in extra {
                    figure.extra.entry(k).or_default().extend(v);
                }
            }
        }
        if pass.is_some() {
            report.rounds_done += 1;
        }
    }
    if let Some(python) = bench.python.take() {
        python.quit();
    }
    Ok(())
}

fn summary_cell(samples: &[f64]) -> String {
    match Summary::of(samples) {
        Some(s) => format!("{:>8}  {:>8} – {:<8}", fmt3(s.median), fmt3(s.min), fmt3(s.max)),
        None => "-".into(),
    }
}

/// A ratio line: `num / den` by medians, with the min–max of the round-by-round ratios, and
/// whether it meets its target.
fn ratio_line(name: &str, num: &[f64], den: &[f64], target: Option<(&str, f64)>) -> String {
    let (Some(n), Some(d)) = (Summary::of(num), Summary::of(den)) else { return format!("  {name}: -") };
    let ratio = n.median / d.median;
    let rounds = Summary::of(&paired_ratios(num, den));
    let spread = rounds.map_or(String::new(), |r| format!(" (per round {}–{})", fmt3(r.min), fmt3(r.max)));
    let verdict = match target {
        Some(("<=", t)) => format!("  target <= {t}: {}", if ratio <= t { "met" } else { "MISSED" }),
        Some((_, t)) => format!("  target >= {t}: {}", if ratio >= t { "met" } else { "MISSED" }),
        None => String::new(),
    };
    format!("  {name:<46} {:>6}{spread}{verdict}", fmt3(ratio))
}

/// Per round, the better of the two floor contenders (the engine's ceiling in stages/s).
fn ceiling(figure: &Figure) -> Vec<f64> {
    let (a, b) = (figure.samples(BOLLARD), figure.samples(DOCKER_RUN));
    a.iter().zip(b).map(|(x, y)| x.max(*y)).collect()
}

fn render(figures: &[Figure], rounds: usize, load_start: &str, load_end: &str) -> String {
    let mut out = String::new();
    out += &format!("\nchainlink-bench: {rounds} round(s); load average {load_start} at start, {load_end} at end\n");
    for f in figures {
        out += &format!("\n{} [{}]          median       min – max\n", f.title, f.unit);
        for c in &f.contenders {
            out += &format!("  {:<28}{}\n", c.name, summary_cell(&c.samples));
        }
        out += "  per sample (medians)          CPU s: engine  client   machine busy\n";
        for c in &f.contenders {
            let median = |v: &[f64], f: &dyn Fn(f64) -> String| Summary::of(v).map_or("-".to_string(), |s| f(s.median));
            out += &format!(
                "    {:<30}{:>13}{:>8}{:>14}\n",
                c.name,
                median(&c.engine_cpu, &fmt3),
                median(&c.client_cpu, &fmt3),
                median(&c.busy, &|b| format!("{:.0}%", b * 100.0))
            );
        }
        for (k, v) in &f.extra {
            out += &format!("  {k:<28}{}\n", summary_cell(v));
        }
        match f.key {
            "a" => {
                out += &ratio_line("chain / plain bollard loop", f.samples(CHAIN), f.samples(BOLLARD), Some(("<=", 1.0)));
                out += "\n";
                out += &ratio_line("chain / docker run loop", f.samples(CHAIN), f.samples(DOCKER_RUN), None);
                out += "\n";
                if !f.samples(PYTHON).is_empty() {
                    out += &ratio_line("Python run() / Rust chain", f.samples(PYTHON), f.samples(CHAIN), Some(("<=", 1.05)));
                    out += "\n";
                }
            }
            "b" => {
                let ceil = ceiling(f);
                out += &ratio_line("chain / ceiling (best floor of the round)", f.samples(CHAIN), &ceil, Some((">=", 0.95)));
                out += "\n";
                out += &ratio_line("chain / concurrent bollard loops", f.samples(CHAIN), f.samples(BOLLARD), None);
                out += "\n";
                out += &ratio_line("chain / concurrent docker run loops", f.samples(CHAIN), f.samples(DOCKER_RUN), None);
                out += "\n";
                if !f.samples(PYTHON).is_empty() {
                    out += &ratio_line("Python gather / Rust chains", f.samples(PYTHON), f.samples(CHAIN), Some((">=", 0.9)));
                    out += "\n";
                }
            }
            "c" => {
                out += &ratio_line("chain / docker run > /dev/null", f.samples(CHAIN), f.samples(DOCKER_RUN_NULL), Some(("<=", 1.2)));
                out += "\n";
                out += &ratio_line("chain / bollard with logs followed", f.samples(CHAIN), f.samples(BOLLARD_LOGS), None);
                out += "\n";
                out += &ratio_line("chain on a 1-thread runtime / docker run", f.samples(CHAIN_CURRENT), f.samples(DOCKER_RUN_NULL), None);
                out += "\n";
                if let Some(rss) = f.extra.get("chain peak RSS, MiB").and_then(|v| Summary::of(v)) {
                    let verdict = if rss.max <= 64.0 { "met" } else { "MISSED" };
                    out += &format!("  chain peak RSS (max of rounds) {:>6} MiB  target <= 64 MiB: {verdict}\n", fmt3(rss.max));
                }
            }
            "e" => {
                out += &ratio_line("20 x true: with the limit / without", f.samples(TRUE_LIMIT), f.samples(TRUE_NONE), None);
                out += "\n";
                out += &ratio_line("sleep: with the limit / without", f.samples(SLEEP_LIMIT), f.samples(SLEEP_NONE), None);
                out += "\n";
                let engine = |name: &str| f.contenders.iter().find(|c| c.name == name).map_or(&[][..], |c| &c.engine_cpu[..]);
                out += &ratio_line("sleep: engine CPU with the limit / without", engine(SLEEP_LIMIT), engine(SLEEP_NONE), None);
                out += "\n";
            }
            _ => {}
        }
    }
    out
}
