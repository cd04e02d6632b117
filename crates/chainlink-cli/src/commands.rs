//! The subcommands: `run`, `validate` and `gc`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

use chainlink::{
    sweep_dead_runs, CancellationToken, Chain, ChainOptions, DockerEngine, Error, RunControl, StageResult,
};
use serde_json::Value;

use crate::args::{Command, GcArgs, RunArgs, ValidateArgs};
use crate::ending::Ending;
use crate::input;
use crate::render::{Renderer, Style};
use crate::signals::Signals;

pub async fn dispatch(command: Command) -> Ending {
    match command {
        Command::Run(args) => run(args).await,
        Command::Validate(args) => validate(&args),
        Command::Gc(args) => gc(&args).await,
    }
}

async fn run(args: RunArgs) -> Ending {
    let file = match input::load(&args.file) {
        Ok(file) => file,
        Err(message) => return Ending::Input(message),
    };
    let workdir = input::workdir(args.workdir.as_deref(), &file, &args.file);
    let environ = input::environment(&file, &args.env);
    if let Some(dir) = &args.logs_dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return Ending::Input(format!("cannot create the logs directory {}: {e}", dir.display()));
        }
    }
    let style = Style { quiet: args.quiet, follow: args.follow, terminal: std::io::stderr().is_terminal() };
    let renderer = Arc::new(Renderer::new(style, &file.stages));
    let cancel = CancellationToken::new();
    let signals = match Signals::install(cancel.clone(), renderer.clone()) {
        Ok(signals) => signals,
        Err(e) => return Ending::Input(format!("cannot handle signals: {e}")),
    };

    let prepare = async {
        let engine = DockerEngine::connect().await.map_err(Error::EngineUnavailable)?;
        let images = distinct_images(&file.stages);
        // What dead runs left is not this run's business: a sweep that fails, or that cannot
        // remove something, is a warning and the run goes on.
        match sweep_dead_runs(&engine, &workdir, &images).await {
            Ok(report) => {
                renderer.swept(&report);
                for failure in &report.failures {
                    renderer.note(&format!("chainlink: warning: could not remove what a dead run left: {failure}"));
                }
            }
            Err(e) => renderer.note(&format!("chainlink: warning: failed to sweep what dead runs left: {e}")),
        }
        let options = ChainOptions::default().workdir(&workdir).pull(args.pull.into()).events(renderer.sink());
        Chain::with_engine(file.stages.clone(), options, Arc::new(engine)).await
    };
    // Construction (connection, pulls) creates nothing to clean up: a signal just ends it.
    let chain = tokio::select! {
        chain = prepare => chain,
        () = cancel.cancelled() => {
            renderer.finish();
            return Ending::Interrupted(signals.received());
        }
    };
    let chain = match chain {
        Ok(chain) => chain,
        Err(error) => {
            renderer.finish();
            return Ending::Library(error);
        }
    };

    let ran = chain.run_with(&environ, RunControl { cancel, events: None }).await;
    renderer.finish();
    let (results, mut ending) = match ran {
        Ok(results) => {
            let ending = if results.iter().all(StageResult::success) { Ending::Success } else { Ending::StageFailed };
            (results, ending)
        }
        Err(Error::Cancelled { results }) => (results, Ending::Interrupted(signals.received())),
        Err(error @ Error::Invalid(_)) => return Ending::Library(error),
        Err(error) => (error.partial_results().to_vec(), Ending::Library(error)),
    };
    if let Some(dir) = &args.logs_dir {
        if let Err(message) = write_logs(dir, &results) {
            if matches!(ending, Ending::Success | Ending::StageFailed) {
                ending = Ending::Input(message);
            } else {
                let _ = writeln!(std::io::stderr(), "chainlink: error: {message}");
            }
        }
    }
    if args.json {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer_pretty(&mut out, &results_json(&results));
        let _ = writeln!(out);
    }
    ending
}

