//! The on-disk format of a backup's items: a magic line, then one record per item (a 4-byte
//! big-endian length and the item in DynamoDB's JSON). The SHA-256 of the whole file, the item
//! count and the sizes live in the backup's description file beside it; a reader recomputes
//! them as it goes, so a truncated or altered file is found before its restore is accepted and
//! again as it is copied in.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use dynamo_protocol::Item;
use dynamo_protocol::value::item_size_bytes;
use sha2::{Digest, Sha256};

/// The first bytes of every backup items file (format version 1).
pub const MAGIC: &[u8] = b"SWITCHYARD-BACKUP 1\n";
/// Largest encoded item record accepted when reading: a 400 KB item in JSON, with base64
/// binaries and escapes, stays well below it; anything larger is corruption.
pub const RECORD_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Buffer of the file writer and reader.
pub const IO_BUFFER_BYTES: usize = 256 * 1024;

/// What a finished items file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub sha256: String,
    pub file_bytes: u64,
    pub item_count: u64,
    /// Item bytes as DynamoDB counts them (the table's TableSizeBytes at the snapshot).
    pub size_bytes: u64,
}

/// The checksum and counts of the bytes and items written or read so far.
#[derive(Default)]
struct Tally {
    hasher: Sha256,
    summary: Summary,
}

impl Tally {
    fn bytes(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.summary.file_bytes += bytes.len() as u64;
    }

    fn item(&mut self, item: &Item) {
        self.summary.item_count += 1;
        self.summary.size_bytes += item_size_bytes(item) as u64;
    }

    fn finish(self) -> Summary {
        Summary {
            sha256: hex::encode(self.hasher.finalize()),
            ..self.summary
        }
    }
}

pub struct Writer {
    file: BufWriter<File>,
    tally: Tally,
}

impl Writer {
    pub fn create(path: &Path) -> std::io::Result<Writer> {
        let file = File::create(path)?;
        let mut writer = Writer {
            file: BufWriter::with_capacity(IO_BUFFER_BYTES, file),
            tally: Tally::default(),
        };
        writer.write(MAGIC)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.tally.bytes(bytes);
        Ok(())
    }

    pub fn item(&mut self, item: &Item) -> std::io::Result<()> {
        let encoded = serde_json::to_vec(item).map_err(std::io::Error::other)?;
        let length = u32::try_from(encoded.len())
            .ok()
            .filter(|length| *length as usize <= RECORD_BYTES_MAX)
            .ok_or_else(|| std::io::Error::other("an item encodes to more than the record limit"))?;
        self.write(&length.to_be_bytes())?;
        self.write(&encoded)?;
        self.tally.item(item);
        Ok(())
    }

    /// Bytes written so far (the magic line included).
    pub fn bytes_written(&self) -> u64 {
        self.tally.summary.file_bytes
    }

    /// Flushes and syncs the file; returns its summary.
    pub fn finish(mut self) -> std::io::Result<Summary> {
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        Ok(self.tally.finish())
    }
}

/// Why an items file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {0}")]
    Io(#[from] std::io::Error),
    #[error("it is not a Switchyard backup (the file does not start with the format's magic line)")]
    NotABackup,
    #[error("a record claims {0} bytes, more than the {RECORD_BYTES_MAX}-byte limit")]
    RecordTooLarge(usize),
    #[error("the file ends in the middle of a record")]
    Truncated,
    #[error("the file holds {length} bytes where the backup recorded {file_bytes}")]
    Length { length: u64, file_bytes: u64 },
    #[error("item {index} does not decode: {message}")]
    BadItem { index: u64, message: String },
}

pub struct Reader {
    file: BufReader<File>,
    tally: Tally,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, ReadError> {
        let file = File::open(path)?;
        let mut reader = Reader {
            file: BufReader::with_capacity(IO_BUFFER_BYTES, file),
            tally: Tally::default(),
        };
        let mut magic = [0u8; MAGIC.len()];
        match reader.read_exact(&mut magic) {
            Ok(()) if magic == MAGIC => Ok(reader),
            Ok(()) => Err(ReadError::NotABackup),
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Err(ReadError::NotABackup),
            Err(error) => Err(error.into()),
        }
    }

    fn read_exact(&mut self, buffer: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact(buffer)?;
        self.tally.bytes(buffer);
        Ok(())
    }

    /// The next item; `None` at a clean end of the file.
    pub fn next_item(&mut self) -> Result<Option<Item>, ReadError> {
        let mut length = [0u8; 4];
        // A clean end is an end before the first byte of a record.
        let first = self.file.read(&mut length[..1])?;
        if first == 0 {
            return Ok(None);
        }
        self.tally.bytes(&length[..1]);
        self.read_exact(&mut length[1..]).map_err(truncated)?;
        let length = u32::from_be_bytes(length) as usize;
        if length > RECORD_BYTES_MAX {
            return Err(ReadError::RecordTooLarge(length));
        }
        let mut encoded = vec![0u8; length];
        self.read_exact(&mut encoded).map_err(truncated)?;
        let index = self.tally.summary.item_count;
        let item: Item = serde_json::from_slice(&encoded).map_err(|error| ReadError::BadItem {
            index,
            message: dynamo_protocol::value::strip_marker(&error.to_string()).to_string(),
        })?;
        self.tally.item(&item);
        Ok(Some(item))
    }

