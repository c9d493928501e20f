#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::key_files(data));
