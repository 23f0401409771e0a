//! The archive half of the download: checksum, extraction through a temporary folder.

use std::path::Path;

use denoise_data::download::{install_archive, md5_file};
use denoise_data::DataError;

fn tar_gz(path: &Path, files: &[(&str, Vec<u8>)]) {
    let f = std::fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        f,
        flate2::Compression::fast(),
    ));
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
}

#[test]
fn a_wrong_checksum_is_refused_and_nothing_is_extracted() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("cifar-10-binary.tar.gz");
    tar_gz(
        &archive,
        &[("cifar-10-batches-bin/readme.html", b"hi".to_vec())],
    );
    let e = install_archive(&archive, dir.path(), "00000000000000000000000000000000").unwrap_err();
    assert!(matches!(e, DataError::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("cifar-10-binary.tar.gz"), "{e}");
    assert!(!dir.path().join("cifar-10-batches-bin").exists());
}

#[test]
fn an_incomplete_archive_is_refused_and_leaves_no_folder() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("cifar-10-binary.tar.gz");
    tar_gz(
        &archive,
        &[("cifar-10-batches-bin/data_batch_1.bin", vec![0u8; 3073])],
    );
    let md5 = md5_file(&archive).unwrap();
    let e = install_archive(&archive, dir.path(), &md5).unwrap_err();
    assert!(e.to_string().contains("does not hold a complete"), "{e}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("cifar-10-binary.tar.gz")]
    );
}

#[test]
fn md5_of_a_known_string() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, b"The quick brown fox jumps over the lazy dog").unwrap();
    assert_eq!(md5_file(&p).unwrap(), "9e107d9d372bb6826bd81d3542a419d6");
}
