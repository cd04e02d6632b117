//! Reading a chain file and settling what the command line overrides.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use chainlink::spec::{ChainFileError, MAX_CHAIN_FILE_BYTES};
use chainlink::ChainFile;

/// Reads and parses a chain file (`-`: standard input). The error is the message to print:
/// where the file is wrong (line and column for syntax) and every problem of its stages.
pub fn load(path: &Path) -> Result<ChainFile, String> {
    let stdin = path.as_os_str() == "-";
    let name = if stdin { "<stdin>".to_string() } else { path.display().to_string() };
    let bytes = if stdin {
        read_limited(std::io::stdin().lock()).map_err(|e| format!("cannot read standard input: {e}"))?
    } else {
        let file = std::fs::File::open(path).map_err(|e| format!("cannot read {name}: {e}"))?;
        read_limited(file).map_err(|e| format!("cannot read {name}: {e}"))?
    };
    let json = !stdin && path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
    ChainFile::parse_bytes(&bytes, json).map_err(|error| match error {
        ChainFileError::Syntax(e) => match (e.line, e.column) {
            (Some(line), Some(column)) => format!("{name}:{line}:{column}: {e}"),
            (Some(line), None) => format!("{name}:{line}: {e}"),
            _ => format!("{name}: {e}"),
        },
        ChainFileError::Invalid(problems) => format!("{name}: {}", chainlink::Error::Invalid(problems)),
        other => format!("{name}: {other}"),
    })
}

/// Reads at most one byte more than a chain file may hold, so that `/dev/zero` or an endless
/// pipe is refused at once instead of filling memory.
fn read_limited(reader: impl Read) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(MAX_CHAIN_FILE_BYTES as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The run's workdir: the flag (relative to the current directory), else the file's
/// (relative to the file), else the system temp dir. Always absolute: the engine bind-mounts
/// run directories by path.
pub fn workdir(flag: Option<&Path>, file: &ChainFile, file_path: &Path) -> PathBuf {
    let chosen = match (flag, &file.workdir) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(dir)) if dir.is_relative() && file_path.as_os_str() != "-" => {
            file_path.parent().unwrap_or(Path::new("")).join(dir)
        }
        (None, Some(dir)) => dir.clone(),
        (None, None) => std::env::temp_dir(),
    };
    absolute(&chosen)
}

pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The run's base environment: the file's, with the command line's entries winning by key.
pub fn environment(file: &ChainFile, flags: &[(String, String)]) -> BTreeMap<String, String> {
    let mut env = file.env.clone();
    env.extend(flags.iter().cloned());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_stops_one_byte_past_the_limit() {
        let endless = std::io::repeat(b'a');
        assert_eq!(read_limited(endless).unwrap().len(), MAX_CHAIN_FILE_BYTES + 1);
        assert_eq!(read_limited(&b"- image: a\n"[..]).unwrap(), b"- image: a\n");
    }

    fn chain(text: &str) -> ChainFile {
        ChainFile::parse(text, false).unwrap()
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = chain("stages: [{image: a}]\nenv: {A: file, B: file}\nworkdir: work\n");
        let env = environment(&file, &[("B".into(), "flag".into()), ("C".into(), "flag".into())]);
        assert_eq!(env["A"], "file");
        assert_eq!(env["B"], "flag");
        assert_eq!(env["C"], "flag");
        assert_eq!(workdir(Some(Path::new("/w")), &file, Path::new("/x/chain.yaml")), PathBuf::from("/w"));
        assert_eq!(workdir(None, &file, Path::new("/x/chain.yaml")), PathBuf::from("/x/work"));
        let bare = chain("- image: a\n");
        assert_eq!(workdir(None, &bare, Path::new("/x/chain.yaml")), std::env::temp_dir());
        assert!(workdir(Some(Path::new("rel")), &bare, Path::new("c.yaml")).is_absolute());
    }
}
