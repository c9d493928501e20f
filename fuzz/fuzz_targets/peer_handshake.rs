#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::peer_handshake(data));
