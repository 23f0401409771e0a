#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| denoise_fuzz::image_decode(data));
