//! Compressors for the NAR stream, behind one `Write` so the pipeline does not care which.
//!
//! Unless the user fixes a level, zstd's adapts to what bounds the push: a stream looks at how
//! long its writes into the upload waited, and while the upload is the bound the level rises
//! (the spare CPU buys a smaller cache), falling back towards the default when the compressor
//! is the bound. It never goes below the default, so a cache is never larger than at the
//! default level, and zstd unpacks every level at about the same speed.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::nix::Compression;

/// NARs at least this large are compressed with several threads; below it the thread start-up
/// costs more than it saves, and `--jobs` already spreads small paths over the cores. From the
/// same size zstd also looks for long-distance matches (see [`Tuning::long_window`]).
const MULTITHREAD_FROM: u64 = 16 << 20;

/// The largest zstd window Nix's decompressor accepts without being told (zstd's default limit,
/// 2^27 = 128 MiB).
pub const MAX_LONG_WINDOW: u32 = 27;

/// zstd's level when none is given, and the least the adaptive level goes down to.
pub const ZSTD_DEFAULT_LEVEL: i32 = 3;
/// The most the adaptive level rises to: about three times the default's CPU per byte.
pub const ZSTD_ADAPTIVE_MAX: i32 = 9;
/// NAR bytes a stream compresses between two looks at its upload.
const ADAPT_EVERY: u64 = 8 << 20;
/// Waiting on the upload for more than this share of a stretch means the upload is the bound.
const UPLOAD_BOUND: f64 = 0.2;
/// Less than this share, and the compressor is.
const COMPRESSOR_BOUND: f64 = 0.05;

/// How hard the compressor works, beside the codec.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// A fixed level; None: zstd's adapts from [`ZSTD_DEFAULT_LEVEL`], xz uses 6.
    pub level: Option<i32>,
    /// zstd's long-distance matching window for NARs of [`MULTITHREAD_FROM`] or more, as a
    /// power of two, capped by the NAR's size; 0 turns it off. Matches as far back as the
    /// window (a library copied twice in one path, say) then cost a few bytes each. Only the
    /// one large NAR compressing on every core at a time uses it.
    pub long_window: u32,
    /// The adaptive level, shared by a push's streams.
    adaptive: Arc<Adaptive>,
    /// NAR bytes between two looks ([`ADAPT_EVERY`]; less in tests).
    stretch: u64,
}

#[derive(Debug)]
struct Adaptive {
    now: AtomicI32,
    highest: AtomicI32,
}

impl Tuning {
    pub fn new(level: Option<i32>, long_window: u32) -> Tuning {
        Tuning {
            level,
            long_window,
            adaptive: Arc::new(Adaptive {
                now: AtomicI32::new(ZSTD_DEFAULT_LEVEL),
                highest: AtomicI32::new(ZSTD_DEFAULT_LEVEL),
            }),
            stretch: ADAPT_EVERY,
        }
    }

    /// The zstd level a stream starting now uses.
    fn zstd_level(&self) -> i32 {
        self.level
            .unwrap_or_else(|| self.adaptive.now.load(Ordering::Relaxed))
    }

    /// The highest level the adaptive level reached, when it rose above the default.
    pub fn adapted_to(&self) -> Option<i32> {
        let highest = self.adaptive.highest.load(Ordering::Relaxed);
        (self.level.is_none() && highest > ZSTD_DEFAULT_LEVEL).then_some(highest)
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning::new(None, 0)
    }
}

/// The sink, timed: time spent in its writes is time the compressor waited for the upload.
struct Timed<W> {
    inner: W,
    waited: Duration,
}

impl<W: Write> Write for Timed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let start = Instant::now();
        let written = self.inner.write(buf);
        self.waited += start.elapsed();
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        let start = Instant::now();
        let flushed = self.inner.flush();
        self.waited += start.elapsed();
        flushed
    }
}

/// One zstd stream's part in the adaptive level.
struct Adapt {
    shared: Arc<Adaptive>,
    level: i32,
    stretch: u64,
    input: u64,
    since: Instant,
}

