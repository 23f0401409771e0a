//! Image files in and out for `denoise generate`: 8- or 16-bit, gray, gray + alpha, RGB or
//! RGBA, PNG, JPEG, TIFF, WebP or BMP. The network sees RGB on `[0, 1]`; gray images are repeated into the three
//! channels and averaged back; alpha is kept untouched; the output has the input's size,
//! channels and bit depth, and its EXIF data (orientation included) and ICC colour profile.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageEncoder, ImageFormat};

/// A decoded image: RGB planes for the network plus what is needed to write it back alike.
pub struct Picture {
    /// `(3, h, w)` on `[0, 1]`.
    pub rgb: Vec<f32>,
    pub h: usize,
    pub w: usize,
    pub gray: bool,
    pub sixteen: bool,
    /// The alpha channel at the file's own depth (0..255 or 0..65535), if any.
    pub alpha: Option<Vec<u16>>,
    /// The file's EXIF data (a camera's orientation tag among it), written back unchanged.
    pub exif: Option<Vec<u8>>,
    /// The file's ICC colour profile, written back unchanged.
    pub icc: Option<Vec<u8>>,
}

/// The channel layout in words, for messages.
impl Picture {
    pub fn describe(&self) -> String {
        format!(
            "{}x{} {}-bit {}",
            self.w,
            self.h,
            if self.sixteen { 16 } else { 8 },
            match (self.gray, self.alpha.is_some()) {
                (true, false) => "gray",
                (true, true) => "gray+alpha",
                (false, false) => "RGB",
                (false, true) => "RGBA",
            }
        )
    }
}

/// The formats read and written, in words.
pub const FORMAT_NAMES: &str = "PNG, JPEG, TIFF, WebP or BMP";

/// The most pixels an input image may have (134 megapixels, a 15,000 x 9,000 photo): reading
/// one takes about 30 bytes a pixel (4 GB at the limit) before the network runs in tiles.
pub const MAX_PIXELS: u64 = 1 << 27;

/// Reads an image file of one of [`FORMAT_NAMES`] (found from its contents), of at most
/// [`MAX_PIXELS`] pixels (checked from its header, before the pixels are decoded).
pub fn read(path: &Path) -> Result<Picture> {
    let cannot_decode = || {
        format!(
            "cannot decode {} as an image ({FORMAT_NAMES})",
            path.display()
        )
    };
    let mut decoder = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?
        .into_decoder()
        .with_context(cannot_decode)?;
    // Before anything is allocated for the pixels: a header may claim any size.
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        bail!(
            "{}: the image claims {w}x{h} pixels ({:.0} megapixels); at most {} megapixels are \
             read (about 30 bytes a pixel while denoising)",
            path.display(),
            f64::from(w) * f64::from(h) / 1e6,
            MAX_PIXELS / 1_000_000
        );
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8); // 16-bit RGBA
    decoder.set_limits(limits).with_context(cannot_decode)?;
    // Metadata that cannot be read is left behind; the pixels are what matter.
    let exif = decoder.exif_metadata().ok().flatten();
    let icc = decoder.icc_profile().ok().flatten();
    let img = DynamicImage::from_decoder(decoder).with_context(cannot_decode)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        bail!("{}: the image is empty ({w}x{h})", path.display());
    }
    let color = img.color();
    let gray = !color.has_color();
    let has_alpha = color.has_alpha();
    let sixteen = color.bytes_per_pixel() / color.channel_count() >= 2;
    let n = w * h;
    let mut rgb = vec![0f32; 3 * n];
    let mut alpha = has_alpha.then(|| vec![0u16; n]);
    // Every pixel as 16-bit RGBA: exact for 8-bit files too (v * 257), so v / 65535 = v8 / 255.
    let rgba = img.to_rgba16();
    for (i, p) in rgba.pixels().enumerate() {
        for c in 0..3 {
            rgb[c * n + i] = p.0[c] as f32 / 65535.0;
        }
        if let Some(a) = alpha.as_mut() {
            a[i] = if sixteen { p.0[3] } else { p.0[3] / 257 };
        }
    }
    Ok(Picture {
        rgb,
        h,
        w,
        gray,
        sixteen,
        alpha,
        exif,
        icc,
    })
}

