//! The CIFAR-10 binary release: `data_batch_1..5.bin` and `test_batch.bin`, each 10,000 records
//! of one label byte and 3,072 pixel bytes (1,024 red, then green, then blue; rows top to
//! bottom). Images come out as CHW bytes, height and width the right way round.

use std::path::Path;

use crate::{io_err, DataError, ImageSet, Result, Splits};

/// The folder the official archive extracts to.
pub const BIN_DIR: &str = "cifar-10-batches-bin";
/// The five training batch files, 10,000 images each.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test batch file.
pub const TEST_FILE: &str = "test_batch.bin";
/// The class names, indexed by label.
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
/// Bytes per record: a label byte and a 32x32 RGB image.
pub const RECORD: usize = 1 + 3072;
/// Records per batch file.
pub const RECORDS_PER_FILE: usize = 10_000;
/// Held out for validation: the last 5,000 training images (half of `data_batch_5.bin`).
pub const VAL_IMAGES: usize = 5_000;

/// Reads one batch file; it must hold exactly 10,000 records.
pub fn read_batch(path: &Path) -> Result<ImageSet> {
    let expected = (RECORD * RECORDS_PER_FILE) as u64;
    let meta = std::fs::metadata(path).map_err(|_| DataError::Missing {
        path: path.to_path_buf(),
        what: format!("a CIFAR-10 batch file of {expected} bytes"),
    })?;
    if meta.len() != expected {
        return Err(DataError::BadSize {
            path: path.to_path_buf(),
            expected,
            found: meta.len(),
            what: "10,000 records of 3,073 bytes".into(),
        });
    }
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    parse_records(&bytes, path)
}

/// Parses whole records (label byte + 3,072 pixel bytes) of the file `path`; a label outside
/// 0-9 is an error naming the file and the record.
pub fn parse_records(bytes: &[u8], path: &Path) -> Result<ImageSet> {
    let n = bytes.len() / RECORD;
    let mut pixels = Vec::with_capacity(n * 3072);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if usize::from(rec[0]) >= CLASSES.len() {
            return Err(DataError::BadLabel {
                path: path.to_path_buf(),
                record: i,
                label: rec[0],
            });
        }
        labels.push(rec[0] as u16);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(ImageSet {
        pixels,
        labels,
        n,
        c: 3,
        h: 32,
        w: 32,
        classes: CLASSES.iter().map(|s| s.to_string()).collect(),
    })
}

fn concat(sets: Vec<ImageSet>) -> ImageSet {
    let mut out = ImageSet {
        c: 3,
        h: 32,
        w: 32,
        ..Default::default()
    };
    for s in sets {
        out.pixels.extend_from_slice(&s.pixels);
        out.labels.extend_from_slice(&s.labels);
        out.n += s.n;
        out.classes = s.classes;
    }
    out
}

/// Reads the six files of the binary release from `dir`: train (45,000), validation (the last
/// 5,000 training images) and test (10,000).
pub fn load_splits(dir: &Path) -> Result<Splits> {
    let train = TRAIN_FILES
        .iter()
        .map(|f| read_batch(&dir.join(f)))
        .collect::<Result<Vec<_>>>()?;
    let all = concat(train);
    let test = read_batch(&dir.join(TEST_FILE))?;
    let split = all.n - VAL_IMAGES;
    let train = all.select(&(0..split).collect::<Vec<_>>());
    let val = all.select(&(split..all.n).collect::<Vec<_>>());
    Ok(Splits {
        description: format!(
            "CIFAR-10 binary release in {}: {} train, {} validation, {} test images",
            dir.display(),
            train.n,
            val.n,
            test.n
        ),
        train,
        val,
        test,
        train_crops: None,
    })
}

/// True when all six files are present with the right size.
pub fn is_complete(dir: &Path) -> bool {
    let expected = (RECORD * RECORDS_PER_FILE) as u64;
    TRAIN_FILES
        .iter()
        .chain(std::iter::once(&TEST_FILE))
        .all(|f| {
            std::fs::metadata(dir.join(f))
                .map(|m| m.len() == expected)
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_chw_with_rows_top_to_bottom() {
        // One record whose red plane is x + 32*y (mod 256) in row-major order.
        let mut rec = vec![7u8];
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    rec.push(((x + 2 * y + 50 * c) % 256) as u8);
                }
            }
        }
        let file = Path::new("data_batch_1.bin");
        let set = parse_records(&rec, file).unwrap();
        assert_eq!((set.n, set.labels[0]), (1, 7));
        // A label outside 0-9, in the second record: an error naming the file and the record.
        let mut two = rec.clone();
        two.extend_from_slice(&rec);
        two[RECORD] = 200;
        let e = parse_records(&two, file).unwrap_err().to_string();
        assert!(
            e.contains("data_batch_1.bin") && e.contains("record 1") && e.contains("label 200"),
            "{e}"
        );
        let img = set.image(0);
        // pixel (c=1, y=3, x=5)
        assert_eq!(img[1024 + 3 * 32 + 5], (5 + 6 + 50) as u8);
    }

    #[test]
    fn truncated_file_names_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data_batch_1.bin");
        std::fs::write(&p, vec![0u8; 1000]).unwrap();
        let e = read_batch(&p).unwrap_err().to_string();
        assert!(
            e.contains("data_batch_1.bin") && e.contains("30730000") && e.contains("1000"),
            "{e}"
        );
        let e = read_batch(&dir.path().join("test_batch.bin"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("test_batch.bin") && e.contains("missing"), "{e}");
    }
}
