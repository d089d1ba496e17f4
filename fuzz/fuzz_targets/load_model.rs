#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gauntlet_fuzz::load_model(data);
});
