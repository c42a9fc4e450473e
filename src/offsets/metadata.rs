//! The commit metadata this crate writes: the offsets finished beyond a commit point, as
//! ranges (`ka1:`) or a bitmap (`ka2:`), whichever is shorter, within Kafka's limit. The next
//! reader of the partition decodes it and skips them. Pure, unit-tested.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as BASE64;

/// The prefixes of the commit metadata this crate writes, naming its format: ranges of
/// distances from the commit point (`ka1:1-5,8,12-40`), or a bitmap of them (`ka2:` and the
/// base64 of one bit per distance, the lowest first), whichever is shorter.
const RANGES_PREFIX: &str = "ka1:";
const BITMAP_PREFIX: &str = "ka2:";
/// Kafka refuses commit metadata longer than `offset.metadata.max.bytes` (4,096 by default).
const METADATA_MAX: usize = 4_000;

/// Encodes the offsets beyond `point` that finished (in increasing order) as commit metadata,
/// as ranges or as a bitmap, whichever is shorter, within Kafka's default metadata limit.
/// Returns the metadata and how many offsets it holds: those left out (only past what
/// [`COMMIT_WINDOW`](super::COMMIT_WINDOW) allows) are processed again by the next reader.
pub(crate) fn encode_finished(point: i64, finished: &[i64]) -> (String, usize) {
    let (ranges, in_ranges) = encode_ranges(point, finished);
    if in_ranges == finished.len() {
        return (ranges, in_ranges);
    }
    let (bitmap, in_bitmap) = encode_bitmap(point, finished);
    if in_bitmap >= in_ranges {
        (bitmap, in_bitmap)
    } else {
        (ranges, in_ranges)
    }
}

/// As many ranges as fit.
fn encode_ranges(point: i64, finished: &[i64]) -> (String, usize) {
    let mut metadata = String::from(RANGES_PREFIX);
    let mut encoded = 0;
    let mut index = 0;
    while index < finished.len() {
        let start = finished[index];
        let mut end = start;
        let mut next = index + 1;
        while next < finished.len() && finished[next] == end + 1 {
            end = finished[next];
            next += 1;
        }
        let range = if start == end {
            format!("{}", start - point)
        } else {
            format!("{}-{}", start - point, end - point)
        };
        let separator = usize::from(encoded > 0);
        if metadata.len() + separator + range.len() > METADATA_MAX {
            break;
        }
        if separator == 1 {
            metadata.push(',');
        }
        metadata.push_str(&range);
        encoded += next - index;
        index = next;
    }
    (metadata, encoded)
}

/// A bitmap of the distances that fit.
fn encode_bitmap(point: i64, finished: &[i64]) -> (String, usize) {
    let max_bytes = (METADATA_MAX - BITMAP_PREFIX.len()) * 6 / 8;
    let mut bits = Vec::new();
    let mut encoded = 0;
    for &offset in finished {
        let index = (offset - point - 1) as usize;
        if index / 8 >= max_bytes {
            break;
        }
        if bits.len() <= index / 8 {
            bits.resize(index / 8 + 1, 0u8);
        }
        bits[index / 8] |= 1 << (index % 8);
        encoded += 1;
    }
    let mut metadata = String::from(BITMAP_PREFIX);
    BASE64.encode_string(&bits, &mut metadata);
    (metadata, encoded)
}

/// The offsets beyond `point` that commit metadata written by [`encode_finished`] names;
/// nothing for metadata of another kind, or malformed.
pub(crate) fn decode_finished(point: i64, metadata: &str) -> Vec<i64> {
    if let Some(ranges) = metadata.strip_prefix(RANGES_PREFIX) {
        return decode_ranges(point, ranges);
    }
    let Some(bitmap) = metadata.strip_prefix(BITMAP_PREFIX) else {
        return Vec::new();
    };
    let Ok(bits) = BASE64.decode(bitmap) else {
        return Vec::new();
    };
    let mut finished = Vec::new();
    for (byte_index, byte) in bits.iter().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                finished.push(point + (byte_index * 8 + bit) as i64 + 1);
            }
        }
    }
    finished
}

fn decode_ranges(point: i64, ranges: &str) -> Vec<i64> {
    let mut finished = Vec::new();
    for range in ranges.split(',').filter(|r| !r.is_empty()) {
        let bounds = match range.split_once('-') {
            Some((start, end)) => start.parse::<i64>().ok().zip(end.parse::<i64>().ok()),
            None => range.parse::<i64>().ok().map(|at| (at, at)),
        };
        match bounds {
            Some((start, end)) if 0 < start && start <= end => {
                finished.extend((start..=end).map(|distance| point + distance));
            }
            _ => return Vec::new(),
        }
    }
    finished
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsets::COMMIT_WINDOW;

    #[test]
    fn finished_offsets_survive_their_encoding_and_garbage_decodes_to_nothing() {
        let finished = [101, 102, 103, 105, 108, 109];
        let (metadata, encoded) = encode_finished(100, &finished);
        assert_eq!(metadata, "ka1:1-3,5,8-9");
        assert_eq!(encoded, 6);
        assert_eq!(decode_finished(100, &metadata), finished);
        assert_eq!(decode_finished(100, "ka1:"), Vec::<i64>::new());
        for garbage in ["", "hello", "ka1:x", "ka1:0", "ka1:5-3", "ka1:-4", "ka2:1"] {
            assert!(decode_finished(100, garbage).is_empty(), "{garbage}");
        }
    }

    #[test]
    fn whatever_finished_within_the_commit_window_fits_in_the_metadata() {
        // Every other offset of the window: no runs, the worst case for ranges.
        let finished: Vec<i64> = (1..COMMIT_WINDOW).step_by(2).collect();
        let (metadata, encoded) = encode_finished(0, &finished);
        assert!(metadata.starts_with(BITMAP_PREFIX), "{}", &metadata[..10]);
        assert!(metadata.len() <= METADATA_MAX, "{}", metadata.len());
        assert_eq!(encoded, finished.len());
        assert_eq!(decode_finished(0, &metadata), finished);
        // Runs with gaps every tenth offset (retries waiting, unordered): the whole window.
        let finished: Vec<i64> = (1..COMMIT_WINDOW).filter(|o| o % 10 != 0).collect();
        let (metadata, encoded) = encode_finished(
            1_000_000,
            &finished.iter().map(|o| o + 1_000_000).collect::<Vec<_>>(),
        );
        assert_eq!(encoded, finished.len());
        assert_eq!(decode_finished(1_000_000, &metadata).len(), finished.len());
        // A few ranges stay ranges.
        assert_eq!(encode_finished(100, &[101, 102, 110]).0, "ka1:1-2,10");
    }

    #[test]
    fn what_does_not_fit_in_the_metadata_is_left_out_in_order() {
        // Beyond what even a bitmap holds (the window keeps a partition from getting there).
        let finished: Vec<i64> = (0..20_000).map(|i| 1 + 2 * i).collect();
        let (metadata, encoded) = encode_finished(0, &finished);
        assert!(metadata.len() <= METADATA_MAX);
        assert!(encoded > 10_000 && encoded < finished.len(), "{encoded}");
        assert_eq!(decode_finished(0, &metadata), finished[..encoded]);
    }

    #[test]
    fn garbage_bitmaps_decode_to_nothing() {
        for garbage in ["ka2:!!", "ka2:AAAA====", "ka3:AA"] {
            assert!(decode_finished(100, garbage).is_empty(), "{garbage}");
        }
    }
}
