//! The library's errors as the module's exceptions, which are defined in Python
//! (`chainlink._errors`) so that they carry attributes and docstrings and `InvalidStage` can be
//! both a `ChainlinkError` and a `ValueError`.

use chainlink::{Error, Problem, Problems};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

use crate::convert::results_to_py;

const MODULE: &str = "chainlink._errors";

static CHAINLINK_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static ENGINE_UNAVAILABLE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static IMAGE_NOT_FOUND: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static INVALID_STAGE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static ENGINE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn raise(
    py: Python<'_>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
    message: String,
    kwargs: Option<Bound<'_, PyDict>>,
) -> PyErr {
    let made = cell
        .import(py, MODULE, name)
        .and_then(|class| class.call((message,), kwargs.as_ref()));
    match made {
        Ok(exception) => PyErr::from_value(exception),
        Err(error) => error,
    }
}

/// `InvalidStage` listing every problem; its `problems` attribute holds one line each.
pub fn invalid(py: Python<'_>, problems: Vec<Problem>) -> PyErr {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let message = Problems(problems).to_string();
    let kwargs = PyDict::new(py);
    if let Err(e) = kwargs.set_item("problems", lines) {
        return e;
    }
    raise(py, &INVALID_STAGE, "InvalidStage", message, Some(kwargs))
}

/// The exception for a library error.
pub fn to_py(py: Python<'_>, error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::Invalid(Problems(problems)) => invalid(py, problems),
        Error::EngineUnavailable(_) => raise(py, &ENGINE_UNAVAILABLE, "EngineUnavailable", message, None),
        Error::ImagesUnavailable(failures) => {
            let kwargs = PyDict::new(py);
            let images: Vec<String> = failures.into_iter().map(|f| f.image).collect();
            if let Err(e) = kwargs.set_item("images", images) {
                return e;
            }
            raise(py, &IMAGE_NOT_FOUND, "ImageNotFound", message, Some(kwargs))
        }
        Error::Stage { index, ref results, .. } => engine_error(py, message, results, Some(index)),
        Error::Cleanup { ref results, .. } => engine_error(py, message, results, None),
        Error::Engine { .. } => engine_error(py, message, &[], None),
        Error::Cancelled { .. } | Error::Workspace { .. } => {
            raise(py, &CHAINLINK_ERROR, "ChainlinkError", message, None)
        }
        // The library's error enum may grow; a new kind is at least a ChainlinkError.
        #[allow(unreachable_patterns)]
        _ => raise(py, &CHAINLINK_ERROR, "ChainlinkError", message, None),
    }
}

/// `EngineError` with `message`, the stages that finished, and the stage the engine failed on.
pub fn engine_error(py: Python<'_>, message: String, results: &[chainlink::StageResult], stage: Option<usize>) -> PyErr {
    let kwargs = PyDict::new(py);
    let filled = results_to_py(py, results)
        .and_then(|list| kwargs.set_item("results", list))
        .and_then(|()| kwargs.set_item("stage", stage));
    if let Err(e) = filled {
        return e;
    }
    raise(py, &ENGINE_ERROR, "EngineError", message, Some(kwargs))
}
