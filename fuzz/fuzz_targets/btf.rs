//! `cargo xtask fuzz btf`: see `telemetryd::fuzzing::btf`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| telemetryd::fuzzing::btf(data));
