//! The daemon's configuration for a test, key by key: one place that knows
//! the tests' defaults (listening on [`LISTEN`] inside the test's
//! namespace, a 100 ms poll, syscall tracing off) instead of a TOML
//! template per test file.

use super::process::LISTEN;

/// A configuration file under construction; [`TestConfig::toml`] writes it.
#[derive(Clone, Debug)]
pub struct TestConfig {
    /// (table, lines in it), in the order first written.
    tables: Vec<(String, Vec<Line>)>,
}

#[derive(Clone, Debug)]
enum Line {
    Key(String, toml::Value),
    Raw(String),
}

impl Default for TestConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TestConfig {
    /// Polls every 100 ms, listens on [`LISTEN`], traces no syscalls.
    pub fn new() -> Self {
        Self { tables: Vec::new() }
            .set("daemon.poll_interval", "100ms")
            .set("http.listen", LISTEN)
            .set("syscalls.enabled", false)
    }

    /// `key` (`table.key`) = `value`, replacing an earlier value of it.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        let (table, name) = key
            .split_once('.')
            .unwrap_or_else(|| panic!("{key:?} is not table.key"));
        let value = value.into();
        let lines = self.table(table);
        match lines
            .iter_mut()
            .find(|l| matches!(l, Line::Key(k, _) if k == name))
        {
            Some(line) => *line = Line::Key(name.to_owned(), value),
            None => lines.push(Line::Key(name.to_owned(), value)),
        }
        self
    }

    /// The XDP program on exactly these interfaces.
    pub fn interfaces(self, names: &[&str]) -> Self {
        let names: Vec<toml::Value> = names.iter().map(|&n| n.into()).collect();
        self.set("xdp.interfaces", names)
    }

    /// TOML lines written as they are into `table`, after its keys.
    pub fn lines(mut self, table: &str, lines: &str) -> Self {
        if !lines.trim().is_empty() {
            self.table(table).push(Line::Raw(lines.to_owned()));
        }
        self
    }

    pub fn toml(&self) -> String {
        let mut out = String::new();
        for (table, lines) in &self.tables {
            out.push_str(&format!("[{table}]\n"));
            for line in lines {
                match line {
                    Line::Key(key, value) => out.push_str(&format!("{key} = {value}\n")),
                    Line::Raw(raw) => {
                        out.push_str(raw.trim_end());
                        out.push('\n');
                    }
                }
            }
        }
        out
    }

    fn table(&mut self, table: &str) -> &mut Vec<Line> {
        let at = match self.tables.iter().position(|(t, _)| t == table) {
            Some(at) => at,
            None => {
                self.tables.push((table.to_owned(), Vec::new()));
                self.tables.len() - 1
            }
        };
        &mut self.tables[at].1
    }
}
