//! Compressors for the NAR stream, behind one `Write` so the pipeline does not care which.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::nix::Compression;

/// NARs at least this large are compressed with several threads; below it the thread start-up
/// costs more than it saves, and `--jobs` already spreads small paths over the cores.
const MULTITHREAD_FROM: u64 = 16 << 20;

pub struct Encoder<W: Write> {
    codec: Codec<W>,
    /// Held, not read: dropping it lets the next large path compress on all cores.
    _threads: Option<MtSlot>,
}

enum Codec<W: Write> {
    Plain(W),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Xz(liblzma::write::XzEncoder<W>),
}

/// Whether a multithreaded compressor exists right now; held by the encoder that uses it.
static MT_IN_USE: AtomicBool = AtomicBool::new(false);

struct MtSlot(());

impl MtSlot {
    fn take() -> Option<MtSlot> {
        MT_IN_USE
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| MtSlot(()))
    }
}

impl Drop for MtSlot {
    fn drop(&mut self) {
        MT_IN_USE.store(false, Ordering::Release);
    }
}

impl<W: Write> Encoder<W> {
    /// `nar_size` picks single- or multi-threaded compression; `level` None is the codec's default.
    pub fn new(
        compression: &Compression,
        level: Option<i32>,
        nar_size: u64,
        inner: W,
    ) -> io::Result<Self> {
        // One multithreaded context at a time: each costs tens of MiB, and when several large
        // paths are in flight `--jobs` already keeps every core busy.
        let mt_slot = (nar_size >= MULTITHREAD_FROM).then(MtSlot::take).flatten();
        let threads = match mt_slot {
            Some(_) => std::thread::available_parallelism().map_or(1, |n| n.get()) as u32,
            None => 1,
        };
        let codec = match compression {
            Compression::None => Codec::Plain(inner),
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(inner, level.unwrap_or(3))?;
                if threads > 1 {
                    enc.multithread(threads)?;
                }
                Codec::Zstd(enc)
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
                Codec::Xz(liblzma::write::XzEncoder::new_stream(inner, stream))
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
        };
        Ok(Encoder {
            codec,
            _threads: mt_slot,
        })
    }

    /// Flushes the codec's last frame and hands back the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self.codec {
            Codec::Plain(w) => Ok(w),
            Codec::Zstd(enc) => enc.finish(),
            Codec::Xz(enc) => enc.finish(),
        }
    }
}

/// Compresses a small NAR held whole in memory, in one call where the codec has one: zstd then
/// sizes its tables to the input, where a stream would set up for a window of megabytes.
pub fn compress_whole(
    compression: &Compression,
    level: Option<i32>,
    data: &[u8],
) -> io::Result<Vec<u8>> {
    if let Compression::Zstd = compression {
        return zstd::bulk::compress(data, level.unwrap_or(3));
    }
    let mut enc = Encoder::new(compression, level, data.len() as u64, Vec::new())?;
    enc.write_all(data)?;
    enc.finish()
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.codec {
            Codec::Plain(w) => w.write(buf),
            Codec::Zstd(w) => w.write(buf),
            Codec::Xz(w) => w.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut self.codec {
            Codec::Plain(w) => w.write_all(buf),
            Codec::Zstd(w) => w.write_all(buf),
            Codec::Xz(w) => w.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.codec {
            Codec::Plain(w) => w.flush(),
            Codec::Zstd(w) => w.flush(),
            Codec::Xz(w) => w.flush(),
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
        let unpacked = unpack(&compression, &packed);
        assert_eq!(unpacked, data);
        let whole = compress_whole(&compression, None, &data).unwrap();
        assert_eq!(unpack(&compression, &whole), data);
        unpacked
    }

    fn unpack(compression: &Compression, packed: &[u8]) -> Vec<u8> {
        match compression {
            Compression::Zstd => zstd::decode_all(packed).unwrap(),
            Compression::Xz => {
                let mut out = Vec::new();
                liblzma::read::XzDecoder::new(packed)
                    .read_to_end(&mut out)
                    .unwrap();
                out
            }
            _ => packed.to_vec(),
        }
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
