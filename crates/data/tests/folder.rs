use denoise_data::{detect, load, load_test, DataError, ImageSet, LoadOptions, Source};

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
    // `eval --limit N`: about N images over the two classes (it took N/10 per class, as if
    // every folder had CIFAR-10's ten classes: 1 image of each for --limit 4).
    let four = s.test.first_balanced(4);
    assert_eq!((four.n, four.labels.clone()), (4, vec![0, 0, 1, 1]));
    assert_eq!(s.test.first_balanced(3).n, 4); // 2 per class, rounded up
    assert_eq!(s.test.first_balanced(100).n, 10); // all there is
}

/// An image whose pixel `(x, y)` is `(x, y, k)`: where a patch came from can be read off it.
fn coords_png(path: &std::path::Path, k: u8, w: u32, h: u32) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, k]))
        .save(path)
        .unwrap();
}

/// Photos of different sizes become patches of one size: a centred grid per image, each
/// patch with its image's label; validation patches come from other files than training's.
#[test]
fn photos_of_any_size_become_patches() {
    let dir = tempfile::tempdir().unwrap();
    let sizes: Vec<(u32, u32)> = (0..10).map(|k| (20 + 3 * k, 17 + 2 * k)).collect();
    for (k, &(w, h)) in sizes.iter().enumerate() {
        coords_png(&dir.path().join(format!("p{k}.png")), k as u8, w, h);
    }
    let opts = LoadOptions {
        patch: Some(8),
        ..Default::default()
    };
    let s = load(dir.path(), &opts).unwrap();
    let count = |(w, h): (u32, u32)| (w as usize / 8) * (h as usize / 8);
    let train: usize = sizes[..9].iter().map(|&s| count(s)).sum();
    assert_eq!((s.train.n, s.val.n), (train, count(sizes[9])));
    assert_eq!(s.test.n, train + count(sizes[9])); // a flat folder is also the test set
    assert_eq!((s.train.c, s.train.h, s.train.w), (3, 8, 8));
    assert!(
        s.description.contains("patches (from 9 + 1 images) of 8x8"),
        "{}",
        s.description
    );

    // p0 is 20x17: a 2x2 grid starting at x = (20 - 16) / 2 = 2, y = (17 - 16) / 2 = 0.
    let at = |img: &[u8], c: usize, y: usize, x: usize| img[c * 64 + y * 8 + x];
    let first = s.train.image(0);
    assert_eq!(
        (at(first, 0, 0, 0), at(first, 1, 0, 0), at(first, 2, 0, 0)),
        (2, 0, 0)
    );
    assert_eq!((at(first, 0, 7, 7), at(first, 1, 7, 7)), (9, 7));
    let second = s.train.image(1); // the next patch to the right
    assert_eq!((at(second, 0, 0, 0), at(second, 1, 0, 0)), (10, 0));
    let third = s.train.image(2); // the next row
    assert_eq!((at(third, 0, 0, 0), at(third, 1, 0, 0)), (2, 8));
    // The validation patches are all from p9.
    assert!((0..s.val.n).all(|i| at(s.val.image(i), 2, 0, 0) == 9));

    // Evaluation reads the test images the same way.
    let test = load_test(dir.path(), &opts).unwrap();
    assert_eq!(test.pixels, s.test.pixels);

    // An image smaller than a patch is named.
    coords_png(&dir.path().join("small.png"), 0, 5, 30);
    match load(dir.path(), &opts) {
        Err(DataError::SmallerThanPatch {
            path,
            found_w,
            found_h,
            patch,
        }) => {
            assert!(path.ends_with("small.png"));
            assert_eq!((found_w, found_h, patch), (5, 30, 8));
        }
        other => panic!(
            "expected SmallerThanPatch, got {:?}",
            other.map(|s| s.description)
        ),
    }
}

