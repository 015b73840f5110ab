//! Arbitrary bytes on a control socket: framing, then every message type.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nemflow_proto::fuzzing::decode_stream(data));
