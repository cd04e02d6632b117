//! Tests against the real Docker engine. Images come from `scripts/build-test-images.sh`.
//! Every test uses a workdir of its own and ends by checking that nothing of its runs is left.

mod bad_input;
mod common;
mod disk;
mod keys;
mod lifecycle;
mod isolation;
mod nonroot;
