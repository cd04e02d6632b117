//! A blocking wrapper over the async API, for callers without a tokio runtime of their own.

use std::collections::BTreeMap;

use crate::error::Error;
use crate::outcome::StageResult;
use crate::runner::{ChainOptions, RunControl};
use crate::spec::Stage;

/// A [`crate::Chain`] with a runtime of its own; every call blocks until done.
#[derive(Debug)]
pub struct Chain {
    runtime: tokio::runtime::Runtime,
    inner: crate::Chain,
}

impl Chain {
    pub fn new(stages: Vec<Stage>, options: ChainOptions) -> Result<Chain, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("chainlink")
            .enable_all()
            .build()
            .map_err(|source| Error::Workspace { path: "(runtime)".into(), source })?;
        let inner = runtime.block_on(crate::Chain::new(stages, options))?;
        Ok(Chain { runtime, inner })
    }

    pub fn run(&self, environ: &BTreeMap<String, String>) -> Result<Vec<StageResult>, Error> {
        self.runtime.block_on(self.inner.run(environ))
    }

    pub fn run_with(&self, environ: &BTreeMap<String, String>, control: RunControl) -> Result<Vec<StageResult>, Error> {
        self.runtime.block_on(self.inner.run_with(environ, control))
    }

    /// The async chain, to run on this wrapper's runtime or another.
    pub fn inner(&self) -> &crate::Chain {
        &self.inner
    }
}
