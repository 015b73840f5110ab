//! nemflow config.