    /// What was read so far, with the checksum of every byte read.
    pub fn finish(self) -> Summary {
        self.tally.finish()
    }
}

fn truncated(error: std::io::Error) -> ReadError {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        ReadError::Truncated
    } else {
        ReadError::Io(error)
    }
}

/// Checks, without reading the records, that an items file starts with the format's magic line
/// and is `file_bytes` long (what its description recorded): a missing, cut, grown or replaced
/// file is found at once; damage inside needs [`verify`] or a whole read.
pub fn check_frame(path: &Path, file_bytes: u64) -> Result<(), ReadError> {
    Reader::open(path)?;
    let length = std::fs::metadata(path)?.len();
    if length == file_bytes {
        Ok(())
    } else {
        Err(ReadError::Length { length, file_bytes })
    }
}

/// Reads a whole items file, checking every record; returns its summary.
pub fn verify(path: &Path) -> Result<Summary, ReadError> {
    let mut reader = Reader::open(path)?;
    while reader.next_item()?.is_some() {}
    Ok(reader.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_protocol::AttributeValue;

    fn item(n: u64) -> Item {
        let mut item = Item::new();
        item.insert("pk".into(), AttributeValue::S(format!("key-{n}")));
        item.insert("payload".into(), AttributeValue::S("x".repeat(n as usize % 50)));
        item
    }

    /// Writes `count` items to `path`; the writer's summary.
    fn written(path: &Path, count: u64) -> Summary {
        let mut writer = Writer::create(path).expect("create");
        for n in 0..count {
            writer.item(&item(n)).expect("write");
        }
        writer.finish().expect("finish")
    }

    #[test]
    fn round_trip_keeps_items_and_checksum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.items");
        let written = written(&path, 100);
        assert_eq!(written.item_count, 100);
        assert_eq!(written.file_bytes, std::fs::metadata(&path).expect("meta").len());
        let mut reader = Reader::open(&path).expect("open");
        let mut n = 0;
        while let Some(read) = reader.next_item().expect("read") {
            assert_eq!(read, item(n));
            n += 1;
        }
        assert_eq!(reader.finish(), written);
    }

    #[test]
    fn damage_is_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.items");
        let written = written(&path, 10);
        let bytes = std::fs::read(&path).expect("read");
        // A flipped byte inside an item: the checksum differs (or the item no longer decodes).
        let mut flipped = bytes.clone();
        let at = bytes.len() - 5;
        flipped[at] ^= 0x01;
        std::fs::write(&path, &flipped).expect("write");
        match verify(&path) {
            Ok(summary) => assert_ne!(summary.sha256, written.sha256),
            Err(ReadError::BadItem { .. }) => {}
            Err(other) => panic!("unexpected {other}"),
        }
        // Cut short: truncated.
        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("write");
        assert!(matches!(verify(&path), Err(ReadError::Truncated)));
        // A length beyond the limit.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(&path, &huge).expect("write");
        assert!(matches!(verify(&path), Err(ReadError::RecordTooLarge(_))));
        std::fs::write(&path, b"not a backup").expect("write");
        assert!(matches!(verify(&path), Err(ReadError::NotABackup)));
    }

    #[test]
    fn the_frame_check_finds_a_missing_cut_grown_or_foreign_file_without_reading_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.items");
        let written = written(&path, 10);
        check_frame(&path, written.file_bytes).expect("the file as written");
        let bytes = std::fs::read(&path).expect("read");
        // A flipped byte inside keeps the frame: only a whole read finds it.
        let mut flipped = bytes.clone();
        let at = bytes.len() - 5;
        flipped[at] ^= 0x01;
        std::fs::write(&path, &flipped).expect("write");
        check_frame(&path, written.file_bytes).expect("same size and magic line");
        std::fs::write(&path, &bytes[..bytes.len() - 1]).expect("write");
        match check_frame(&path, written.file_bytes) {
            Err(ReadError::Length { length, file_bytes }) => {
                assert_eq!((length, file_bytes), (written.file_bytes - 1, written.file_bytes))
            }
            other => panic!("a cut file: {other:?}"),
        }
        let mut grown = bytes.clone();
        grown.push(0);
        std::fs::write(&path, &grown).expect("write");
        assert!(matches!(
            check_frame(&path, written.file_bytes),
            Err(ReadError::Length { .. })
        ));
        let mut foreign = bytes.clone();
        foreign[0] ^= 0x01;
        std::fs::write(&path, &foreign).expect("write");
        assert!(matches!(
            check_frame(&path, written.file_bytes),
            Err(ReadError::NotABackup)
        ));
        std::fs::remove_file(&path).expect("remove");
        assert!(matches!(check_frame(&path, written.file_bytes), Err(ReadError::Io(_))));
    }
}
