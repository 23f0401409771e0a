use denoise_data::{detect, load, load_test, LoadOptions, Source};

fn png(path: &std::path::Path, v: u8, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb([v, v / 2, 255 - v]))
        .save(path)
        .unwrap();
}

#[test]
fn class_folders_split_by_the_last_tenth_of_each_class() {
    let dir = tempfile::tempdir().unwrap();
    for (c, class) in ["b_class", "a_class"].iter().enumerate() {
        for i in 0..20 {
            png(
                &dir.path()
                    .join("train")
                    .join(class)
                    .join(format!("{i:03}.png")),
                (c * 100 + i) as u8,
                8,
                8,
            );
        }
        for i in 0..5 {
            png(
                &dir.path()
                    .join("test")
                    .join(class)
                    .join(format!("{i:03}.png")),
                (c * 100 + i) as u8,
                8,
                8,
            );
        }
    }
    assert_eq!(
        detect(dir.path()),
        Some(Source::Folder(dir.path().to_path_buf()))
    );
    let s = load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!((s.train.n, s.val.n, s.test.n), (36, 4, 10));
    let test_only = load_test(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(
        (test_only.pixels, test_only.labels),
        (s.test.pixels.clone(), s.test.labels.clone())
    );
    assert_eq!(s.train.classes, vec!["a_class", "b_class"]); // sorted
                                                             // Validation: files 018 and 019 of each class; "a_class" holds values 100 + i.
    assert_eq!(s.val.labels, vec![0, 0, 1, 1]);
    assert_eq!(s.val.image(0)[0], 118);
    assert_eq!(s.val.image(3)[0], 19);
    // --limit 4 takes the first 4/10 -> 1 image... rounded up per class by the caller; here 2 per class.
    let sub = s.test.first_per_class(2);
    assert_eq!(sub.n, 4);
    assert_eq!(sub.labels, vec![0, 0, 1, 1]);
    assert_eq!(sub.image(1)[0], 101);
    // CHW layout: channel 2 of the first pixel is 255 - v.
    assert_eq!(sub.image(0)[2 * 64], 255 - 100);
}
