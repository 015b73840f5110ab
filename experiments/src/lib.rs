//! nemflow experiments.
