//! The command line: subcommands, flags and their help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "chainlink",
    version,
    about = "Run Docker containers in sequence, sharing a /job directory",
    after_help = "Examples:\n  chainlink run examples/hello.yaml\n  chainlink run --json --env NAME=world chain.yaml > results.json\n  chainlink validate chain.yaml\n  chainlink gc\n\nExit status: 0 every stage succeeded; 1 a stage failed (non-zero exit, timeout, OOM);\n2 invalid input; 3 engine failure; 129 hung up (SIGHUP), 130 interrupted (SIGINT),\n143 terminated (SIGTERM)."
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
2 invalid input; 3 engine failure; 129 after SIGHUP; 130 after Ctrl-C; 143 after SIGTERM.
A signal stops the run and removes its containers and run directory before exiting.";

const VALIDATE_EXAMPLES: &str = "\
Example:
  $ chainlink validate examples/autograder.yaml
  ok: 3 stages

Exit status: 0 the chain is valid; 2 it is not (every problem is listed).";

const GC_EXAMPLES: &str = "\
Example:
  $ chainlink gc --workdir /var/tmp/chainlink --cleanup-image busybox

Only what processes that are no longer alive left on this host is removed. What was removed is
printed on standard output, what could not be removed on standard error, one per line.
Exit status: 0 everything found was removed; 2 the workdir is not a directory; 3 the engine is
unreachable or something could not be removed.";

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

    /// An image with `rm` to remove, as root, files a stage left that this user may not remove;
    /// tried in order, before images of chainlink containers found on the engine (repeatable).
    #[arg(long = "cleanup-image", value_name = "IMAGE")]
    pub cleanup_images: Vec<String>,
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

/// `KEY=VALUE`, split at the first '='. The name is refused where `docker run -e` would take
/// it but mean something else: empty, or with whitespace around it.
fn parse_env(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("expected KEY=VALUE, got {text:?}"));
    };
    if key.is_empty() {
        Err(format!("expected a variable name before '=', got {text:?}"))
    } else if key.trim() != key {
        Err(format!("expected a variable name without leading or trailing whitespace, got {key:?}"))
    } else if text.contains('\0') {
        Err(format!("expected no NUL bytes, got {text:?}"))
    } else {
        Ok((key.to_string(), value.to_string()))
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
        assert_eq!(parse_env("=x"), Err("expected a variable name before '=', got \"=x\"".into()));
        assert!(parse_env("A").is_err());
        assert_eq!(parse_env(" A=1"), Err("expected a variable name without leading or trailing whitespace, got \" A\"".into()));
        assert!(parse_env("A\t=1").is_err() && parse_env("A\n=1").is_err());
        assert_eq!(parse_env("A=x\0y"), Err("expected no NUL bytes, got \"A=x\\0y\"".into()));
        // Whitespace in the value is the value's.
        assert_eq!(parse_env("A= b "), Ok(("A".into(), " b ".into())));
    }
}
