//! Streaming parsers of import files: bytes arrive in chunks of any size and complete records
//! come out with their line number and the hash of their bytes, in constant memory (one record
//! at a time). CSV is RFC 4180 (quoted fields may span lines; blank lines are skipped; a UTF-8
//! byte-order mark is dropped); JSON lines are one object per line.

use std::collections::BTreeMap;

use csv_core::{ReadRecordResult, Reader};
use sha2::{Digest, Sha256};

/// Longest record accepted: a longer one is not a contact.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// One value of a record, as the file gives it.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Text(String),
    Number(f64),
    Bool(bool),
}

/// A complete record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The line it starts on (1-based; the CSV header is line 1).
    pub line: u64,
    /// Bytes of the file up to the end of this record.
    pub end_offset: u64,
    /// SHA-256 of the record's bytes (tells a re-sent file from another one on resume).
    pub sha256: [u8; 32],
    /// Column → value; empty cells are left out. `Err` holds the reason code of a malformed row.
    pub cells: Result<BTreeMap<String, Cell>, String>,
}

/// What a parser can refuse outright (the upload stops; nothing of the bad part is written).
#[derive(Clone, Debug, PartialEq)]
pub enum ParseError {
    TooLong { line: u64 },
    NoHeader,
    BadHeader(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::TooLong { line } => write!(f, "line {line} is longer than {MAX_RECORD_BYTES} bytes"),
            ParseError::NoHeader => write!(f, "the CSV file has no header row"),
            ParseError::BadHeader(why) => write!(f, "the CSV header {why}"),
        }
    }
}

/// A streaming parser of one format.
pub enum Parser {
    Csv(Box<CsvParser>),
    Jsonl(JsonlParser),
}

impl Parser {
    pub fn new(format: &str) -> Option<Parser> {
        match format {
            "csv" => Some(Parser::Csv(Box::new(CsvParser::new()))),
            "jsonl" => Some(Parser::Jsonl(JsonlParser::default())),
            _ => None,
        }
    }

    /// Feeds a chunk (`eof`: the file ended; call once more with an empty chunk) and returns the
    /// records it completed.
    pub fn feed(&mut self, chunk: &[u8], eof: bool) -> Result<Vec<Record>, ParseError> {
        match self {
            Parser::Csv(p) => p.feed(chunk, eof),
            Parser::Jsonl(p) => p.feed(chunk, eof),
        }
    }

    /// SHA-256 of the CSV header record (empty for JSON lines).
    pub fn header_sha256(&self) -> Option<[u8; 32]> {
        match self {
            Parser::Csv(p) => p.header_sha256,
            Parser::Jsonl(_) => None,
        }
    }
}

pub struct CsvParser {
    reader: Reader,
    out: Vec<u8>,
    out_len: usize,
    ends: Vec<usize>,
    ends_len: usize,
    /// Bytes of the record being read, for its hash and its line.
    raw: Vec<u8>,
    /// Newlines consumed before `raw`.
    newlines: u64,
    offset: u64,
    started: bool,
    lead: Vec<u8>,
    header: Option<Vec<String>>,
    header_sha256: Option<[u8; 32]>,
}

impl CsvParser {
    fn new() -> Self {
        CsvParser {
            reader: Reader::new(),
            out: vec![0; 4096],
            out_len: 0,
            ends: vec![0; 64],
            ends_len: 0,
            raw: Vec::new(),
            newlines: 0,
            offset: 0,
            started: false,
            lead: Vec::new(),
            header: None,
            header_sha256: None,
        }
    }

    fn feed(&mut self, chunk: &[u8], eof: bool) -> Result<Vec<Record>, ParseError> {
        if !self.started {
            // The byte-order mark may arrive split over chunks: hold the first bytes back.
            self.lead.extend_from_slice(chunk);
            if self.lead.len() < 3 && !eof {
                return Ok(Vec::new());
            }
            self.started = true;
            let mut lead = std::mem::take(&mut self.lead);
            if lead.starts_with(b"\xef\xbb\xbf") {
                self.offset += 3;
                lead.drain(..3);
            }
            return self.parse(&lead, eof);
        }
        self.parse(chunk, eof)
    }