/// The format an output path asks for, by its extension.
pub fn format_of(path: &Path) -> Result<ImageFormat> {
    match ImageFormat::from_path(path) {
        Ok(
            f @ (ImageFormat::Png
            | ImageFormat::Jpeg
            | ImageFormat::Tiff
            | ImageFormat::WebP
            | ImageFormat::Bmp),
        ) => Ok(f),
        _ => bail!(
            "--out {}: expected a .png, .jpg, .tif, .webp or .bmp file name",
            path.display()
        ),
    }
}

/// Whether an image like `like` can be written in `format` without losing bits or alpha.
pub fn check_writable(like: &Picture, format: ImageFormat) -> Result<()> {
    if format == ImageFormat::Jpeg && (like.sixteen || like.alpha.is_some()) {
        bail!(
            "JPEG holds only 8-bit images without alpha, the input is {}: write a .png or .tif",
            like.describe()
        );
    }
    if like.sixteen && !matches!(format, ImageFormat::Png | ImageFormat::Tiff) {
        bail!(
            "{} holds only 8-bit images, the input is {}: write a .png or .tif",
            if format == ImageFormat::WebP {
                "WebP"
            } else {
                "BMP"
            },
            like.describe()
        );
    }
    Ok(())
}

/// Encodes `rgb` (`(3, h, w)` on `[0, 1]`) with the layout of `like` into `format` (JPEG at
/// `jpeg_quality`, 1 to 100).
pub fn encode(
    rgb: &[f32],
    like: &Picture,
    format: ImageFormat,
    jpeg_quality: u8,
) -> Result<Vec<u8>> {
    let (w, h, n) = (like.w as u32, like.h as u32, like.w * like.h);
    let max = if like.sixteen { 65535.0 } else { 255.0 };
    let q = |v: f32| (v.clamp(0.0, 1.0) * max).round() as u16;
    let value = |i: usize| -> [u16; 3] {
        if like.gray {
            let m = (rgb[i] + rgb[n + i] + rgb[2 * n + i]) / 3.0;
            [q(m); 3]
        } else {
            [q(rgb[i]), q(rgb[n + i]), q(rgb[2 * n + i])]
        }
    };
    check_writable(like, format)?;
    let a = |i: usize| like.alpha.as_ref().map_or(0, |a| a[i]);
    let img: DynamicImage = match (like.sixteen, like.gray, like.alpha.is_some()) {
        (false, true, false) => DynamicImage::ImageLuma8(ImageBuffer::from_fn(w, h, |x, y| {
            image::Luma([value(y as usize * like.w + x as usize)[0] as u8])
        })),
        (false, true, true) => DynamicImage::ImageLumaA8(ImageBuffer::from_fn(w, h, |x, y| {
            let i = y as usize * like.w + x as usize;
            image::LumaA([value(i)[0] as u8, a(i) as u8])
        })),
        (false, false, false) => DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
            image::Rgb(value(y as usize * like.w + x as usize).map(|v| v as u8))
        })),
        (false, false, true) => DynamicImage::ImageRgba8(ImageBuffer::from_fn(w, h, |x, y| {
            let i = y as usize * like.w + x as usize;
            let v = value(i);
            image::Rgba([v[0] as u8, v[1] as u8, v[2] as u8, a(i) as u8])
        })),
        (true, true, false) => DynamicImage::ImageLuma16(ImageBuffer::from_fn(w, h, |x, y| {
            image::Luma([value(y as usize * like.w + x as usize)[0]])
        })),
        (true, true, true) => DynamicImage::ImageLumaA16(ImageBuffer::from_fn(w, h, |x, y| {
            let i = y as usize * like.w + x as usize;
            image::LumaA([value(i)[0], a(i)])
        })),
        (true, false, false) => DynamicImage::ImageRgb16(ImageBuffer::from_fn(w, h, |x, y| {
            image::Rgb(value(y as usize * like.w + x as usize))
        })),
        (true, false, true) => DynamicImage::ImageRgba16(ImageBuffer::from_fn(w, h, |x, y| {
            let i = y as usize * like.w + x as usize;
            let v = value(i);
            image::Rgba([v[0], v[1], v[2], a(i)])
        })),
    };
    let mut bytes = Vec::new();
    match format {
        ImageFormat::Jpeg => {
            let encoder =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, jpeg_quality);
            img.write_with_encoder(with_metadata(encoder, like, JPEG_MAX_EXIF))?;
        }
        ImageFormat::Tiff => {
            let encoder = image::codecs::tiff::TiffEncoder::new(std::io::Cursor::new(&mut bytes));
            rgba_for_gray_alpha(img).write_with_encoder(with_metadata(
                encoder,
                like,
                usize::MAX,
            ))?;
        }
        ImageFormat::WebP => {
            let encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut bytes);
            img.write_with_encoder(with_metadata(encoder, like, usize::MAX))?;
        }
        ImageFormat::Bmp => {
            let encoder = image::codecs::bmp::BmpEncoder::new(&mut bytes);
            rgba_for_gray_alpha(img).write_with_encoder(with_metadata(
                encoder,
                like,
                usize::MAX,
            ))?;
        }
        _ => {
            let encoder = image::codecs::png::PngEncoder::new(&mut bytes);
            img.write_with_encoder(with_metadata(encoder, like, usize::MAX))?;
        }
    }
    Ok(bytes)
}

