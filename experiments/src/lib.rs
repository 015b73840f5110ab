//! Reproductions of the Nemesis paper's crosstalk experiments (figures 5a, 5b, 6, 7), measured
//! outside the system under test and reported as CSV, PNG and a pass/fail table.

#![forbid(unsafe_code)]

pub mod capture;
pub mod pacer;
pub mod plot;
pub mod series;
