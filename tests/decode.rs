//! Image decoding: error variants on a generated corpus of broken files, Pillow-equal RGB on the
//! fixtures in `tests/fixtures/preprocess` (written by `tools/ref_preprocess.py`), EXIF
//! orientation, decompression bombs, and no panic on random or damaged bytes.

use std::path::{Path, PathBuf};

use coft::data::decode::{decode_rgb, decode_rgb_bytes, DecodeError, DecodeLimits};
use image::RgbImage;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).unwrap()
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// HWC uint8 `.npy` (as written by numpy for a C-order array) as an RGB image.
fn npy_rgb(rel: &str) -> RgbImage {
    let bytes = std::fs::read(fixtures().join(rel)).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    assert_eq!(bytes[6], 1, "npy version 1 expected");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(
        header.contains("'|u1'") && header.contains("False"),
        "{header}"
    );
    let shape: Vec<u32> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    assert_eq!(shape.len(), 3);
    RgbImage::from_raw(shape[1], shape[0], bytes[10 + hlen..].to_vec()).unwrap()
}

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

/// Writes `bytes` as `name` in `dir` and decodes it.
fn decode_file(dir: &Path, name: &str, bytes: &[u8]) -> (PathBuf, Result<RgbImage, DecodeError>) {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    let r = decode_rgb(&p, &limits());
    if let Err(e) = &r {
        check_message(e, &p);
    }
    (p, r)
}

/// Every message is one line and names the file.
fn check_message(e: &DecodeError, path: &Path) {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line message: {msg:?}");
    assert!(
        msg.contains(&path.display().to_string()),
        "message does not name the file: {msg}"
    );
    assert_eq!(e.path(), path);
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, tag: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = tag.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A PNG whose header declares `w`x`h` RGB but which carries almost no data.
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut png, b"IHDR", &ihdr);
    // zlib stream of a few zero bytes (stored block)
    png_chunk(
        &mut png,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x04, 0x00, 0xFB, 0xFF, 0, 0, 0, 0, 0, 0x04, 0x00, 0x01,
        ],
    );
    png_chunk(&mut png, b"IEND", &[]);
    png
}

