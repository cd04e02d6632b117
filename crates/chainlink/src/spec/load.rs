//! The text of a chain file to a generic value, refusing what the YAML and JSON parsers would
//! let through or choke on: nesting deeper than [`MAX_DEPTH`] (libyaml takes quadratic time on
//! deep flow collections, so that is refused by a scan of the text before it parses), a key
//! given twice in one mapping (both parsers keep the last one silently), and numbers that are
//! not finite (`serde_json::Value` cannot hold them and would make them null, "the default").

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::{Problem, SyntaxError};

/// The deepest nesting of lists and mappings a chain file may have; a chain needs 5.
pub const MAX_DEPTH: usize = 64;

/// A chain file's value, and the problems found on the way (non-finite numbers, at their key).
pub(super) struct Loaded {
    pub value: Value,
    pub problems: Vec<Problem>,
}

/// Whether the text holds no document: only blank lines, comments and document markers.
pub(super) fn is_blank(text: &str, json: bool) -> bool {
    if json {
        return text.trim().is_empty();
    }
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

/// The bytes as text, or where the first byte that is not UTF-8 is.
pub(super) fn utf8(bytes: &[u8], json: bool) -> Result<&str, SyntaxError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // Valid UTF-8 up to here: the column counts characters.
        let column = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
        SyntaxError {
            format: format_name(json),
            message: format!("expected UTF-8 text, got the byte 0x{:02X}", bytes[e.valid_up_to()]),
            line: Some(line),
            column: Some(column),
        }
    })
}

pub(super) fn load(text: &str, json: bool) -> Result<Loaded, SyntaxError> {
    if let Some((line, column)) = too_deep_flow(text) {
        return Err(depth_error(json, Some(line), Some(column)));
    }
    let (first, state) = pass(text, json, Mode::Check);
    match first {
        Ok(value) => {
            let problems = state.non_finite.into_iter().map(|(path, n)| non_finite_problem(&path, n)).collect();
            Ok(Loaded { value, problems })
        }
        Err(failed) => Err(match state.stop {
            Some(Stop::Depth) => depth_error(json, failed.line, failed.column),
            Some(Stop::Duplicate { map, key, place }) => {
                // The parsers give a position only with an error: a second pass stops at the
                // first occurrence of the key to learn its line.
                let (_, located) = pass(text, json, Mode::Locate { map, key: key.clone() });
                let first_line = match located.stop {
                    Some(Stop::Found { line }) => line,
                    _ => None,
                };
                let lines = match (first_line, failed.line) {
                    (Some(a), Some(b)) => format!(", at lines {a} and {b}"),
                    (None, Some(b)) => format!(", again at line {b}"),
                    _ => String::new(),
                };
                let place = if place.is_empty() { String::new() } else { format!("{place}: ") };
                SyntaxError {
                    format: format_name(json),
                    message: format!("{place}expected each key once in a mapping, got `{key}` twice{lines}"),
                    line: failed.line,
                    column: failed.column,
                }
            }
            _ => SyntaxError { format: format_name(json), message: failed.message, line: failed.line, column: failed.column },
        }),
    }
}

fn format_name(json: bool) -> &'static str {
    if json {
        "JSON"
    } else {
        "YAML"
    }
}

fn depth_error(json: bool, line: Option<usize>, column: Option<usize>) -> SyntaxError {
    SyntaxError {
        format: format_name(json),
        message: format!("expected lists and mappings nested at most {MAX_DEPTH} levels deep, got deeper"),
        line,
        column,
    }
}

fn non_finite_problem(path: &[Seg], n: f64) -> Problem {
    let got = if n.is_nan() {
        ".nan"
    } else if n > 0.0 {
        ".inf"
    } else {
        "-.inf"
    };
    // `[2, timeout]` (a list of stages) and `[stages, 2, timeout]` both name stages[2].timeout.
    let rest = match path {
        [Seg::Index(_), ..] => path,
        [Seg::Key(k), Seg::Index(_), ..] if k == "stages" => &path[1..],
        _ => {
            return Problem::new(None, Some(&join(path)), "a finite number", got.to_string());
        }
    };
    let Seg::Index(stage) = rest[0] else { unreachable!() };
    let key = join(&rest[1..]);
    Problem::new(Some(stage), (!key.is_empty()).then_some(key.as_str()), "a finite number", got.to_string())
}

