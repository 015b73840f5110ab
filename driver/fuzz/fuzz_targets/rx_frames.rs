//! Arbitrary received frames through the driver's data path (classify, filters, fragments,
//! delivery into flows' channels).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nemflow_driver::fuzzing::rx_frames(data));