fn encode_png(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn broken_files_give_the_right_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let (_, r) = decode_file(d, "empty.jpg", &[]);
    assert!(matches!(r, Err(DecodeError::Empty { .. })), "{r:?}");

    let jpeg = fixture_bytes("jpeg_baseline_120x80.jpg");
    for (name, cut) in [
        ("half.jpg", jpeg.len() / 2),
        ("cut10.jpg", jpeg.len() - 10),
        ("noeoi.jpg", jpeg.len() - 2),
    ] {
        let (_, r) = decode_file(d, name, &jpeg[..cut]);
        assert!(
            matches!(r, Err(DecodeError::Corrupt { format: "JPEG", .. })),
            "{name}: {r:?}"
        );
    }
    let prog = fixture_bytes("jpeg_progressive_120x80.jpg");
    let (_, r) = decode_file(d, "prog_half.jpg", &prog[..prog.len() / 2]);
    assert!(matches!(r, Err(DecodeError::Corrupt { .. })), "{r:?}");
    // Junk after the end-of-image marker is fine.
    let mut trailing = jpeg.clone();
    trailing.extend_from_slice(b"trailing junk");
    let (_, r) = decode_file(d, "trailing.jpg", &trailing);
    assert_eq!(r.unwrap().dimensions(), (120, 80));

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut random = vec![0u8; 4096];
    rng.fill(&mut random[..]);
    random[0] = b'r'; // no format's magic starts with 'r'
    let (_, r) = decode_file(d, "random.jpg", &random);
    assert!(matches!(r, Err(DecodeError::UnknownFormat { .. })), "{r:?}");

    let (_, r) = decode_file(d, "notes.png", b"this is a text file, not a PNG\n");
    match &r {
        Err(e @ DecodeError::UnknownFormat { .. }) => {
            assert!(e.to_string().contains("74 68 69 73"), "{e}"); // first bytes shown
        }
        other => panic!("{other:?}"),
    }

    let (_, r) = decode_file(d, "bomb.png", &png_declaring(100_000, 100_000));
    assert!(
        matches!(
            r,
            Err(DecodeError::TooLarge {
                width: 100_000,
                height: 100_000,
                ..
            })
        ),
        "{r:?}"
    );

    // A valid 1x1 (or 50x1) image is classified like any other: resizing handles any size.
    let (_, r) = decode_file(d, "one.png", &encode_png(&RgbImage::new(1, 1)));
    assert_eq!(r.unwrap().dimensions(), (1, 1));
    let (_, r) = decode_file(d, "line.png", &encode_png(&RgbImage::new(50, 1)));
    assert_eq!(r.unwrap().dimensions(), (50, 1));
    // A caller may still ask for a minimum side.
    let strict = DecodeLimits {
        min_side: 2,
        ..DecodeLimits::default()
    };
    let one = d.join("one.png");
    let r = decode_rgb(&one, &strict);
    assert!(
        matches!(
            r,
            Err(DecodeError::TooSmall {
                width: 1,
                height: 1,
                min_side: 2,
                ..
            })
        ),
        "{r:?}"
    );
    let (_, r) = decode_file(d, "two.png", &encode_png(&RgbImage::new(2, 2)));
    assert_eq!(r.unwrap().dimensions(), (2, 2));

    // A format the image crate knows but we do not accept.
    let mut ico = vec![0u8, 0, 1, 0, 1, 0];
    ico.extend_from_slice(&[0u8; 64]);
    let (_, r) = decode_file(d, "icon.ico", &ico);
    assert!(matches!(r, Err(DecodeError::Unsupported { .. })), "{r:?}");

    let missing = d.join("missing.png");
    match decode_rgb(&missing, &limits()) {
        Err(e @ DecodeError::Io { .. }) => {
            check_message(&e, &missing);
            let DecodeError::Io { error, .. } = &e else {
                unreachable!()
            };
            assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(decode_rgb(d, &limits()), Err(DecodeError::Io { .. })),
        "a directory"
    );
}

#[cfg(unix)]
#[test]
fn permission_denied_is_an_io_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("secret.png");
    std::fs::write(&p, encode_png(&RgbImage::new(4, 4))).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&p).is_ok() {
        // root (or CAP_DAC_OVERRIDE) reads it anyway
        println!("skipped: running with privileges that ignore file permissions");
        return;
    }
    match decode_rgb(&p, &limits()) {
        Err(DecodeError::Io { error, .. }) => {
            assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn declared_dimensions_are_checked_before_decoding() {
    // JPEG: patch the SOF0 frame header of a real file to 60000x60000.
    let mut jpeg = fixture_bytes("jpeg_baseline_120x80.jpg");
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("SOF0");
    jpeg[sof + 5..sof + 7].copy_from_slice(&60000u16.to_be_bytes()); // height
    jpeg[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes()); // width
    let r = decode_rgb_bytes(&jpeg, &limits());
    assert!(
        matches!(
            r,
            Err(DecodeError::TooLarge {
                width: 60000,
                height: 60000,
                ..
            })
        ),
        "{r:?}"
    );

    // GIF: logical screen 65535x65535.
    let mut gif = fixture_bytes("gif_3frames_60x40.gif");
    gif[6..10].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    let r = decode_rgb_bytes(&gif, &limits());
    assert!(
        matches!(
            r,
            Err(DecodeError::TooLarge {
                width: 65535,
                height: 65535,
                ..
            })
        ),
        "{r:?}"
    );

    // Custom limits on a normal file.
    let png = fixture_bytes("rgb_97x61.png");
    let small = DecodeLimits {
        max_pixels: 97 * 61 - 1,
        ..limits()
    };
    assert!(matches!(
        decode_rgb_bytes(&png, &small),
        Err(DecodeError::TooLarge {
            width: 97,
            height: 61,
            ..
        })
    ));
    let exact = DecodeLimits {
        max_pixels: 97 * 61,
        ..limits()
    };
    assert!(decode_rgb_bytes(&png, &exact).is_ok());
    let tiny_alloc = DecodeLimits {
        max_alloc: 1000,
        ..limits()
    };
    let r = decode_rgb_bytes(&png, &tiny_alloc);
    assert!(matches!(r, Err(DecodeError::TooLarge { .. })), "{r:?}");
    let e = r.unwrap_err().to_string();
    assert!(e.starts_with("<memory>: image too large: 97x61"), "{e}");
    let big_side = DecodeLimits {
        min_side: 62,
        ..limits()
    };
    assert!(matches!(
        decode_rgb_bytes(&png, &big_side),
        Err(DecodeError::TooSmall { height: 61, .. })
    ));
}

#[test]
fn odd_formats_decode_like_pillow() {
    // Lossless: identical bytes to Pillow's convert("RGB") (16-bit grey: high byte, see decode.rs).
    for case in manifest()["cases"].as_array().unwrap() {
        let Some(dec) = case.get("decoded") else {
            continue;
        };
        let name = case["name"].as_str().unwrap();
        let ours = decode_rgb(&fixtures().join(case["file"].as_str().unwrap()), &limits()).unwrap();
        let want = npy_rgb(dec.as_str().unwrap());
        assert_eq!(ours.dimensions(), want.dimensions(), "{name}");
        let d = ours
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        println!(
            "{name:<24} ({}) decoded max |diff| vs Pillow: {d}",
            case["note"].as_str().unwrap()
        );
        match case["kind"].as_str().unwrap() {
            "exact" => assert_eq!(d, 0, "{name}"),
            // CMYK and greyscale JPEGs have no chroma subsampling: tight.
            _ if name.contains("cmyk") || name.contains("grey") => assert!(d <= 2, "{name}: {d}"),
            _ => {} // colour JPEGs: see tests/preprocess.rs
        }
    }
}

#[test]
fn exif_orientations_match_exif_transpose() {
    for case in manifest()["orientation_cases"].as_array().unwrap() {
        let k = case["orientation"].as_u64().unwrap();
        let ours = decode_rgb(&fixtures().join(case["file"].as_str().unwrap()), &limits()).unwrap();
        let want = npy_rgb(case["decoded"].as_str().unwrap());
        assert_eq!(ours, want, "orientation {k}");
    }
}

#[test]
fn multi_frame_gif_uses_the_first_frame() {
    let bytes = fixture_bytes("gif_3frames_60x40.gif");
    let first = decode_rgb_bytes(&bytes, &limits()).unwrap();
    let frames: Vec<_> = image::AnimationDecoder::into_frames(
        image::codecs::gif::GifDecoder::new(std::io::Cursor::new(&bytes)).unwrap(),
    )
    .collect_frames()
    .unwrap();
    assert_eq!(frames.len(), 3);
    let rgb = |f: &image::Frame| image::DynamicImage::ImageRgba8(f.buffer().clone()).to_rgb8();
    assert_eq!(first, rgb(&frames[0]));
    assert_ne!(first, rgb(&frames[1]));
}

#[test]
fn decoding_from_many_threads_is_consistent() {
    use rayon::prelude::*;
    let files: Vec<PathBuf> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let serial: Vec<_> = files
        .iter()
        .map(|p| decode_rgb(p, &limits()).unwrap())
        .collect();
    for _ in 0..3 {
        let parallel: Vec<_> = files
            .par_iter()
            .map(|p| decode_rgb(p, &limits()).unwrap())
            .collect();
        assert_eq!(serial, parallel);
    }
}

/// Random bytes, random bytes behind each format's magic, every fixture truncated and with bytes
/// flipped: decoding returns (an image or an error), it never panics or aborts.
#[test]
fn never_panics_on_damaged_or_random_bytes() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    let magics: [&[u8]; 8] = [
        b"\x89PNG\r\n\x1a\n",
        b"\xFF\xD8\xFF",
        b"GIF89a",
        b"RIFF\x20\x00\x00\x00WEBPVP8L",
        b"BM",
        b"II*\x00",
        b"MM\x00*",
        b"RIFF\x20\x00\x00\x00WEBPVP8 ",
    ];
    for len in [0usize, 1, 2, 7, 16, 64, 300, 2000] {
        for m in magics {
            let mut v = m.to_vec();
            let mut tail = vec![0u8; len];
            rng.fill(&mut tail[..]);
            v.extend_from_slice(&tail);
            inputs.push(v);
        }
        let mut v = vec![0u8; len];
        rng.fill(&mut v[..]);
        inputs.push(v);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for i in 0..24 {
            inputs.push(bytes[..bytes.len() * i / 24].to_vec());
        }
        for _ in 0..24 {
            let mut v = bytes.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..v.len());
                v[at] = rng.random();
            }
            inputs.push(v);
        }
    }
    let mut ok = 0;
    let mut caught = 0;
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    for input in &inputs {
        match decode_rgb_bytes(input, &limits()) {
            Ok(img) => {
                assert!(img.width() >= 2 && img.height() >= 2);
                ok += 1;
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "{msg:?}");
                if msg.contains("the decoder panicked") {
                    caught += 1;
                }
                let kind = format!("{e:?}")
                    .split([' ', '{', '('])
                    .next()
                    .unwrap()
                    .to_string();
                *errors.entry(kind).or_default() += 1;
            }
        }
    }
    println!(
        "{} inputs: {ok} decoded, errors {errors:?}, decoder panics caught: {caught}",
        inputs.len()
    );
}
