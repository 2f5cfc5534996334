//! The push pipeline: closure → missing paths → NAR stream → hash, compress, upload → narinfo.
