//! All four endpoints of two channels facing a control area rewritten by the fuzzer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nemflow_rbuf::testing::fuzz_control(data));
