//! Python objects to the library's input, and the library's results back to Python objects.
//!
//! Stages arrive as Python lists and dicts; they become a `serde_json::Value` that
//! `chainlink::parse_stages` reads, so the library reports every problem of the input. Two things
//! happen here first, in the Python-facing layer: `env` (and `environ`) values that are `int`,
//! `float` or `bool` become `str(value)`, as Python users expect of an environment; and values
//! that have no JSON form (a set, bytes, an object) are reported as problems of their key.

use std::collections::BTreeMap;

use chainlink::{Problem, StageResult};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// What the conversion of the stages gave: the value for the parser, and the problems found on
/// the way (at most one per stage key).
pub struct ConvertedStages {
    pub value: Value,
    pub problems: Vec<Problem>,
}

const JSON_LIKE: &str = "str, int, float, bool, None, or lists and dicts of those";
const UNICODE: &str = "text that is valid Unicode (no lone surrogates)";
const UNICODE_KEYS: &str = "keys that are valid Unicode (no lone surrogates)";

/// A value that has no JSON form: what was expected instead, and what was given.
struct NoJson {
    expected: &'static str,
    got: String,
}

impl From<String> for NoJson {
    fn from(got: String) -> NoJson {
        NoJson { expected: JSON_LIKE, got }
    }
}

/// A str that is not valid Unicode, shown as Python shows it (`'a\udcff'`).
fn surrogate_in(text: &Bound<'_, PyAny>) -> String {
    let repr = text.repr().map(|r| r.to_string()).unwrap_or_default();
    if repr.chars().count() > 60 {
        format!("{}... (holding a lone surrogate)", repr.chars().take(57).collect::<String>())
    } else {
        format!("{repr} (holding a lone surrogate)")
    }
}

/// Converts the `stages` argument. Raises `TypeError` for a bad `env` entry (the contract: env
/// values are `str`, `int`, `float` or `bool`); every other problem is collected.
pub fn stages_to_value(stages: &Bound<'_, PyAny>) -> PyResult<ConvertedStages> {
    let mut problems = Vec::new();
    let items: Vec<Bound<'_, PyAny>> = if let Ok(list) = stages.cast::<PyList>() {
        list.iter().collect()
    } else if let Ok(tuple) = stages.cast::<PyTuple>() {
        tuple.iter().collect()
    } else {
        // Not a list: the parser says what it expected, if the value has a JSON form at all.
        let value = match to_value(stages) {
            Ok(value) => value,
            Err(bad) => {
                problems.push(Problem::new(None, None, "a list of stages", bad.got));
                Value::Null
            }
        };
        return Ok(ConvertedStages { value, problems });
    };
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let Ok(dict) = item.cast::<PyDict>() else {
            match to_value(item) {
                Ok(value) => out.push(value),
                Err(bad) => {
                    problems.push(Problem::new(Some(index), None, "a mapping of stage keys", bad.got));
                    out.push(Value::Object(Map::new()));
                }
            }
            continue;
        };
        let mut map = Map::new();
        for (key, value) in dict.iter() {
            let Ok(key) = key.cast::<PyString>() else {
                problems.push(Problem::new(Some(index), None, "string keys", describe_py(&key)));
                continue;
            };
            let Ok(key) = key.to_cow().map(|k| k.into_owned()) else {
                problems.push(Problem::new(Some(index), None, UNICODE_KEYS, surrogate_in(&key)));
                continue;
            };
            if key == "env" {
                if let Ok(env) = value.cast::<PyDict>() {
                    let env = match env_to_map(env, &format!("stages[{index}].env"))? {
                        Ok(env) => env,
                        Err(problem) => {
                            problems.push(Problem { stage: Some(index), ..problem });
                            continue;
                        }
                    };
                    let env = env.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
                    map.insert(key, Value::Object(env));
                    continue;
                }
            }
            match to_value(&value) {
                Ok(value) => {
                    map.insert(key, value);
                }
                Err(bad) => problems.push(Problem::new(Some(index), Some(&key), bad.expected, bad.got)),
            }
        }
        out.push(Value::Object(map));
    }
    Ok(ConvertedStages { value: Value::Array(out), problems })
}

/// Merges the conversion's problems with the parser's, dropping the parser's problems at a
/// place the conversion already reported (a key left out because its value had no JSON form).
pub fn merge_problems(mut converted: Vec<Problem>, parsed: Vec<Problem>) -> Vec<Problem> {
    let places: Vec<(Option<usize>, Option<String>)> =
        converted.iter().map(|p| (p.stage, p.key.clone())).collect();
    converted.extend(parsed.into_iter().filter(|p| !places.contains(&(p.stage, p.key.clone()))));
    // Stable: each stage's problems stay in the order they were found.
    converted.sort_by_key(|p| p.stage.map_or(0, |s| s + 1));
    converted
}

/// Converts `environ` (a dict, or `None` for none). A str that is not valid Unicode raises
/// `InvalidStage` naming `environ`.
pub fn environ_to_map(environ: Option<&Bound<'_, PyAny>>) -> PyResult<BTreeMap<String, String>> {
    match environ {
        None => Ok(BTreeMap::new()),
        Some(obj) if obj.is_none() => Ok(BTreeMap::new()),
        Some(obj) => match obj.cast::<PyDict>() {
            Ok(dict) => env_to_map(dict, "environ")?.map_err(|problem| crate::errors::invalid(obj.py(), vec![problem])),
            Err(_) => Err(PyTypeError::new_err(format!(
                "environ: expected a dict of str to str, got {}",
                type_name(obj)
            ))),
        },
    }
}