/// A photo folder with `train/`, `val/` and `test/`: `val/` is the validation set, and with
/// random crops every epoch cuts new crops of the training photos (from those photos only).
#[test]
fn a_val_folder_and_random_crops_of_the_training_photos() {
    let dir = tempfile::tempdir().unwrap();
    for (split, k0, n) in [("train", 0u8, 3u8), ("val", 10, 2), ("test", 20, 1)] {
        std::fs::create_dir_all(dir.path().join(split)).unwrap();
        for k in k0..k0 + n {
            let path = dir.path().join(split).join(format!("p{k}.png"));
            coords_png(&path, k, 24 + k as u32, 18);
        }
    }
    let opts = LoadOptions {
        patch: Some(8),
        random_crops: true,
        ..Default::default()
    };
    let s = load(dir.path(), &opts).unwrap();
    // Each photo is 18 high: 2 rows of 3 (or 4) patches.
    assert_eq!(
        (s.train.n, s.val.n, s.test.n),
        (2 * 3 * 3, 2 * 2 * 4, 2 * 5)
    );
    assert!((0..s.val.n).all(|i| [10, 11].contains(&s.val.image(i)[2 * 64])));
    assert!(s.description.contains("random crops"), "{}", s.description);
    let pool = s.train_crops.clone().expect("random crops asked for");
    assert_eq!(pool.crops_per_epoch(), s.train.n);
    let images = s.train_images();
    assert_eq!(images.len(), s.train.n);
    let (a, b) = (images.epoch(5, 0), images.epoch(5, 1));
    assert_ne!(a.pixels, b.pixels, "every epoch cuts new crops");
    // Blue is the photo's number: only training photos are cut.
    assert!((0..a.n).all(|i| a.image(i)[2 * 64..3 * 64].iter().all(|&v| v < 3)));

    // Without random crops there is no pool and the batcher gets the grid.
    let grid = load(
        dir.path(),
        &LoadOptions {
            random_crops: false,
            ..opts
        },
    )
    .unwrap();
    assert!(grid.train_crops.is_none());
    assert_eq!(grid.train_images().epoch(5, 0).pixels, grid.train.pixels);
}

/// Patches of an image set in memory (how CIFAR-10 binary files are cut): labels follow.
#[test]
fn image_sets_cut_into_patches_keep_their_labels() {
    let (n, c, h, w) = (2, 3, 16, 24);
    let set = ImageSet {
        pixels: (0..n * c * h * w).map(|i| (i % 256) as u8).collect(),
        labels: vec![4, 7],
        n,
        c,
        h,
        w,
        classes: Vec::new(),
    };
    let p = set.patches(8).unwrap();
    assert_eq!((p.n, p.h, p.w), (12, 8, 8));
    assert_eq!(p.labels, [vec![4; 6], vec![7; 6]].concat());
    // Patch 4 of image 0 is row 1, column 1: it starts at y 8, x 8 of channel 0.
    assert_eq!(p.image(4)[0], set.image(0)[8 * w + 8]);
    // Channel 2 of patch 7 (image 1, row 0, column 1).
    assert_eq!(p.image(7)[2 * 64], set.image(1)[2 * h * w + 8]);
    assert!(set.patches(17).is_err());
    assert!(set.patches(0).is_err());
}

/// With `crop`, images of different sizes are center-cropped to the smallest height and width
/// among them, rounded down to the network's multiple; without it, a size other than the
/// first image's is an error that names the file. (The size used to be the first image's
/// even with `crop`, and a smaller image failed with a message asking for `crop`.)
#[test]
fn crop_takes_the_smallest_size_rounded_to_the_multiple() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [(40u32, 40u32), (30, 21), (25, 19), (33, 27)];
    for (k, &(w, h)) in sizes.iter().enumerate() {
        coords_png(&dir.path().join(format!("p{k}.png")), k as u8, w, h);
    }
    let opts = LoadOptions {
        crop: true,
        multiple: 4,
        ..Default::default()
    };
    let s = load_test(dir.path(), &opts).unwrap();
    // Smallest: 25 wide, 19 high; rounded down to multiples of 4: 24x16.
    assert_eq!((s.n, s.h, s.w), (4, 16, 24));
    for (k, &(w, h)) in sizes.iter().enumerate() {
        let (x0, y0) = ((w as usize - 24) / 2, (h as usize - 16) / 2);
        let img = s.image(k);
        assert_eq!(
            (img[0], img[16 * 24], img[2 * 16 * 24]),
            (x0 as u8, y0 as u8, k as u8),
            "image {k}"
        );
    }
    let not_rounded = LoadOptions {
        multiple: 1,
        ..opts.clone()
    };
    let s = load_test(dir.path(), &not_rounded).unwrap();
    assert_eq!((s.h, s.w), (19, 25));
    match load_test(dir.path(), &LoadOptions::default()) {
        Err(e @ DataError::WrongImageSize { .. }) => {
            let e = e.to_string();
            assert!(e.contains("p1.png") && e.contains("crop"), "{e}");
        }
        other => panic!("expected WrongImageSize, got {:?}", other.map(|s| s.n)),
    }
}
