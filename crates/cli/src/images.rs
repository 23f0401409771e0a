//! Image files in and out for `denoise generate`: 8- or 16-bit, gray, gray + alpha, RGB or
//! RGBA, PNG or JPEG. The network sees RGB on `[0, 1]`; gray images are repeated into the three
//! channels and averaged back; alpha is kept untouched; the output has the input's size,
//! channels and bit depth, and its EXIF data (orientation included) and ICC colour profile.

use std::path::Path;

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

/// Reads a PNG or JPEG file.
pub fn read(path: &Path) -> Result<Picture> {
    let cannot_decode = || format!("cannot decode {} as a PNG or JPEG image", path.display());
    let mut decoder = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?
        .into_decoder()
        .with_context(cannot_decode)?;
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

/// The format an output path asks for.
pub fn format_of(path: &Path) -> Result<ImageFormat> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("png") => Ok(ImageFormat::Png),
        Some("jpg" | "jpeg") => Ok(ImageFormat::Jpeg),
        _ => bail!(
            "--out {}: expected a .png or .jpg file name",
            path.display()
        ),
    }
}

/// Whether an image like `like` can be written in `format` without losing bits or alpha.
pub fn check_writable(like: &Picture, format: ImageFormat) -> Result<()> {
    if format == ImageFormat::Jpeg && (like.sixteen || like.alpha.is_some()) {
        bail!(
            "JPEG holds only 8-bit images without alpha, the input is {}: write a .png",
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
    if format == ImageFormat::Jpeg {
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, jpeg_quality);
        img.write_with_encoder(with_metadata(encoder, like, JPEG_MAX_EXIF)?)?;
    } else {
        let encoder = image::codecs::png::PngEncoder::new(&mut bytes);
        img.write_with_encoder(with_metadata(encoder, like, usize::MAX)?)?;
    }
    Ok(bytes)
}

/// The most EXIF bytes a JPEG holds: one APP1 segment (65,535 bytes with its length and the
/// "Exif" header). The encoder does not check, and would write a broken file.
const JPEG_MAX_EXIF: usize = 65533 - 6;

/// `encoder` set to write `like`'s ICC profile, and its EXIF data if at most `max_exif` bytes.
fn with_metadata<E: ImageEncoder>(mut encoder: E, like: &Picture, max_exif: usize) -> Result<E> {
    match &like.exif {
        Some(exif) if exif.len() > max_exif => tracing::warn!(
            "the input's EXIF data ({} bytes) does not fit in a JPEG ({max_exif} at most): left \
             out; write a .png to keep it",
            exif.len()
        ),
        Some(exif) => encoder
            .set_exif_metadata(exif.clone())
            .context("the output format cannot hold the input's EXIF data")?,
        None => {}
    }
    if let Some(icc) = &like.icc {
        encoder
            .set_icc_profile(icc.clone())
            .context("the output format cannot hold the input's ICC profile")?;
    }
    Ok(encoder)
}

/// The PNG and JPEG files directly inside `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
                })
        })
        .collect();
    files.sort();
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
}
