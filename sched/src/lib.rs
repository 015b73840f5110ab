//! nemflow sched.