fn validate(args: &ValidateArgs) -> Ending {
    match input::load(&args.file) {
        Ok(file) => {
            let n = file.stages.len();
            println!("ok: {n} stage{}", if n == 1 { "" } else { "s" });
            // What only the engine can tell is checked when a run connects, before anything
            // is created; say so rather than let "ok" promise it.
            let unchecked: Vec<usize> =
                file.stages.iter().enumerate().filter(|(_, s)| s.needs_engine_check()).map(|(i, _)| i).collect();
            if !unchecked.is_empty() {
                let stages: Vec<String> = unchecked.iter().map(|i| format!("stages[{i}]")).collect();
                eprintln!(
                    "note: not checked without an engine (checked when a run connects): {} for {}",
                    chainlink::spec::ENGINE_CHECKS.join("; "),
                    stages.join(", ")
                );
            }
            Ending::Success
        }
        Err(message) => Ending::Input(message),
    }
}

async fn gc(args: &GcArgs) -> Ending {
    let workdir = args.workdir.as_deref().map_or_else(std::env::temp_dir, input::absolute);
    let refused = match std::fs::metadata(&workdir) {
        Ok(meta) if meta.is_dir() => None,
        Ok(_) => Some("expected a directory, found a file".to_string()),
        Err(e) => Some(format!("expected an existing directory: {e}")),
    };
    if let Some(why) = refused {
        return Ending::Input(format!("--workdir {}: {why}", workdir.display()));
    }
    let engine = match DockerEngine::connect().await {
        Ok(engine) => engine,
        Err(e) => return Ending::Library(Error::EngineUnavailable(e)),
    };
    let report = match sweep_dead_runs(&engine, &workdir, &args.cleanup_images).await {
        Ok(report) => report,
        Err(e) => return Ending::Cleanup(e),
    };
    // Written, not printed: a closed standard output must not panic the sweep's report away.
    let mut out = std::io::stdout().lock();
    for id in &report.containers {
        let _ = writeln!(out, "removed container {id}");
    }
    for dir in &report.directories {
        let _ = writeln!(out, "removed directory {}", dir.display());
    }
    if report.containers.is_empty() && report.directories.is_empty() && report.failures.is_empty() {
        let _ = writeln!(out, "nothing to remove");
    }
    let _ = out.flush();
    let mut err = std::io::stderr().lock();
    for failure in &report.failures {
        let _ = writeln!(err, "chainlink: could not remove {failure}");
    }
    if report.failures.is_empty() {
        Ending::Success
    } else {
        Ending::Unremoved(report.failures.len())
    }
}

fn distinct_images(stages: &[chainlink::Stage]) -> Vec<String> {
    let mut images: Vec<String> = Vec::new();
    for stage in stages {
        if !images.contains(&stage.image) {
            images.push(stage.image.clone());
        }
    }
    images
}

/// One object per stage: the library's fields plus `logs` as UTF-8 text (null when the stage
/// keeps no logs).
fn results_json(results: &[StageResult]) -> Value {
    let stages = results
        .iter()
        .map(|result| {
            let mut map = result.to_map_without_logs();
            let logs = match (&result.stdout, &result.stderr) {
                (Some(stdout), Some(stderr)) => serde_json::json!({
                    "stdout": String::from_utf8_lossy(&stdout.bytes),
                    "stderr": String::from_utf8_lossy(&stderr.bytes),
                }),
                _ => Value::Null,
            };
            map.insert("logs".to_string(), logs);
            Value::Object(map)
        })
        .collect();
    Value::Array(stages)
}

/// Writes each stage's raw output to `dir/stage-N.stdout` and `dir/stage-N.stderr`.
fn write_logs(dir: &Path, results: &[StageResult]) -> Result<(), String> {
    for result in results {
        let n = result.index + 1;
        for (stream, output) in [("stdout", &result.stdout), ("stderr", &result.stderr)] {
            if let Some(output) = output {
                let path = dir.join(format!("stage-{n}.{stream}"));
                std::fs::write(&path, &output.bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}
