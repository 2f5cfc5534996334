//! Compressors for the NAR stream, behind one `Write` so the pipeline does not care which.

use std::io::{self, Write};

use crate::nix::Compression;

/// NARs at least this large are compressed with several threads; below it the thread start-up
/// costs more than it saves, and `--jobs` already spreads small paths over the cores.
const MULTITHREAD_FROM: u64 = 16 << 20;

pub enum Encoder<W: Write> {
    Plain(W),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Xz(liblzma::write::XzEncoder<W>),
}

impl<W: Write> Encoder<W> {
    /// `nar_size` picks single- or multi-threaded compression; `level` None is the codec's default.
    pub fn new(
        compression: &Compression,
        level: Option<i32>,
        nar_size: u64,
        inner: W,
    ) -> io::Result<Self> {
        let threads = if nar_size >= MULTITHREAD_FROM {
            std::thread::available_parallelism().map_or(1, |n| n.get()) as u32
        } else {
            1
        };
        Ok(match compression {
            Compression::None => Encoder::Plain(inner),
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(inner, level.unwrap_or(3))?;
                if threads > 1 {
                    enc.multithread(threads)?;
                }
                Encoder::Zstd(enc)
            }
            Compression::Xz => {
                let preset = level.unwrap_or(6).clamp(0, 9) as u32;
                let stream = if threads > 1 {
                    liblzma::stream::MtStreamBuilder::new()
                        .threads(threads)
                        .preset(preset)
                        .check(liblzma::stream::Check::Crc64)
                        .encoder()
                } else {
                    liblzma::stream::Stream::new_easy_encoder(preset, liblzma::stream::Check::Crc64)
                }
                .map_err(io::Error::other)?;
                Encoder::Xz(liblzma::write::XzEncoder::new_stream(inner, stream))
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "compression {} is not supported for pushing",
                        other.as_str()
                    ),
                ));
            }
        })
    }

    /// Flushes the codec's last frame and hands back the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Zstd(enc) => enc.finish(),
            Encoder::Xz(enc) => enc.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
            Encoder::Xz(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.write_all(buf),
            Encoder::Zstd(w) => w.write_all(buf),
            Encoder::Xz(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
            Encoder::Xz(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn round_trip(compression: Compression, nar_size: u64) -> Vec<u8> {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut enc = Encoder::new(&compression, None, nar_size, Vec::new()).unwrap();
        enc.write_all(&data).unwrap();
        let packed = enc.finish().unwrap();
        let unpacked = match compression {
            Compression::Zstd => zstd::decode_all(&packed[..]).unwrap(),
            Compression::Xz => {
                let mut out = Vec::new();
                liblzma::read::XzDecoder::new(&packed[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            _ => packed,
        };
        assert_eq!(unpacked, data);
        unpacked
    }

    #[test]
    fn every_codec_round_trips_single_and_multi_threaded() {
        for compression in [Compression::None, Compression::Zstd, Compression::Xz] {
            round_trip(compression.clone(), 1);
            round_trip(compression, MULTITHREAD_FROM);
        }
    }

    #[test]
    fn refuses_bzip2() {
        let err = Encoder::new(&Compression::Bzip2, None, 1, Vec::new())
            .err()
            .unwrap();
        assert!(err.to_string().contains("bzip2 is not supported"), "{err}");
    }
}