impl Adapt {
    /// After a stretch of NAR: moves the shared level one step by what bound
    /// this stream, and takes up the shared level (another stream may have moved it).
    fn look<W: Write>(
        &mut self,
        enc: &mut zstd::stream::write::Encoder<'static, Timed<W>>,
    ) -> io::Result<()> {
        let waited = std::mem::take(&mut enc.get_mut().waited);
        let share = waited.as_secs_f64() / self.since.elapsed().as_secs_f64().max(1e-6);
        let next = if share > UPLOAD_BOUND {
            self.level + 1
        } else if share < COMPRESSOR_BOUND {
            self.level - 1
        } else {
            self.level
        }
        .clamp(ZSTD_DEFAULT_LEVEL, ZSTD_ADAPTIVE_MAX);
        let _ = self.shared.now.compare_exchange(
            self.level,
            next,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let now = self.shared.now.load(Ordering::Relaxed);
        self.shared.highest.fetch_max(now, Ordering::Relaxed);
        if now != self.level {
            // zstd takes a new level mid-frame, from its next block or job.
            enc.set_parameter(zstd::stream::raw::CParameter::CompressionLevel(now))?;
            self.level = now;
        }
        self.input = 0;
        self.since = Instant::now();
        Ok(())
    }
}

pub struct Encoder<W: Write> {
    codec: Codec<W>,
    /// Held, not read: dropping it lets the next large path compress on all cores.
    _threads: Option<MtSlot>,
}

enum Codec<W: Write> {
    Plain(W),
    Zstd(
        zstd::stream::write::Encoder<'static, Timed<W>>,
        Option<Adapt>,
    ),
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
        tuning: &Tuning,
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
                let level = tuning.zstd_level();
                let timed = Timed {
                    inner,
                    waited: Duration::ZERO,
                };
                let mut enc = zstd::stream::write::Encoder::new(timed, level)?;
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
                // A stream shorter than one stretch never looks.
                let adapt = (tuning.level.is_none() && nar_size > tuning.stretch).then(|| Adapt {
                    shared: tuning.adaptive.clone(),
                    level,
                    stretch: tuning.stretch,
                    input: 0,
                    since: Instant::now(),
                });
                Codec::Zstd(enc, adapt)
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
            Codec::Zstd(enc, _) => enc.finish().map(|timed| timed.inner),
            Codec::Xz(enc) => enc.finish(),
        }
    }
}

/// Compresses a small NAR held whole in memory, in one call where the codec has one: zstd then
/// sizes its tables to the input, where a stream would set up for a window of megabytes.
pub fn compress_whole(
    compression: &Compression,
    tuning: &Tuning,
    data: &[u8],
) -> io::Result<Vec<u8>> {
    if let Compression::Zstd = compression {
        return zstd::bulk::compress(data, tuning.zstd_level());
    }
    let mut enc = Encoder::new(compression, tuning, data.len() as u64, Vec::new())?;
    enc.write_all(data)?;
    enc.finish()
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.codec {
            Codec::Plain(w) => w.write(buf),
            Codec::Zstd(w, adapt) => {
                let n = w.write(buf)?;
                if let Some(adapt) = adapt {
                    adapt.input += n as u64;
                    if adapt.input >= adapt.stretch {
                        adapt.look(w)?;
                    }
                }
                Ok(n)
            }
            Codec::Xz(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.codec {
            Codec::Plain(w) => w.flush(),
            Codec::Zstd(w, _) => w.flush(),
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
        let mut enc = Encoder::new(&compression, &Tuning::default(), nar_size, Vec::new()).unwrap();
        enc.write_all(&data).unwrap();
        let packed = enc.finish().unwrap();
        let unpacked = unpack(&compression, &packed);
        assert_eq!(unpacked, data);
        let whole = compress_whole(&compression, &Tuning::default(), &data).unwrap();
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

    /// An upload that takes its time over every write.
    struct SlowUpload(Vec<u8>);

    impl Write for SlowUpload {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            std::thread::sleep(Duration::from_millis(20));
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Compresses 8 MiB of barely compressible bytes in 64 KiB writes into `sink`, looking every
    /// 256 KiB; returns the highest level reached and what came out.
    fn adapt_into<W: Write>(sink: W) -> (Option<i32>, W, Vec<u8>) {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let data: Vec<u8> = (0..8 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 7) as u8
            })
            .collect();
        let mut tuning = Tuning::default();
        tuning.stretch = 256 << 10;
        let mut enc = Encoder::new(&Compression::Zstd, &tuning, data.len() as u64, sink).unwrap();
        for chunk in data.chunks(64 << 10) {
            enc.write_all(chunk).unwrap();
        }
        (tuning.adapted_to(), enc.finish().unwrap(), data)
    }

    #[test]
    fn the_zstd_level_rises_while_the_upload_is_the_bound_and_only_then() {
        let (fast, out, data) = adapt_into(Vec::new());
        assert_eq!(fast, None);
        assert_eq!(zstd::decode_all(out.as_slice()).unwrap(), data);
        let (slow, out, data) = adapt_into(SlowUpload(Vec::new()));
        assert!(slow.is_some_and(|l| l > ZSTD_DEFAULT_LEVEL), "{slow:?}");
        assert_eq!(zstd::decode_all(out.0.as_slice()).unwrap(), data);
        // A fixed level stays fixed.
        let tuning = Tuning::new(Some(1), 0);
        let mut enc = Encoder::new(
            &Compression::Zstd,
            &tuning,
            64 << 20,
            SlowUpload(Vec::new()),
        );
        enc.as_mut().unwrap().write_all(&data[..1 << 20]).unwrap();
        assert_eq!(tuning.adapted_to(), None);
    }

    #[test]
    fn refuses_bzip2() {
        let err = Encoder::new(&Compression::Bzip2, &Tuning::default(), 1, Vec::new())
            .err()
            .unwrap();
        assert!(err.to_string().contains("bzip2 is not supported"), "{err}");
    }
}