/// An environment mapping: `str` values as they are, `int`, `float` and `bool` as `str(value)`,
/// anything else a `TypeError` naming the place (`stages[0].env.FOO`). A str that is not valid
/// Unicode is a problem of the place (`environ`, or `env` of the stage), as the library's.
fn env_to_map(dict: &Bound<'_, PyDict>, place: &str) -> PyResult<Result<BTreeMap<String, String>, Problem>> {
    let key_name = place.rsplit('.').next().unwrap_or(place);
    let mut out = BTreeMap::new();
    for (key, value) in dict.iter() {
        let Ok(key_str) = key.cast::<PyString>() else {
            return Err(PyTypeError::new_err(format!("{place}: expected str keys, got {}", type_name(&key))));
        };
        let Ok(name) = key_str.to_cow().map(|k| k.into_owned()) else {
            return Ok(Err(Problem::new(None, Some(key_name), UNICODE_KEYS, surrogate_in(&key))));
        };
        let text = if let Ok(text) = value.cast::<PyString>() {
            match text.to_cow() {
                Ok(text) => text.into_owned(),
                Err(_) => return Ok(Err(Problem::new(None, Some(key_name), UNICODE, format!("{name}: {}", surrogate_in(&value))))),
            }
        } else if value.is_instance_of::<PyBool>() || value.is_instance_of::<PyInt>() || value.is_instance_of::<PyFloat>() {
            value.str()?.to_cow()?.into_owned()
        } else {
            return Err(PyTypeError::new_err(format!(
                "{place}.{name}: expected str, int, float or bool, got {}",
                type_name(&value)
            )));
        };
        out.insert(name, text);
    }
    Ok(Ok(out))
}

/// A Python value as JSON; the error describes what had no JSON form.
fn to_value(obj: &Bound<'_, PyAny>) -> Result<Value, NoJson> {
    if obj.is_none() {
        Ok(Value::Null)
    } else if let Ok(flag) = obj.cast::<PyBool>() {
        Ok(Value::Bool(flag.is_true()))
    } else if obj.is_instance_of::<PyInt>() {
        if let Ok(n) = obj.extract::<i64>() {
            Ok(Value::from(n))
        } else if let Ok(n) = obj.extract::<u64>() {
            Ok(Value::from(n))
        } else {
            Err(format!("{} (too large)", obj.str().map(|s| s.to_string()).unwrap_or_default()).into())
        }
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        let f = f.value();
        // Python's spelling (nan, inf), not Rust's (NaN).
        let shown = || obj.repr().map(|r| r.to_string()).unwrap_or_else(|_| f.to_string());
        Number::from_f64(f).map(Value::Number).ok_or_else(|| NoJson { expected: "a finite number", got: shown() })
    } else if let Ok(s) = obj.cast::<PyString>() {
        s.to_cow().map(|s| Value::String(s.into_owned())).map_err(|_| NoJson { expected: UNICODE, got: surrogate_in(obj) })
    } else if let Ok(list) = obj.cast::<PyList>() {
        list.iter().map(|item| to_value(&item)).collect::<Result<Vec<_>, _>>().map(Value::Array)
    } else if let Ok(tuple) = obj.cast::<PyTuple>() {
        tuple.iter().map(|item| to_value(&item)).collect::<Result<Vec<_>, _>>().map(Value::Array)
    } else if let Ok(dict) = obj.cast::<PyDict>() {
        let mut map = Map::new();
        for (key, value) in dict.iter() {
            let Ok(key_str) = key.cast::<PyString>() else {
                return Err(format!("a dict with a key of type {}", type_name(&key)).into());
            };
            let key = key_str.to_cow().map_err(|_| NoJson { expected: UNICODE_KEYS, got: surrogate_in(&key) })?;
            map.insert(key.into_owned(), to_value(&value)?);
        }
        Ok(Value::Object(map))
    } else {
        Err(describe_py(obj).into())
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "object".to_string())
}

fn describe_py(obj: &Bound<'_, PyAny>) -> String {
    format!("a value of type {}", type_name(obj))
}

/// A JSON value as a Python object.
pub fn value_to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(flag) => PyBool::new(py, *flag).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(value_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => map_to_py(py, map)?.into_any(),
    })
}

fn map_to_py<'py>(py: Python<'py>, map: &Map<String, Value>) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (key, value) in map {
        dict.set_item(key, value_to_py(py, value)?)?;
    }
    Ok(dict)
}

/// One stage's result in the seed's shape: `data`, `killed`, `logs`, `success`, plus
/// `skipped` and `truncated`. Logs are `bytes`, or `None` for a stage with `logs: False`.
pub fn result_to_py<'py>(py: Python<'py>, result: &StageResult) -> PyResult<Bound<'py, PyDict>> {
    let map = result.to_map_without_logs();
    let dict = PyDict::new(py);
    let bytes = |output: &Option<chainlink::Output>| -> Bound<'py, PyAny> {
        match output {
            Some(output) => PyBytes::new(py, &output.bytes).into_any(),
            None => py.None().into_bound(py),
        }
    };
    let logs = PyDict::new(py);
    logs.set_item("stdout", bytes(&result.stdout))?;
    logs.set_item("stderr", bytes(&result.stderr))?;
    for key in ["data", "killed"] {
        if let Some(value) = map.get(key) {
            dict.set_item(key, value_to_py(py, value)?)?;
        }
    }
    dict.set_item("logs", logs)?;
    for (key, value) in &map {
        if key != "data" && key != "killed" {
            dict.set_item(key, value_to_py(py, value)?)?;
        }
    }
    Ok(dict)
}

pub fn results_to_py<'py>(py: Python<'py>, results: &[StageResult]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for result in results {
        list.append(result_to_py(py, result)?)?;
    }
    Ok(list)
}
