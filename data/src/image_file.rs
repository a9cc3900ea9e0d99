//! Reading one image file for packing, refusing what a decoder would quietly fill in: a JPEG cut inside
//! its image data decodes (the missing rows come out grey) where PIL, which upstream reads with, stops
//! with "image file is truncated". A truncated PNG fails its own decoder already.

use std::path::Path;

use image::DynamicImage;

use crate::error::{DataError, Result};

/// The most memory one image's decoded pixels may take (the decoder's own default is 512 MiB, about 179
/// megapixels of 8-bit RGB): about 700 megapixels of 8-bit RGB, 350 of 16-bit. A decode's peak is about
/// twice that (the file's bytes; a turned copy for an EXIF orientation of 90°), on every core at once.
pub const DECODE_LIMIT_BYTES: u64 = 2 << 30;

/// The image at `path`, decoded by its contents (not its extension), turned upright as its EXIF
/// orientation says (a phone's portrait photo is stored sideways with a tag saying so, which viewers
/// apply, as PIL's `ImageOps.exif_transpose` does).
pub fn read_image(path: &Path) -> Result<DynamicImage> {
    read_image_within(path, DECODE_LIMIT_BYTES)
}

/// [`read_image`], its decode allowed `limit` bytes.
fn read_image_within(path: &Path, limit: u64) -> Result<DynamicImage> {
    let bad = |detail: String| DataError::Image { path: path.into(), detail };
    // (an unreadable file is a bad image, which `pack --skip-bad` leaves out, as a bad decode is)
    let bytes = std::fs::read(path).map_err(|e| match std::fs::read_link(path) {
        // (a link whose target is gone reads as "no such file", of a file that is listed right there)
        Ok(to) if e.kind() == std::io::ErrorKind::NotFound => {
            bad(format!("a link to {}, which does not exist", to.display()))
        }
        _ => bad(e.to_string()),
    })?;
    if bytes.is_empty() {
        return Err(bad("an empty file (0 bytes)".into()));
    }
    if let Some(problem) = jpeg_truncation(&bytes) {
        return Err(bad(problem));
    }
    let mut reader =
        image::ImageReader::new(std::io::Cursor::new(&bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(limit);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    let size = match limit {
        l if l >= 1 << 30 => format!("{} GiB", l >> 30),
        l if l >= 1 << 20 => format!("{} MiB", l >> 20),
        l => format!("{} KiB", l >> 10),
    };
    let too_large = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => {
            bad(format!("{w} × {h} pixels need more than the {size} one image may take to decode: downscale it first"))
        }
        e => bad(e.to_string()),
    };
    // (the decoder's own limits cover its working memory, not the pixels it returns)
    if image::ImageDecoder::total_bytes(&decoder) > limit {
        let kind = image::error::LimitErrorKind::InsufficientMemory;
        return Err(too_large(image::ImageError::Limits(image::error::LimitError::from_kind(kind))));
    }
    // (a damaged EXIF block is no reason to refuse the pixels: they are taken as stored)
    let orientation =
        image::ImageDecoder::orientation(&mut decoder).unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(too_large)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Why a JPEG's bytes end before its end-of-image marker, if they do (`None` for a whole JPEG, or bytes
/// that are no JPEG: their decoder judges them). Walks the marker segments from the start-of-image
/// marker; a scan's entropy-coded data runs to the next marker (a 0xFF byte there is followed by 0x00,
/// or is a restart marker). Bytes after the end-of-image marker (a camera's trailer) are not looked at.
pub fn jpeg_truncation(b: &[u8]) -> Option<String> {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let truncated = |what: &str| Some(format!("truncated JPEG: the file ends {what}, before its end-of-image marker"));
    let mut i = 2;
    loop {
        // the next marker: fill bytes (0xFF) and, leniently as libjpeg, stray bytes before it
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else { return truncated("between segments") };
        i += 1;
        match marker {
            0xD9 => return None,
            // markers without a length: restarts, TEM (and a stuffed zero, which is no marker)
            0xD0..=0xD7 | 0x01 | 0x00 => continue,
            _ => {}
        }
        let Some(len) = b.get(i..i + 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize) else {
            return truncated(&format!("inside the marker 0xFF{marker:02X}"));
        };
        i += len;
        if i > b.len() {
            return truncated(&format!("inside the segment of marker 0xFF{marker:02X}"));
        }
        if marker == 0xDA {
            // a scan: its coded data up to the next marker
            loop {
                match b.get(i..i + 2) {
                    None => return truncated("inside its image data"),
                    Some([0xFF, next]) if *next != 0x00 && !(0xD0..=0xD7).contains(next) => break,
                    _ => i += 1,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(with_trailer: bool) -> Vec<u8> {
        let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, 128]));
        let mut out = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
        img.write_with_encoder(enc).unwrap();
        if with_trailer {
            out.extend_from_slice(b"camera trailer after the end-of-image marker");
        }
        out
    }

    #[test]
    fn a_whole_jpeg_passes_and_every_cut_of_it_is_refused() {
        for whole in [jpeg(false), jpeg(true)] {
            assert_eq!(jpeg_truncation(&whole), None);
            let eoi = whole.windows(2).rposition(|w| w == [0xFF, 0xD9]).unwrap();
            for cut in 2..eoi + 1 {
                let problem = jpeg_truncation(&whole[..cut]);
                assert!(
                    problem.as_deref().is_some_and(|p| p.starts_with("truncated JPEG")),
                    "cut at {cut}: {problem:?}"
                );
            }
        }
        assert_eq!(jpeg_truncation(b"\x89PNG\r\n\x1a\n"), None, "not a JPEG: its decoder judges it");
    }

    #[test]
    fn a_truncated_jpeg_file_is_an_image_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let whole = jpeg(false);
        let (good, cut) = (dir.path().join("good.jpg"), dir.path().join("cut.jpg"));
        std::fs::write(&good, &whole).unwrap();
        std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
        assert_eq!(read_image(&good).unwrap().width(), 64);
        let e = read_image(&cut).unwrap_err().to_string();
        assert!(e.contains("cut.jpg") && e.contains("truncated JPEG: the file ends inside its image data"), "{e}");
        std::fs::write(&cut, b"").unwrap();
        let e = read_image(&cut).unwrap_err().to_string();
        assert!(e.contains("cut.jpg") && e.contains("an empty file (0 bytes)"), "{e}");
        // a link whose target is gone: said, not "no such file" of a file listed right there
        #[cfg(unix)]
        {
            let link = dir.path().join("link.jpg");
            std::os::unix::fs::symlink(dir.path().join("moved.jpg"), &link).unwrap();
            let e = read_image(&link).unwrap_err().to_string();
            assert!(
                e.contains("link.jpg") && e.contains("a link to") && e.contains("moved.jpg, which does not exist"),
                "{e}"
            );
        }
    }

    /// `jpeg` with an EXIF block whose orientation tag (0x0112) is `orientation`, right after the
    /// start-of-image marker as a camera writes it (big-endian TIFF, one IFD entry).
    fn with_exif_orientation(jpeg: &[u8], orientation: u8) -> Vec<u8> {
        let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&[0, 1]); // entries
        tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, orientation, 0, 0]); // SHORT, count 1
        tiff.extend_from_slice(&[0, 0, 0, 0]); // no next IFD
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    /// A photo stored sideways with an orientation tag (6: turn 90° clockwise to view) is read upright,
    /// as a viewer shows it: a 64 × 48 picture stored with its left column red reads 48 × 64, red on top.
    #[test]
    fn an_exif_orientation_is_applied() {
        let stored = image::RgbImage::from_fn(64, 48, |x, _| match x < 32 {
            true => image::Rgb([250, 0, 0]),
            false => image::Rgb([0, 0, 250]),
        });
        let mut plain = Vec::new();
        stored.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut plain, 95)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("phone.jpg");
        std::fs::write(&path, with_exif_orientation(&plain, 6)).unwrap();
        let upright = read_image(&path).unwrap().to_rgb8();
        assert_eq!(upright.dimensions(), (48, 64));
        let (top, bottom) = (upright.get_pixel(24, 5), upright.get_pixel(24, 58));
        assert!(top[0] > 200 && top[2] < 50 && bottom[2] > 200 && bottom[0] < 50, "{top:?} {bottom:?}");
        // (without the tag, as stored)
        std::fs::write(&path, &plain).unwrap();
        assert_eq!(read_image(&path).unwrap().width(), 64);
        // an image larger than a decode may take is named with its size
        let e = read_image_within(&path, 4 << 10).unwrap_err().to_string();
        assert!(e.contains("phone.jpg") && e.contains("64 × 48 pixels need more than the 4 KiB"), "{e}");
    }
}