/// Gray + alpha as RGBA (the gray repeated), for the formats whose encoders have no gray +
/// alpha (TIFF) or write one that reads back without its alpha (BMP).
fn rgba_for_gray_alpha(img: DynamicImage) -> DynamicImage {
    match img {
        DynamicImage::ImageLumaA8(_) => DynamicImage::ImageRgba8(img.to_rgba8()),
        DynamicImage::ImageLumaA16(_) => DynamicImage::ImageRgba16(img.to_rgba16()),
        other => other,
    }
}

/// The most EXIF bytes a JPEG holds: one APP1 segment (65,535 bytes with its length and the
/// "Exif" header). The encoder does not check, and would write a broken file.
const JPEG_MAX_EXIF: usize = 65533 - 6;

/// `encoder` set to write `like`'s ICC profile, and its EXIF data if at most `max_exif` bytes;
/// what the format cannot hold is left out, with a warning.
fn with_metadata<E: ImageEncoder>(mut encoder: E, like: &Picture, max_exif: usize) -> E {
    let keep = "write a .png to keep it";
    if let Some(exif) = &like.exif {
        if exif.len() > max_exif {
            tracing::warn!(
                "the input's EXIF data ({} bytes) does not fit in a JPEG ({max_exif} at most): \
                 left out; {keep}",
                exif.len()
            );
        } else if encoder.set_exif_metadata(exif.clone()).is_err() {
            tracing::warn!("the output format holds no EXIF data: the input's left out; {keep}");
        }
    }
    if let Some(icc) = &like.icc {
        if encoder.set_icc_profile(icc.clone()).is_err() {
            tracing::warn!("the output format holds no ICC profile: the input's left out; {keep}");
        }
    }
    encoder
}

/// The image files (by their extensions) directly inside `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && denoise_data::folder::is_image(p))
        .collect();
    files.sort();
    Ok(files)
}

