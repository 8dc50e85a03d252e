//! `cargo xtask fuzz config`: see `telemetryd::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| telemetryd::fuzzing::config(data));
