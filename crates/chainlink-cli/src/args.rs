//! The command line: subcommands, flags and their help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "chainlink",
    version,
    about = "Run Docker containers in sequence, sharing a /job directory",
    after_help = "Examples:\n  chainlink run examples/hello.yaml\n  chainlink run --json --env NAME=world chain.yaml > results.json\n  chainlink validate chain.yaml\n  chainlink gc\n\nExit status: 0 every stage succeeded; 1 a stage failed (non-zero exit, timeout, OOM);\n2 invalid input; 3 engine failure; 130 interrupted (SIGINT), 143 terminated (SIGTERM)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a chain: each stage's container in turn, stopping at the first that fails.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Check a chain file without touching the engine.
    #[command(after_help = VALIDATE_EXAMPLES)]
    Validate(ValidateArgs),
    /// Remove what runs of dead chainlink processes left: containers and run directories.
    #[command(after_help = GC_EXAMPLES)]
    Gc(GcArgs),
}

const RUN_EXAMPLES: &str = "\
Example:
  $ cat hello.yaml
  stages:
    - image: busybox
      entrypoint: [sh, -c, 'echo \"hello $NAME\" > /job/greeting']
    - image: busybox
      entrypoint: [cat, /job/greeting]
  $ chainlink run hello.yaml --env NAME=world --follow
  $ chainlink run hello.yaml --json --logs-dir logs/ > results.json

FILE is YAML (JSON when its name ends in .json): a list of stages, or a mapping with
`stages:`, `env:` (every stage's base environment) and `workdir:` (relative to the file).
Flags win over the file. Exit status: 0 every stage succeeded; 1 a stage failed;
2 invalid input; 3 engine failure; 130 after Ctrl-C; 143 after SIGTERM.";

const VALIDATE_EXAMPLES: &str = "\
Example:
  $ chainlink validate examples/autograder.yaml
  ok: 3 stages

Exit status: 0 the chain is valid; 2 it is not (every problem is listed).";

const GC_EXAMPLES: &str = "\
Example:
  $ chainlink gc --workdir /var/tmp/chainlink

Only what processes that are no longer alive left on this host is removed.
Exit status: 0 done; 3 the engine is unreachable or something could not be removed.";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The chain file (YAML, or JSON when it ends in .json); `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Where run directories are created [default: the file's `workdir`, else the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,

    /// A variable of every stage's base environment; overrides the file's `env` (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// When to pull images.
    #[arg(long, value_enum, default_value_t = Pull::Always)]
    pub pull: Pull,

    /// Print the results on standard output as JSON, one object per stage.
    #[arg(long)]
    pub json: bool,

    /// Also write each stage's output to DIR/stage-N.stdout and DIR/stage-N.stderr.
    #[arg(long, value_name = "DIR")]
    pub logs_dir: Option<PathBuf>,

    /// Stream each stage's output lines on standard error as they are produced.
    #[arg(long, short = 'f', conflicts_with = "quiet")]
    pub follow: bool,

    /// Print only errors.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The chain file (YAML, or JSON when it ends in .json); `-` reads standard input.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// The directory whose run directories are swept [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
}

/// `--pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pull {
    /// Pull every image; use the local copy when the pull fails.
    Always,
    /// Pull only images the engine does not have.
    IfMissing,
    /// Never pull; every image must be local.
    Never,
}

impl From<Pull> for chainlink::PullPolicy {
    fn from(pull: Pull) -> Self {
        match pull {
            Pull::Always => chainlink::PullPolicy::Always,
            Pull::IfMissing => chainlink::PullPolicy::IfMissing,
            Pull::Never => chainlink::PullPolicy::Never,
        }
    }
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !key.contains('\0') && !value.contains('\0') => {
            Ok((key.to_string(), value.to_string()))
        }
        Some(("", _)) => Err("the variable name is empty".to_string()),
        Some(_) => Err("NUL bytes are not allowed".to_string()),
        None => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn env_entries_split_at_the_first_equals_sign() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), String::new())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("A").is_err());
    }
}
