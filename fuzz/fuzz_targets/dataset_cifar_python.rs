#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gauntlet_fuzz::dataset_cifar_python(data);
});