fn join(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Where the flow collections (`[`, `{`) of the text first nest deeper than [`MAX_DEPTH`], as
/// 1-based line and column. Brackets in quoted strings, comments, block scalars (`|`, `>`) and
/// plain scalars of block context (`a: x[0]`) do not count. Block nesting needs no scan: its
/// depth costs indentation, and libyaml reads it in linear time.
fn too_deep_flow(text: &str) -> Option<(usize, usize)> {
    #[derive(PartialEq)]
    enum In {
        Plain,
        Double,
        Single,
        Comment,
        /// A block scalar's lines: those indented at least `indent` (0: not known yet) or blank.
        Block { parent: usize, indent: usize },
    }
    let bytes = text.as_bytes();
    let mut state = In::Plain;
    let mut depth = 0usize;
    let (mut line, mut line_start) = (1usize, 0usize);
    // Whether a node may start here: at a line's start, after `- `, `: `, `? `, `[`, `{`, `,`.
    let mut node_start = true;
    let mut line_indent = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if i == line_start {
            line_indent = bytes[i..].iter().take_while(|&&c| c == b' ').count();
            if let In::Block { parent, indent } = &mut state {
                let rest = &bytes[i + line_indent..];
                let blank = rest.first().is_none_or(|&c| c == b'\n' || c == b'\r');
                if !blank {
                    if *indent == 0 && line_indent > *parent {
                        *indent = line_indent;
                    }
                    if *indent == 0 || line_indent < *indent {
                        state = In::Plain;
                        node_start = true;
                    }
                }
            }
        }
        if b == b'\n' {
            line += 1;
            line_start = i + 1;
            if state == In::Comment {
                state = In::Plain;
            }
            if depth == 0 && state == In::Plain {
                node_start = true;
            }
            i += 1;
            continue;
        }
        match state {
            In::Comment | In::Block { .. } => {}
            In::Double => match b {
                b'\\' => i += 1,
                b'"' => {
                    state = In::Plain;
                    node_start = false;
                }
                _ => {}
            },
            In::Single => {
                if b == b'\'' {
                    if bytes.get(i + 1) == Some(&b'\'') {
                        i += 1;
                    } else {
                        state = In::Plain;
                        node_start = false;
                    }
                }
            }
            In::Plain => {
                let preceded_by_space = i == line_start || matches!(bytes[i - 1], b' ' | b'\t');
                let followed_by_space = matches!(bytes.get(i + 1), None | Some(b' ' | b'\t' | b'\r' | b'\n'));
                match b {
                    b' ' | b'\t' | b'\r' => {}
                    b'#' if preceded_by_space => state = In::Comment,
                    b'[' | b'{' if depth > 0 || node_start => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            let column = text[line_start..i].chars().count() + 1;
                            return Some((line, column));
                        }
                        node_start = true;
                    }
                    b']' | b'}' if depth > 0 => {
                        depth -= 1;
                        node_start = false;
                    }
                    b',' if depth > 0 => node_start = true,
                    b'"' if node_start => state = In::Double,
                    b'\'' if node_start => state = In::Single,
                    b'|' | b'>' if node_start && depth == 0 => {
                        state = In::Block { parent: line_indent, indent: 0 };
                    }
                    b'-' | b'?' | b':' if followed_by_space || (depth > 0 && b == b':') => node_start = true,
                    // Anchors and tags come before the node they name.
                    b'&' | b'!' if node_start => {
                        while i + 1 < bytes.len() && !matches!(bytes[i + 1], b' ' | b'\t' | b'\r' | b'\n') {
                            i += 1;
                        }
                    }
                    _ => node_start = false,
                }
            }
        }
        i += 1;
    }
    None
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

enum Mode {
    Check,
    /// Stop at `key` in the `map`-th mapping entered (the same order in every pass).
    Locate { map: usize, key: String },
}