/// The image files `--image` names: itself, or those in the folder it names.
pub fn images_of(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        if !path.exists() {
            bail!("--image {}: no such file or folder", path.display());
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let files = list_images(path)?;
    if files.is_empty() {
        bail!(
            "--image {}: the folder has no image files (.png, .jpg, .tif, .webp, .bmp)",
            path.display()
        );
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EXIF data too large for a JPEG's one segment is left out (the encoder would write a
    /// broken file); a PNG keeps it.
    #[test]
    fn oversized_exif_is_left_out_of_a_jpeg() {
        let mut exif = vec![0x49, 0x49, 0x2A, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00];
        exif.resize(70_000, 0);
        let like = Picture {
            rgb: vec![0.5; 3 * 8 * 8],
            h: 8,
            w: 8,
            gray: false,
            sixteen: false,
            alpha: None,
            exif: Some(exif.clone()),
            icc: None,
        };
        for (format, kept) in [(ImageFormat::Jpeg, None), (ImageFormat::Png, Some(exif))] {
            let bytes = encode(&like.rgb, &like, format, 90).unwrap();
            let mut dec = image::ImageReader::new(std::io::Cursor::new(bytes))
                .with_guessed_format()
                .unwrap()
                .into_decoder()
                .unwrap();
            assert_eq!(dec.exif_metadata().unwrap(), kept, "{format:?}");
            DynamicImage::from_decoder(dec).unwrap();
        }
    }

    /// Every layout in every format: written and read back with the same pixels, alpha, depth
    /// and grayness (where the format keeps gray as gray), or refused before writing,
    /// with the reason, where the format cannot hold it (16 bits in JPEG, WebP, BMP; alpha in
    /// JPEG).
    #[test]
    fn every_layout_round_trips_or_is_refused() {
        let (w, h) = (7usize, 5usize);
        let dir = tempfile::tempdir().unwrap();
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Tiff,
            ImageFormat::WebP,
            ImageFormat::Bmp,
        ] {
            for (gray, alpha, sixteen) in (0..8).map(|k| (k & 1 == 1, k & 2 == 2, k & 4 == 4)) {
                let max = if sixteen { 65535.0 } else { 255.0 };
                // Levels of 8 bits, on the 16-bit grid too (v / 255 = 257 v / 65535): a
                // lossless format gives them back exactly.
                let rgb: Vec<f32> = (0..3)
                    .flat_map(|c| (0..w * h).map(move |i| (if gray { 0 } else { c }, i)))
                    .map(|(c, i)| ((i * 37 + c * 101) % 256) as f32 / 255.0)
                    .collect();
                let like = Picture {
                    rgb: rgb.clone(),
                    h,
                    w,
                    gray,
                    sixteen,
                    alpha: alpha.then(|| {
                        let scale = if sixteen { 257 } else { 1 };
                        (0..w * h).map(|i| (i * 13 % 256) as u16 * scale).collect()
                    }),
                    exif: None,
                    icc: None,
                };
                let what = format!("{format:?} {}", like.describe());
                let refused = (format == ImageFormat::Jpeg && (alpha || sixteen))
                    || (sixteen && matches!(format, ImageFormat::WebP | ImageFormat::Bmp));
                match check_writable(&like, format) {
                    Err(e) => {
                        assert!(refused, "{what}: {e}");
                        let e = e.to_string();
                        assert!(e.contains("8-bit") && e.contains(".png"), "{what}: {e}");
                        assert!(encode(&rgb, &like, format, 90).is_err(), "{what}");
                        continue;
                    }
                    Ok(()) => assert!(!refused, "{what} should be refused"),
                }
                let ext = format.extensions_str()[0];
                let path = dir.path().join(format!("x.{ext}"));
                std::fs::write(&path, encode(&rgb, &like, format, 100).unwrap()).unwrap();
                let back = read(&path).unwrap();
                assert_eq!((back.w, back.h, back.sixteen), (w, h, sixteen), "{what}");
                // WebP and BMP decode gray as RGB; TIFF's gray + alpha was written as RGBA.
                let tiff_gray_alpha = format == ImageFormat::Tiff && gray && alpha;
                if !tiff_gray_alpha && !matches!(format, ImageFormat::WebP | ImageFormat::Bmp) {
                    assert_eq!(back.gray, gray, "{what}");
                }
                assert_eq!(back.alpha, like.alpha, "{what}");
                let worst = back
                    .rgb
                    .iter()
                    .zip(&rgb)
                    .map(|(a, b)| (a - b).abs() * max)
                    .fold(0f32, f32::max);
                let allowed = if format == ImageFormat::Jpeg {
                    40.0
                } else {
                    0.01
                };
                assert!(worst <= allowed, "{what}: off by {worst} levels");
            }
        }
    }
}
