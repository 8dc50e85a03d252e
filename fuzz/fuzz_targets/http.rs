//! `cargo xtask fuzz http`: see `telemetryd::fuzzing::http`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| telemetryd::fuzzing::http(data));
