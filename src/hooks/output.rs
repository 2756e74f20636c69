//! Bounded capture of a hook's output.

/// How much of a hook's output (or an HTTP body) is kept.
pub const OUTPUT_LIMIT: usize = 10 * 1024;

/// Keeps the last [`OUTPUT_LIMIT`] bytes of a stream and counts the rest.
#[derive(Debug, Default)]
pub struct Tail {
    buf: std::collections::VecDeque<u8>,
    total: u64,
}

impl Tail {
    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let data = if data.len() > OUTPUT_LIMIT {
            &data[data.len() - OUTPUT_LIMIT..]
        } else {
            data
        };
        let overflow = (self.buf.len() + data.len()).saturating_sub(OUTPUT_LIMIT);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }

    /// The kept text, preceded by a note when the beginning was dropped.
    pub fn render(&self) -> String {
        let bytes: Vec<u8> = self.buf.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        if self.total > self.buf.len() as u64 {
            format!(
                "[output truncated: {} bytes, last {} kept]\n{text}",
                self.total,
                self.buf.len()
            )
        } else {
            text.into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_and_says_so() {
        let mut t = Tail::default();
        t.push(b"hello ");
        assert_eq!(t.render(), "hello ");
        t.push(&vec![b'x'; OUTPUT_LIMIT]);
        t.push(b"end");
        let r = t.render();
        assert!(
            r.starts_with("[output truncated: 10249 bytes, last 10240 kept]\n"),
            "{r}"
        );
        assert!(r.ends_with("xxxend"));
        let mut big = Tail::default();
        big.push(&vec![b'y'; 3 * OUTPUT_LIMIT]);
        assert_eq!(big.buf.len(), OUTPUT_LIMIT);
    }
}
