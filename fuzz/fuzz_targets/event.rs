//! `cargo xtask fuzz event`: see `telemetryd::fuzzing::event`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| telemetryd::fuzzing::event(data));
