//! nemflow testkit.
