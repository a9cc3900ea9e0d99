//! Reading one image file for packing, refusing what a decoder would quietly fill in: a JPEG cut inside
//! its image data decodes (the missing rows come out grey) where PIL, which upstream reads with, stops
//! with "image file is truncated". A truncated PNG fails its own decoder already.

use std::path::Path;

use image::DynamicImage;

use crate::error::{DataError, Result};

/// The image at `path`, decoded by its contents (not its extension).
pub fn read_image(path: &Path) -> Result<DynamicImage> {
    let bad = |detail: String| DataError::Image { path: path.into(), detail };
    // (an unreadable file is a bad image, which `pack --skip-bad` leaves out, as a bad decode is)
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if let Some(problem) = jpeg_truncation(&bytes) {
        return Err(bad(problem));
    }
    image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?
        .decode()
        .map_err(|e| bad(e.to_string()))
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
    }
}
