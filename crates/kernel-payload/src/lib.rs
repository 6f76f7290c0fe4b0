//! The compressed kernel inside a Linux bzImage, unpacked natively.
//!
//! A bzImage carries the kernel proper (`vmlinux`, a stripped ELF) compressed, at
//! `payload_offset` in its setup header (boot protocol 2.08+, `Documentation/arch/x86/
//! boot.rst`); its own decompressor unpacks it at boot. A VMM that unpacks it first can
//! enter the ELF directly (its PVH entry), as Cloud Hypervisor and Firecracker boot an
//! uncompressed `vmlinux`. The kernel's build appends the uncompressed size after the
//! stream (`arch/x86/boot/compressed/Makefile`, `*_with_size`); the decoders stop at
//! the end of the stream and ignore it.
//!
//! Decoders: `liblzma` (the xz reference library: kernels are compressed with its
//! x86 BCJ filter, which pure-Rust decoders lack), `flate2` and `ruzstd`.

use std::io::Read;

/// The compression of a payload, told by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Xz,
    Gzip,
    Zstd,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Xz => "xz",
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("the kernel payload starts {magic:02x?}, which is none of xz, gzip or zstd (bzip2, lzma, lzo and lz4 kernels are not supported)")]
    UnknownFormat { magic: Vec<u8> },
    #[error("the {format} kernel payload is corrupt or truncated: {reason}")]
    Corrupt {
        format: &'static str,
        reason: String,
    },
    #[error("the {format} kernel payload unpacks to more than {limit} bytes")]
    TooLarge { format: &'static str, limit: usize },
}

/// The format of `payload`, by its magic (xz: FD 37 7A 58 5A 00; gzip: 1F 8B; zstd: 28 B5 2F FD).
pub fn detect(payload: &[u8]) -> Result<Format, PayloadError> {
    if payload.starts_with(&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) {
        Ok(Format::Xz)
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        Ok(Format::Gzip)
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Format::Zstd)
    } else {
        Err(PayloadError::UnknownFormat {
            magic: payload.iter().take(6).copied().collect(),
        })
    }
}

/// Unpacks `payload`, refusing more than `limit` bytes of output.
pub fn unpack(payload: &[u8], limit: usize) -> Result<Vec<u8>, PayloadError> {
    let format = detect(payload)?;
    let corrupt = |e: std::io::Error| PayloadError::Corrupt {
        format: format.name(),
        reason: e.to_string(),
    };
    let reader: Box<dyn Read + '_> = match format {
        Format::Xz => Box::new(liblzma::read::XzDecoder::new(payload)),
        Format::Gzip => Box::new(flate2::read::GzDecoder::new(payload)),
        Format::Zstd => Box::new(ruzstd::decoding::StreamingDecoder::new(payload).map_err(
            |e| PayloadError::Corrupt {
                format: "zstd",
                reason: e.to_string(),
            },
        )?),
    };
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() > limit {
        return Err(PayloadError::TooLarge {
            format: format.name(),
            limit,
        });
    }
    if out.is_empty() {
        return Err(PayloadError::Corrupt {
            format: format.name(),
            reason: "it unpacks to nothing".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TEXT: &[u8] = b"\x7fELF a kernel, or something shaped like one, repeated. \
        \x7fELF a kernel, or something shaped like one, repeated.";

    #[test]
    fn each_format_unpacks_with_the_size_the_kernel_build_appends() {
        let mut xz = Vec::new();
        let mut e = liblzma::write::XzEncoder::new(&mut xz, 6);
        e.write_all(TEXT).unwrap();
        e.finish().unwrap();
        let mut gz = Vec::new();
        let mut e = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::best());
        e.write_all(TEXT).unwrap();
        e.finish().unwrap();
        for mut packed in [xz, gz] {
            packed.extend_from_slice(&(TEXT.len() as u32).to_le_bytes());
            assert_eq!(unpack(&packed, 1 << 20).unwrap(), TEXT);
        }
    }

    #[test]
    fn zstd_frames_unpack() {
        // `printf 'hello' | zstd -c | xxd -i`: a single frame with its checksum.
        let frame = [
            0x28, 0xb5, 0x2f, 0xfd, 0x24, 0x05, 0x29, 0x00, 0x00, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
            0x9e, 0xd1, 0x4b, 0x5c,
        ];
        assert_eq!(unpack(&frame, 100).unwrap(), b"hello");
    }

    #[test]
    fn bad_payloads_are_errors_naming_what_is_wrong() {
        let e = unpack(b"BZh91AY&SY", 100).unwrap_err().to_string();
        assert!(e.contains("42, 5a, 68"), "{e}");
        let mut xz = Vec::new();
        let mut enc = liblzma::write::XzEncoder::new(&mut xz, 6);
        enc.write_all(TEXT).unwrap();
        enc.finish().unwrap();
        let e = unpack(&xz[..xz.len() / 2], 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("xz kernel payload is corrupt or truncated"),
            "{e}"
        );
        let e = unpack(&xz, 10).unwrap_err().to_string();
        assert!(e.contains("more than 10 bytes"), "{e}");
    }
}
