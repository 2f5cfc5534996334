//! Compressors for the NAR stream, behind one `Write` so the pipeline does not care which.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::nix::Compression;

/// NARs at least this large are compressed with several threads; below it the thread start-up
/// costs more than it saves, and `--jobs` already spreads small paths over the cores. From the
/// same size zstd also looks for long-distance matches (see [`Tuning::long_window`]).
const MULTITHREAD_FROM: u64 = 16 << 20;

/// The largest zstd window Nix's decompressor accepts without being told (zstd's default limit,
/// 2^27 = 128 MiB).
pub const MAX_LONG_WINDOW: u32 = 27;

/// zstd's level when none is given.
const ZSTD_DEFAULT_LEVEL: i32 = 3;

/// How hard the compressor works, beside the codec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuning {
    /// The codec's level; None is its default (zstd [`ZSTD_DEFAULT_LEVEL`], xz 6).
    pub level: Option<i32>,
    /// zstd's long-distance matching window for NARs of [`MULTITHREAD_FROM`] or more, as a
    /// power of two, capped by the NAR's size; 0 turns it off. Matches as far back as the
    /// window (a library copied twice in one path, say) then cost a few bytes each. Only the
    /// one large NAR compressing on every core at a time uses it.
    pub long_window: u32,
}

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
    /// `nar_size` picks single- or multi-threaded compression, and the long-distance window.
    pub fn new(
        compression: &Compression,
        tuning: Tuning,
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
                let level = tuning.level.unwrap_or(ZSTD_DEFAULT_LEVEL);
                let mut enc = zstd::stream::write::Encoder::new(inner, level)?;
                if threads > 1 {
                    enc.multithread(threads)?;
                }
                // Only in the one multithreaded context: a window costs its size in memory
                // (128 MiB at 27), which `--jobs` single-threaded streams would multiply.
                if tuning.long_window > 0 && mt_slot.is_some() {
                    // No window wider than the NAR: it would cost memory and find nothing.
                    let needed = u64::BITS - (nar_size - 1).leading_zeros();
                    enc.long_distance_matching(true)?;
                    enc.window_log(tuning.long_window.min(needed))?;
                }
                Codec::Zstd(enc)
            }
            Compression::Xz => {
                let preset = tuning.level.unwrap_or(6).clamp(0, 9) as u32;
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
    tuning: Tuning,
    data: &[u8],
) -> io::Result<Vec<u8>> {
    if let Compression::Zstd = compression {
        return zstd::bulk::compress(data, tuning.level.unwrap_or(ZSTD_DEFAULT_LEVEL));
    }
    let mut enc = Encoder::new(compression, tuning, data.len() as u64, Vec::new())?;
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
        let mut enc = Encoder::new(&compression, Tuning::default(), nar_size, Vec::new()).unwrap();
        enc.write_all(&data).unwrap();
        let packed = enc.finish().unwrap();
        let unpacked = unpack(&compression, &packed);
        assert_eq!(unpacked, data);
        let whole = compress_whole(&compression, Tuning::default(), &data).unwrap();
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
        let err = Encoder::new(&Compression::Bzip2, Tuning::default(), 1, Vec::new())
            .err()
            .unwrap();
        assert!(err.to_string().contains("bzip2 is not supported"), "{err}");
    }
}
