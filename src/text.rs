//! Turning generated tokens into text as it streams: whole UTF-8 characters only, and stop strings that
//! may span several tokens. Both engines use these, so streamed pieces and unary text always agree.

/// Collects the bytes of token pieces and releases only complete UTF-8 characters: one character (an
/// emoji, a CJK glyph) can be split across tokens, and a stream must never cut it.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds the bytes of one token and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: the prefix up to valid_up_to is valid UTF-8 by definition.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // A byte sequence that can never become valid: replace it, as a lossy decoder would.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: an incomplete character left over becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// What [`StopMatcher::push`] decided about the text seen so far.
#[derive(Debug, PartialEq, Eq)]
pub struct StopStep {
    /// Text that is certain to be part of the output.
    pub emit: String,
    /// A stop string was found; nothing after `emit` belongs to the output.
    pub stopped: bool,
}

/// Finds stop strings in streamed text. Text that could be the start of a stop string is held back until
/// the next piece shows whether it is, so a stop string never leaks into the output, even partly.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new() }
    }

    pub fn push(&mut self, piece: &str) -> StopStep {
        self.pending.push_str(piece);
        let first_stop = self.stops.iter().filter_map(|stop| self.pending.find(stop.as_str())).min();
        if let Some(at) = first_stop {
            let emit = self.pending[..at].to_string();
            self.pending.clear();
            return StopStep { emit, stopped: true };
        }
        let keep = self.longest_partial_stop();
        let split = self.pending.len() - keep;
        let emit = self.pending[..split].to_string();
        self.pending.drain(..split);
        StopStep { emit, stopped: false }
    }

    /// Text held back when generation ends for another reason: it is output after all.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length in bytes of the longest suffix of `pending` that is a proper prefix of some stop string.
    fn longest_partial_stop(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            let max = stop.len().saturating_sub(1).min(self.pending.len());
            for len in (best + 1..=max).rev() {
                let start = self.pending.len() - len;
                if self.pending.is_char_boundary(start) && stop.starts_with(&self.pending[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stream_never_splits_a_character() {
        let emoji = "🦀".as_bytes(); // 4 bytes
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.push(b"a"), "a");
        assert_eq!(stream.push(&emoji[..1]), "");
        assert_eq!(stream.push(&emoji[1..3]), "");
        assert_eq!(stream.push(&[emoji[3], b'b']), "🦀b");
        assert_eq!(stream.finish(), "");
    }

    #[test]
    fn utf8_stream_replaces_invalid_bytes_and_dangling_ends() {
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.push(&[b'x', 0xff, b'y']), "x\u{fffd}y");
        assert_eq!(stream.push(&"é".as_bytes()[..1]), "");
        assert_eq!(stream.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_string_across_pieces_is_cut_and_never_emitted() {
        let mut matcher = StopMatcher::new(&["</end>".to_string()]);
        assert_eq!(matcher.push("hello </"), StopStep { emit: "hello ".into(), stopped: false });
        assert_eq!(matcher.push("en"), StopStep { emit: "".into(), stopped: false });
        assert_eq!(matcher.push("d> tail"), StopStep { emit: "".into(), stopped: true });
    }

    #[test]
    fn held_back_text_is_released_when_it_is_not_a_stop() {
        let mut matcher = StopMatcher::new(&["\n\n".to_string()]);
        assert_eq!(matcher.push("a\n"), StopStep { emit: "a".into(), stopped: false });
        assert_eq!(matcher.push("b"), StopStep { emit: "\nb".into(), stopped: false });
        assert_eq!(matcher.push("c\n"), StopStep { emit: "c".into(), stopped: false });
        assert_eq!(matcher.finish(), "\n");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut matcher = StopMatcher::new(&["world".to_string(), "lo".to_string()]);
        assert_eq!(matcher.push("hello world"), StopStep { emit: "hel".into(), stopped: true });
    }

    #[test]
    fn no_stops_passes_everything_through() {
        let mut matcher = StopMatcher::new(&[]);
        assert_eq!(matcher.push("abc"), StopStep { emit: "abc".into(), stopped: false });
        assert_eq!(matcher.finish(), "");
    }
}
