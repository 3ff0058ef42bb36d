//! Valgrind lackey text (`valgrind --tool=lackey --trace-mem=yes`, field.md §5.3):
//!
//! ```text
//! I  04019ad5,3      instruction fetch: capital I, two spaces
//!  L 1ffefff7a8,8    load: leading space
//!  S 1ffefff7a0,8    store
//!  M 0421b040,4      modify: a load and a store to the same address
//! ```
//!
//! Addresses are hexadecimal without `0x`, sizes decimal bytes. Valgrind's own messages
//! (`==PID== ...`, `--PID-- ...`, `**PID** ...`) are skipped, except that `Command:` and
//! `Parent PID:` name the stream. Empty lines are skipped; any other line is an error naming
//! its line number, as is a last line without its newline (a truncated file).

use std::io::BufRead;

use super::{Fetches, GapCounter, Input, Kind, Record, RecordSink, StreamMeta, TraceError};

/// The longest line accepted (lackey's are under 40 bytes; valgrind's messages a few hundred),
/// so that a file without newlines is an error, not a line as large as the file.
pub const MAX_LINE: u64 = 4096;

/// Why a line is bad (the caller adds the file and line number).
pub type LineError = String;

/// Turns lackey lines into records for one stream. The stream begins at its first record, so
/// that the `==PID==` lines before it (command, parent) can name it.
#[derive(Debug)]
pub struct Parser {
    gaps: GapCounter,
    meta: StreamMeta,
    stream: Option<u32>,
    /// Lines seen.
    pub lines: u64,
}

impl Parser {
    /// A parser keeping the fetches `fetches` says, for a stream labelled `name` until the
    /// valgrind banner says otherwise.
    pub fn new(fetches: Fetches, name: &str) -> Self {
        Parser {
            gaps: GapCounter::new(fetches),
            meta: StreamMeta { name: name.to_owned(), ..StreamMeta::default() },
            stream: None,
            lines: 0,
        }
    }

    /// What the valgrind banner said about the process so far.
    pub fn meta(&self) -> &StreamMeta {
        &self.meta
    }

    /// One line, without its newline (a trailing `\r` is tolerated).
    pub fn line(&mut self, line: &[u8], sink: &mut dyn RecordSink) -> Result<(), TraceError> {
        self.lines += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let record = match line {
            [b'I', b' ', b' ', rest @ ..] => {
                let (addr, size) = addr_size(rest).map_err(|d| self.bad(d))?;
                match self.gaps.instruction(addr, size) {
                    Some(fetch) => fetch,
                    None => return Ok(()),
                }
            }
            [b' ', k @ (b'L' | b'S' | b'M'), b' ', rest @ ..] => {
                let (addr, size) = addr_size(rest).map_err(|d| self.bad(d))?;
                let kind = match k {
                    b'L' => Kind::Load,
                    b'S' => Kind::Store,
                    _ => Kind::Modify,
                };
                Record { addr, gap: 0, size, kind }
            }
            [] => return Ok(()),
            [b'=', b'=', ..] | [b'-', b'-', ..] | [b'*', b'*', ..] => {
                self.banner(line);
                return Ok(());
            }
            _ => return Err(self.bad(format!("not a lackey line: {:?}", excerpt(line)))),
        };
        let record = self.gaps.stamp(record).ok_or_else(|| {
            self.bad("more than 4,294,967,295 instructions without a memory access".into())
        })?;
        let stream = self.stream(sink)?;
        sink.push(stream, record)
    }

    /// Ends the stream: counts its trailing instructions (and begins it if it had no record).
    pub fn finish(&mut self, sink: &mut dyn RecordSink) -> Result<u32, TraceError> {
        let stream = self.stream(sink)?;
        sink.trailing_instructions(stream, self.gaps.trailing())?;
        Ok(stream)
    }

    fn stream(&mut self, sink: &mut dyn RecordSink) -> Result<u32, TraceError> {
        match self.stream {
            Some(s) => Ok(s),
            None => {
                let s = sink.begin_stream(self.meta.clone())?;
                self.stream = Some(s);
                Ok(s)
            }
        }
    }

    fn bad(&self, detail: String) -> TraceError {
        TraceError::Line { file: String::new(), line: self.lines, detail }
    }

    /// `==PID== Command: ...`, `==PID== Parent PID: N`: names the stream (before its first
    /// record only).
    fn banner(&mut self, line: &[u8]) {
        if self.stream.is_some() {
            return;
        }
        let Ok(text) = std::str::from_utf8(line) else { return };
        let mut parts = text.splitn(3, "==");
        let (Some(""), Some(pid), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        if let Ok(pid) = pid.parse::<u32>() {
            if self.meta.pid == 0 {
                self.meta.pid = pid;
            }
        }
        let rest = rest.trim_start();
        if let Some(cmd) = rest.strip_prefix("Command:") {
            self.meta.name = cmd.trim().to_owned();
        } else if let Some(ppid) = rest.strip_prefix("Parent PID:") {
            self.meta.ppid = ppid.trim().parse().unwrap_or(0);
        }
    }
}

/// The first 60 characters of a bad line, for its error message.
fn excerpt(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(&line[..line.len().min(60)]).into_owned();
    if line.len() > 60 {
        s + "..."
    } else {
        s
    }
}

/// `ADDR,SIZE`: hexadecimal address (1 to 16 digits), decimal size (at most 65,535).
#[inline]
fn addr_size(rest: &[u8]) -> Result<(u64, u16), LineError> {
    let comma = rest
        .iter()
        .position(|&b| b == b',')
        .ok_or_else(|| format!("no `,SIZE` after the address: {:?}", excerpt(rest)))?;
    let (hex, dec) = (&rest[..comma], &rest[comma + 1..]);
    if hex.is_empty() || hex.len() > 16 {
        return Err(format!("bad address {:?}", excerpt(hex)));
    }
    let mut addr = 0u64;
    for &b in hex {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(format!("bad address {:?}", excerpt(hex))),
        };
        addr = addr << 4 | u64::from(d);
    }
    if dec.is_empty() || dec.len() > 5 {
        return Err(format!("bad size {:?}", excerpt(dec)));
    }
    let mut size = 0u32;
    for &b in dec {
        if !b.is_ascii_digit() {
            return Err(format!("bad size {:?}", excerpt(dec)));
        }
        size = size * 10 + u32::from(b - b'0');
    }
    let size = u16::try_from(size).map_err(|_| format!("size {size} is over 65,535 bytes"))?;
    if addr.checked_add(u64::from(size.max(1)) - 1).is_none() {
        return Err(format!("the {size} bytes at {addr:#x} run past the end of the address space"));
    }
    Ok((addr, size))
}