/// Why a pass stopped with an error of its own; the parser's error carries the position.
enum Stop {
    Depth,
    Duplicate { map: usize, key: String, place: String },
    Found { line: Option<usize> },
}

struct State {
    mode: Mode,
    path: Vec<Seg>,
    depth: usize,
    maps: usize,
    non_finite: Vec<(Vec<Seg>, f64)>,
    stop: Option<Stop>,
}

struct Failed {
    message: String,
    line: Option<usize>,
    column: Option<usize>,
}

fn pass(text: &str, json: bool, mode: Mode) -> (Result<Value, Failed>, State) {
    let mut state = State { mode, path: Vec::new(), depth: 0, maps: 0, non_finite: Vec::new(), stop: None };
    let result = if json {
        let mut de = serde_json::Deserializer::from_str(text);
        Node { state: &mut state }
            .deserialize(&mut de)
            .and_then(|value| de.end().map(|()| value))
            .map_err(|e| Failed { message: e.to_string(), line: Some(e.line()), column: Some(e.column()) })
    } else {
        Node { state: &mut state }.deserialize(serde_norway::Deserializer::from_str(text)).map_err(|e| {
            let location = e.location();
            Failed {
                message: e.to_string(),
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
            }
        })
    };
    if let (Err(failed), Some(Stop::Found { line })) = (&result, &mut state.stop) {
        *line = failed.line;
    }
    (result, state)
}

