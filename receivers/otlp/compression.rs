//! Request decompression for both protocols, bounded: at most one byte past the limit is ever inflated, so a
//! small compressed bomb stops early with bounded memory.

use std::io::Read;

/// `bytes` inflated with `kind` (`gzip` or `zstd`); `None` when the result would be over `max` bytes.
pub fn decompress(kind: &str, bytes: &[u8], max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let decoder: Box<dyn Read + '_> = match kind {
        "gzip" => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
        "zstd" => Box::new(zstd::stream::read::Decoder::new(bytes)?),
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unsupported compression `{other}`"),
            ));
        }
    };
    let mut out = Vec::new();
    let n = decoder.take(max as u64 + 1).read_to_end(&mut out)?;
    Ok((n <= max).then_some(out))
}
