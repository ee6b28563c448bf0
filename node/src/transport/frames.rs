//! The answers to a peer batch travel back one by one, as each is ready: the response body
//! is a sequence of frames `index: u32 LE | len: u32 LE | body` (the body is the MessagePack
//! [`super::PeerResponse`] to the request at `index` in the batch), in the order the answers
//! were ready. A slow request (a write waiting for its commit) holds only its own caller.
//! Requests whose frame never came (the body ended early) fail on the caller's side.

/// Bytes of a frame's header.
const HEADER: usize = 8;
/// No answer is larger: a bigger length is a broken stream.
pub const MAX_FRAME: usize = 64 << 20;

/// A broken answer stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("answer frame of {0} bytes (at most {MAX_FRAME})")]
pub struct FrameTooLarge(usize);

/// One frame: the answer `body` to request `index`.
pub fn frame(index: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits a response body, fed in chunks as they arrive, into frames.
#[derive(Default)]
pub struct Frames {
    buf: Vec<u8>,
    at: usize,
}

impl Frames {
    /// Adds bytes received.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > self.buf.len() / 2 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete frame, if all of it arrived.
    pub fn next_frame(&mut self) -> Result<Option<(u32, &[u8])>, FrameTooLarge> {
        let rest = &self.buf[self.at..];
        let Some(header) = rest.get(..HEADER) else {
            return Ok(None);
        };
        let index = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameTooLarge(len));
        }
        if rest.len() < HEADER + len {
            return Ok(None);
        }
        let start = self.at + HEADER;
        self.at = start + len;
        Ok(Some((index, &self.buf[start..start + len])))
    }

    /// Whether bytes of an incomplete frame are left.
    pub fn has_partial(&self) -> bool {
        self.at < self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(f: &mut Frames) -> Result<Vec<(u32, Vec<u8>)>, FrameTooLarge> {
        let mut out = Vec::new();
        while let Some((i, b)) = f.next_frame()? {
            out.push((i, b.to_vec()));
        }
        Ok(out)
    }

    proptest! {
        /// Frames come out whole and in order however the stream is cut into chunks.
        #[test]
        fn frames_survive_any_chunking(
            answers in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
            cuts in proptest::collection::vec(1usize..64, 1..50),
        ) {
            let stream: Vec<u8> = answers.iter().flat_map(|(i, b)| frame(*i, b)).collect();
            let mut f = Frames::default();
            let mut got = Vec::new();
            let (mut at, mut c) = (0, 0);
            while at < stream.len() {
                let n = cuts[c % cuts.len()].min(stream.len() - at);
                f.push(&stream[at..at + n]);
                got.extend(drain(&mut f).expect("frames"));
                at += n;
                c += 1;
            }
            prop_assert_eq!(got, answers);
            prop_assert!(!f.has_partial());
        }

        /// Arbitrary bytes never panic: they give frames, a partial frame, or an error.
        #[test]
        fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut f = Frames::default();
            f.push(&bytes);
            let _ = drain(&mut f);
        }
    }

    #[test]
    fn an_oversized_length_is_refused() {
        let mut f = Frames::default();
        let mut bad = 3u32.to_le_bytes().to_vec();
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        f.push(&bad);
        assert_eq!(f.next_frame().err(), Some(FrameTooLarge(u32::MAX as usize)));
    }
}
