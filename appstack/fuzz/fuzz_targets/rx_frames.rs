//! The receive path of a UDP flow: arbitrary frames (and clock steps) into a fresh flow's RX
//! channel. See `nemflow_appstack::testing::fuzz_rx` for the input format and what is checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nemflow_appstack::testing::fuzz_rx(data);
});
