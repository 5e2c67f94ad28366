//! A service's table of the generated manifest, each line with the place in the Compose file it
//! comes from.

use crate::out::Out;

/// A line of TOML, the offset in the Compose file it comes from, and the Compose field.
type Line = (String, usize, String);

/// A service's table: keys first, then its sub-tables (TOML wants them in that order).
#[derive(Default)]
pub(crate) struct Table {
    keys: Vec<Line>,
    tables: Vec<(String, Vec<Line>)>,
}

impl Table {
    pub(crate) fn key(&mut self, text: String, offset: usize, field: &str) {
        self.keys.push((text, offset, field.to_owned()));
    }

    pub(crate) fn table(
        &mut self,
        header: String,
        offset: usize,
        field: &str,
    ) -> &mut Vec<(String, usize, String)> {
        self.tables
            .push((header.clone(), vec![(header, offset, field.to_owned())]));
        let last = self.tables.len() - 1;
        &mut self.tables[last].1
    }

    /// Writes the keys, then the sub-tables, under the table's header already written.
    pub(crate) fn write(self, out: &mut Out) {
        for (text, offset, field) in self.keys {
            out.line(text, offset, &field);
        }
        for (_, lines) in self.tables {
            out.blank();
            for (text, offset, field) in lines {
                out.line(text, offset, &field);
            }
        }
    }
}
