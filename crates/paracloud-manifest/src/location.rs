//! Byte offsets in the source turned into the 1-based lines and columns people read.

/// Start offsets of every line of a source text.
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(src: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(src.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { starts }
    }

    /// The 1-based line and column (counted in characters) of a byte offset; offsets past the end
    /// or inside a character are clamped, since spans come from another crate.
    pub(crate) fn position(&self, src: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(src.len());
        while !src.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&start| start <= offset);
        // `line` is at least 1 because the first start is 0.
        let start = self.starts[line - 1];
        let column = src[start..offset].chars().count() + 1;
        (line, column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = "ab\nçd\n";
        let index = LineIndex::new(src);
        assert_eq!(index.position(src, 0), (1, 1));
        assert_eq!(index.position(src, 2), (1, 3));
        assert_eq!(index.position(src, 3), (2, 1));
        assert_eq!(index.position(src, 5), (2, 2));
        assert_eq!(index.position(src, 4), (2, 1), "inside 'ç' clamps back");
        assert_eq!(index.position(src, 99), (3, 1));
    }
}
