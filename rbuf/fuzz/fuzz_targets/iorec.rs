//! Iorec decoding and validation on arbitrary slot bytes and limits.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nemflow_rbuf::testing::fuzz_iorec(data));
