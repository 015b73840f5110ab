//! A hostile app's transmit channel (frames, iorecs, raw FIFO words and indices) against the
//! driver's consuming side, next to a well-behaved flow.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nemflow_driver::fuzzing::tx_hostile(data));