/// Reads a whole lackey text from `input` into `sink` as one stream labelled `label` (or by the
/// `Command:` line valgrind printed).
pub fn read(
    input: &mut Input,
    fetches: Fetches,
    label: &str,
    sink: &mut dyn RecordSink,
) -> Result<(), TraceError> {
    let mut parser = Parser::new(fetches, label);
    let mut line = Vec::with_capacity(256);
    let name = input.name.clone();
    let with_file = |e: TraceError| match e {
        TraceError::Line { line, detail, .. } => {
            TraceError::Line { file: name.clone(), line, detail }
        }
        e => e,
    };
    loop {
        line.clear();
        let offset = input.reader.count;
        let n = std::io::Read::take(&mut input.reader, MAX_LINE + 1)
            .read_until(b'\n', &mut line)
            .map_err(|source| TraceError::Read { file: name.clone(), offset, source })?;
        if n == 0 {
            break;
        }
        if n as u64 > MAX_LINE {
            return Err(TraceError::Line {
                file: name.clone(),
                line: parser.lines + 1,
                detail: format!("longer than {MAX_LINE} bytes: {:?}", excerpt(&line)),
            });
        }
        let Some(body) = line.strip_suffix(b"\n") else {
            return Err(TraceError::Line {
                file: name.clone(),
                line: parser.lines + 1,
                detail: format!("truncated: the last line has no newline: {:?}", excerpt(&line)),
            });
        };
        parser.line(body, sink).map_err(with_file)?;
    }
    parser.finish(sink).map(|_| ()).map_err(with_file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::VecSink;

    fn parse(text: &str) -> Result<VecSink, TraceError> {
        let mut sink = VecSink::default();
        let mut p = Parser::new(Fetches::All, "t");
        for l in text.lines() {
            p.line(l.as_bytes(), &mut sink)?;
        }
        p.finish(&mut sink)?;
        Ok(sink)
    }

    #[test]
    fn the_four_forms_and_banner_lines() -> Result<(), TraceError> {
        let sink = parse(
            "==42== Lackey, an example Valgrind tool\n==42== Command: /bin/true -x\n\
             ==42== Parent PID: 7\nI  04019ad5,3\n L 1ffefff7a8,8\n S 1ffefff7a0,8\n\
             I  04019ad8,2\nI  04019ada,4\n M 0421b040,4\nI  04019ade,1\n==42== Exit code: 0\n",
        )?;
        let (meta, recs, trailing) = &sink.streams[0];
        assert_eq!((meta.pid, meta.ppid, meta.name.as_str()), (42, 7, "/bin/true -x"));
        let got: Vec<_> = recs.iter().map(|r| (r.kind, r.addr, r.size, r.gap)).collect();
        assert_eq!(
            got,
            [
                (Kind::Fetch, 0x4019ad5, 3, 1),
                (Kind::Load, 0x1ffefff7a8, 8, 0),
                (Kind::Store, 0x1ffefff7a0, 8, 0),
                (Kind::Fetch, 0x4019ad8, 2, 1),
                (Kind::Fetch, 0x4019ada, 4, 1),
                (Kind::Modify, 0x421b040, 4, 0),
                (Kind::Fetch, 0x4019ade, 1, 1),
            ]
        );
        assert_eq!(*trailing, 0);
        Ok(())
    }

    #[test]
    fn garbage_names_its_line() {
        for bad in ["I 0401,3", " L 12345", " X 12,4", " L zz,4", " S 10,99999", "hello"] {
            let text = format!("I  0401,3\n{bad}\n");
            let e = parse(&text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("line 2"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_access_wrapping_past_the_address_space_is_refused() {
        let e = parse("I  0401,3\n L fffffffffffffffc,8\n").err().map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("line 2") && e.contains("past the end of the address space"), "{e}");
        // The last byte of the address space itself is fine.
        assert!(parse("I  0401,3\n L fffffffffffffff8,8\n").is_ok());
    }

    #[test]
    fn page_fetches_fold_straight_line_code_into_gaps() -> Result<(), TraceError> {
        let mut sink = VecSink::default();
        let mut p = Parser::new(Fetches::Page, "t");
        for l in ["I  1000,4", "I  1004,4", " L 9000,8", "I  2000,4", "I  2004,4"] {
            p.line(l.as_bytes(), &mut sink)?;
        }
        p.finish(&mut sink)?;
        let got: Vec<_> = sink.streams[0].1.iter().map(|r| (r.kind, r.gap)).collect();
        assert_eq!(got, [(Kind::Fetch, 1), (Kind::Load, 1), (Kind::Fetch, 1)]);
        assert_eq!(sink.streams[0].2, 1);
        Ok(())
    }
}