    fn parse(&mut self, mut chunk: &[u8], eof: bool) -> Result<Vec<Record>, ParseError> {
        let mut records = Vec::new();
        loop {
            if chunk.is_empty() && !eof {
                return Ok(records);
            }
            let (res, nin, nout, nend) =
                self.reader.read_record(chunk, &mut self.out[self.out_len..], &mut self.ends[self.ends_len..]);
            self.raw.extend_from_slice(&chunk[..nin]);
            chunk = &chunk[nin..];
            self.out_len += nout;
            self.ends_len += nend;
            if self.raw.len() > MAX_RECORD_BYTES {
                return Err(ParseError::TooLong { line: self.newlines + 1 });
            }
            match res {
                ReadRecordResult::InputEmpty => {
                    if !eof {
                        return Ok(records);
                    }
                }
                ReadRecordResult::OutputFull => {
                    let n = self.out.len() * 2;
                    self.out.resize(n, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    let n = self.ends.len() * 2;
                    self.ends.resize(n, 0);
                }
                ReadRecordResult::Record => {
                    if let Some(r) = self.finish_record()? {
                        records.push(r);
                    }
                }
                ReadRecordResult::End => {
                    if self.header.is_none() {
                        return Err(ParseError::NoHeader);
                    }
                    return Ok(records);
                }
            }
        }
    }

    /// Turns the record just read into a [`Record`] (or the header).
    fn finish_record(&mut self) -> Result<Option<Record>, ParseError> {
        let raw = std::mem::take(&mut self.raw);
        // Blank lines before the record belong to no record.
        let lead = raw.iter().take_while(|b| **b == b'\n' || **b == b'\r').count();
        let line = self.newlines + raw[..lead].iter().filter(|b| **b == b'\n').count() as u64 + 1;
        self.newlines += raw.iter().filter(|b| **b == b'\n').count() as u64;
        self.offset += raw.len() as u64;
        let sha256: [u8; 32] = Sha256::digest(&raw[lead..]).into();
        let mut fields = Vec::with_capacity(self.ends_len);
        let mut start = 0;
        let mut bad_encoding = false;
        for &end in &self.ends[..self.ends_len] {
            match std::str::from_utf8(&self.out[start..end]) {
                Ok(s) => fields.push(s.to_string()),
                Err(_) => {
                    bad_encoding = true;
                    fields.push(String::new());
                }
            }
            start = end;
        }
        self.out_len = 0;
        self.ends_len = 0;
        let Some(header) = &self.header else {
            if bad_encoding {
                return Err(ParseError::BadHeader("is not UTF-8".into()));
            }
            let names: Vec<String> = fields.iter().map(|f| f.trim().to_string()).collect();
            if names.iter().any(String::is_empty) {
                return Err(ParseError::BadHeader("has an empty column name".into()));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
                return Err(ParseError::BadHeader(format!("names column `{dup}` twice")));
            }
            self.header = Some(names);
            self.header_sha256 = Some(sha256);
            return Ok(None);
        };
        let cells = if bad_encoding {
            Err("invalid_encoding".to_string())
        } else if fields.len() != header.len() {
            Err(format!("invalid_row:expected {} columns, found {}", header.len(), fields.len()))
        } else {
            Ok(header
                .iter()
                .zip(fields)
                .filter(|(_, v)| !v.trim().is_empty())
                .map(|(k, v)| (k.clone(), Cell::Text(v.trim().to_string())))
                .collect())
        };
        Ok(Some(Record { line, end_offset: self.offset, sha256, cells }))
    }
}

#[derive(Default)]
pub struct JsonlParser {
    buf: Vec<u8>,
    line: u64,
    offset: u64,
}

impl JsonlParser {
    fn feed(&mut self, chunk: &[u8], eof: bool) -> Result<Vec<Record>, ParseError> {
        let mut records = Vec::new();
        let mut rest = chunk;
        loop {
            match rest.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.buf.extend_from_slice(&rest[..=i]);
                    rest = &rest[i + 1..];
                    self.take_line(&mut records)?;
                }
                None => {
                    self.buf.extend_from_slice(rest);
                    if self.buf.len() > MAX_RECORD_BYTES {
                        return Err(ParseError::TooLong { line: self.line + 1 });
                    }
                    if eof && !self.buf.is_empty() {
                        self.take_line(&mut records)?;
                    }
                    return Ok(records);
                }
            }
        }
    }

    fn take_line(&mut self, records: &mut Vec<Record>) -> Result<(), ParseError> {
        let raw = std::mem::take(&mut self.buf);
        self.line += 1;
        self.offset += raw.len() as u64;
        if raw.len() > MAX_RECORD_BYTES {
            return Err(ParseError::TooLong { line: self.line });
        }
        let text = raw.strip_suffix(b"\n").unwrap_or(&raw);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let sha256: [u8; 32] = Sha256::digest(text).into();
        let cells = match serde_json::from_slice::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => map
                .into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) if s.trim().is_empty() => None,
                    serde_json::Value::String(s) => Some(Ok((k, Cell::Text(s.trim().to_string())))),
                    serde_json::Value::Number(n) => Some(Ok((k, Cell::Number(n.as_f64().unwrap_or(f64::NAN))))),
                    serde_json::Value::Bool(b) => Some(Ok((k, Cell::Bool(b)))),
                    _ => Some(Err(format!("invalid_value:{k}"))),
                })
                .collect::<Result<BTreeMap<_, _>, String>>(),
            Ok(_) => Err("invalid_row:not a JSON object".to_string()),
            Err(_) => Err("invalid_row:not valid JSON".to_string()),
        };
        records.push(Record { line: self.line, end_offset: self.offset, sha256, cells });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Record, k: &str) -> Option<String> {
        match r.cells.as_ref().unwrap().get(k) {
            Some(Cell::Text(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// Feeds `data` in chunks of `size` bytes.
    fn parse(format: &str, data: &[u8], size: usize) -> Vec<Record> {
        let mut p = Parser::new(format).unwrap();
        let mut out = Vec::new();
        for chunk in data.chunks(size) {
            out.extend(p.feed(chunk, false).unwrap());
        }
        out.extend(p.feed(&[], true).unwrap());
        out
    }

    #[test]
    fn test_csv_records_keep_their_lines_whatever_the_chunking() {
        let data = "\u{feff}email,first_name\n\nada@example.org,\"Ada\nL.\"\r\n,\nbob@example.org,\"B,\"\"ob\"\"\"\nc@example.org";
        let whole = parse("csv", data.as_bytes(), data.len());
        for size in [1, 2, 3, 7, 64] {
            assert_eq!(parse("csv", data.as_bytes(), size), whole, "chunks of {size}");
        }
        let lines: Vec<u64> = whole.iter().map(|r| r.line).collect();
        assert_eq!(lines, [3, 5, 6, 7]);
        assert_eq!(text(&whole[0], "first_name").as_deref(), Some("Ada\nL."));
        assert_eq!(whole[1].cells, Ok(BTreeMap::new()), "empty cells are absent");
        assert_eq!(text(&whole[2], "first_name").as_deref(), Some("B,\"ob\""));
        assert_eq!(whole.last().unwrap().end_offset, data.len() as u64);
    }

    #[test]
    fn test_csv_refuses_bad_headers_and_marks_bad_rows() {
        let mut p = Parser::new("csv").unwrap();
        assert_eq!(
            p.feed(b"email,email\nx,y\n", true),
            Err(ParseError::BadHeader("names column `email` twice".into()))
        );
        let rows = parse("csv", b"email,first_name\na@example.org\n\xff,x\n", 5);
        assert_eq!(rows[0].cells, Err("invalid_row:expected 2 columns, found 1".into()));
        assert_eq!(rows[1].cells, Err("invalid_encoding".into()));
        let mut p = Parser::new("csv").unwrap();
        let long = format!("a\n\"{}\"\n", "x".repeat(MAX_RECORD_BYTES + 1));
        assert_eq!(p.feed(long.as_bytes(), true), Err(ParseError::TooLong { line: 2 }));
    }

    #[test]
    fn test_jsonl_lines_are_typed_and_bad_lines_marked() {
        let data = b"{\"email\":\"a@example.org\",\"vip\":true,\"score\":3.5,\"note\":null}\n\n[1]\nnot json\r\n{\"first_name\":\"Bo\"}";
        let whole = parse("jsonl", data, data.len());
        for size in [1, 5, 13] {
            assert_eq!(parse("jsonl", data, size), whole);
        }
        assert_eq!(whole.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 3, 4, 5]);
        let first = whole[0].cells.as_ref().unwrap();
        assert_eq!(first.get("vip"), Some(&Cell::Bool(true)));
        assert_eq!(first.get("score"), Some(&Cell::Number(3.5)));
        assert!(!first.contains_key("note"));
        assert_eq!(whole[1].cells, Err("invalid_row:not a JSON object".into()));
        assert_eq!(whole[2].cells, Err("invalid_row:not valid JSON".into()));
        assert_eq!(whole[3].end_offset, data.len() as u64);
    }
}