struct Node<'s> {
    state: &'s mut State,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Node<'_> {
    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        self.state.depth += 1;
        if self.state.depth > MAX_DEPTH {
            self.state.stop = Some(Stop::Depth);
            return Err(E::custom("nested too deep"));
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        // Beyond 64 bits: as a float, always finite (at most 3.4e38).
        Ok(i64::try_from(v).map(Value::from).unwrap_or_else(|_| Number::from_f64(v as f64).map_or(Value::Null, Value::Number)))
    }

    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(u64::try_from(v).map(Value::from).unwrap_or_else(|_| Number::from_f64(v as f64).map_or(Value::Null, Value::Number)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        match Number::from_f64(v) {
            Some(n) => Ok(Value::Number(n)),
            None => {
                // Null stands in; the problem is reported at its key instead.
                self.state.non_finite.push((self.state.path.clone(), v));
                Ok(Value::Null)
            }
        }
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut items = Vec::new();
        loop {
            self.state.path.push(Seg::Index(items.len()));
            let item = seq.next_element_seed(Node { state: &mut *self.state });
            self.state.path.pop();
            match item? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        self.state.depth -= 1;
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut access: A) -> Result<Value, A::Error> {
        self.enter()?;
        let id = self.state.maps;
        self.state.maps += 1;
        let mut map = Map::new();
        while let Some(key) = access.next_key_seed(Key { state: &mut *self.state, map: id, seen: &map })? {
            self.state.path.push(Seg::Key(key.clone()));
            let value = access.next_value_seed(Node { state: &mut *self.state });
            self.state.path.pop();
            map.insert(key, value?);
        }
        self.state.depth -= 1;
        Ok(Value::Object(map))
    }
}

/// A mapping's key, refused (in the parser's call, so that the error carries the key's
/// position) when the mapping already has it.
struct Key<'s> {
    state: &'s mut State,
    map: usize,
    seen: &'s Map<String, Value>,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_string(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        let stop = match &self.state.mode {
            Mode::Check if self.seen.contains_key(key) => {
                Some(Stop::Duplicate { map: self.map, key: key.to_string(), place: join(&self.state.path) })
            }
            Mode::Locate { map, key: wanted } if *map == self.map && wanted == key => Some(Stop::Found { line: None }),
            _ => None,
        };
        if let Some(stop) = stop {
            self.state.stop = Some(stop);
            return Err(E::custom(format!("duplicate key `{key}`")));
        }
        Ok(key.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_depth_counts_brackets_outside_strings_comments_and_block_scalars() {
        let deep = format!("stages: {}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(too_deep_flow(&deep), Some((1, 73)));
        assert_eq!(too_deep_flow(&format!("{}{}", "[".repeat(64), "]".repeat(64))), None);
        let maps = format!("a:\n  b: {}", "{x: ".repeat(65));
        assert_eq!(too_deep_flow(&maps), Some((2, 5 + 4 * 64 + 1)));
        for text in [
            format!("a: \"{}\"\n", "[".repeat(100)),
            format!("a: '{}''{}'\n", "[".repeat(100), "{".repeat(100)),
            format!("a: x # {}\n", "[".repeat(100)),
            format!("a: x{}\n", "[".repeat(100)),
            format!("- sh\n- |\n  [ -f x ] {}\n  {}\n- b\n", "[".repeat(100), "{".repeat(100)),
            format!("[\"{}\", '{}', a]", "[".repeat(100), "]".repeat(3)),
        ] {
            assert_eq!(too_deep_flow(&text), None, "{text}");
        }
        // After the block scalar ends, brackets count again.
        let after = format!("a: |\n  [[[\nb: {}", "[".repeat(65));
        assert_eq!(too_deep_flow(&after), Some((3, 68)));
    }

    #[test]
    fn a_hundred_thousand_brackets_are_refused_at_once() {
        let text = format!("stages: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let started = std::time::Instant::now();
        let e = load(&text, false).err().unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        assert_eq!((e.line, e.column), (Some(1), Some(73)));
        assert!(e.message.contains("nested at most 64 levels deep"), "{}", e.message);
    }

    #[test]
    fn block_nesting_over_the_limit_is_refused_where_it_starts() {
        let text: String = (0..70).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        let e = load(&text, false).err().unwrap();
        assert!(e.message.contains("nested at most 64 levels deep"), "{}", e.message);
        assert_eq!(e.line, Some(65));
        let json = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(load(&json, true).err().unwrap().message.contains("64 levels"));
    }

    #[test]
    fn duplicate_keys_are_refused_with_both_lines() {
        let e = load("- image: a\n  timeout: 3\n  image: b\n", false).err().unwrap();
        assert_eq!(e.message, "[0]: expected each key once in a mapping, got `image` twice, at lines 1 and 3");
        assert_eq!(e.line, Some(3));
        let e = load("{\"stages\": [{\"image\": \"a\",\n \"image\": \"b\"}]}", true).err().unwrap();
        assert_eq!(e.message, "stages[0]: expected each key once in a mapping, got `image` twice, at lines 1 and 2");
        let e = load("stages: []\nenv: {A: 1}\nstages: []\n", false).err().unwrap();
        assert_eq!(e.message, "expected each key once in a mapping, got `stages` twice, at lines 1 and 3");
        // The same key in different mappings is fine.
        assert!(load("- {image: a, env: {image: x}}\n- {image: b}\n", false).is_ok());
    }

    #[test]
    fn non_finite_numbers_become_problems_at_their_key() {
        let loaded = load("- {image: a, timeout: .inf, pids_limit: .nan}\n- {image: b, ulimits: {nofile: -.inf}}\n", false).ok().unwrap();
        let found: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "stages[0].timeout: expected a finite number, got .inf",
                "stages[0].pids_limit: expected a finite number, got .nan",
                "stages[1].ulimits.nofile: expected a finite number, got -.inf",
            ]
        );
        let loaded = load("stages: [{image: a, cpus: .NaN}]\n", false).ok().unwrap();
        assert_eq!(loaded.problems[0].to_string(), "stages[0].cpus: expected a finite number, got .nan");
    }

    #[test]
    fn invalid_utf8_is_located_at_its_first_bad_byte() {
        let e = utf8(b"- image: a\n  env: {A: \"\xc3\xa9\xff\"}\n", false).err().unwrap();
        assert_eq!((e.line, e.column), (Some(2), Some(14)));
        assert_eq!(e.message, "expected UTF-8 text, got the byte 0xFF");
    }

    #[test]
    fn blank_means_only_comments_and_markers() {
        assert!(is_blank("", false) && is_blank("# a\n\n  # b\n---\n", false) && is_blank(" \n", true));
        assert!(!is_blank("null\n", false) && !is_blank("# a\n[]", false));
    }
}
