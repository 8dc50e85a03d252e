//! What the test runs brought back: each test's outcome (from libtest's own
//! output) and the attach paths the tests recorded (`support::matrix` in
//! `daemon/tests`: one `binary, test, feature, path` line per observation),
//! joined into the kernel x feature x attach path x result table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A test's outcome as libtest printed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Ignored,
}

/// Outcomes of one kernel's runs, by (binary, test).
#[derive(Clone, Debug, Default)]
pub struct TestResults {
    pub tests: BTreeMap<(String, String), Outcome>,
}

impl TestResults {
    /// Adds what one libtest run of `binary` printed (`test NAME ... ok`).
    pub fn add_libtest_output(&mut self, binary: &str, output: &str) {
        for line in output.lines() {
            if let Some((name, outcome)) = parse_test_line(line) {
                self.tests
                    .insert((binary.to_owned(), name.to_owned()), outcome);
            }
        }
    }

    /// Adds what `cargo test` printed: `Running tests/x.rs (...)` lines say
    /// whose results follow.
    pub fn add_cargo_test_output(&mut self, output: &str) {
        let mut binary = String::new();
        for line in output.lines() {
            let trimmed = line.trim();
            if let Some(rest) = trimmed.strip_prefix("Running ") {
                // `Running tests/xdp_counter.rs (target/debug/deps/xdp_counter-1f2e)`
                // or `Running unittests src/lib.rs (...)`.
                binary = rest
                    .split_whitespace()
                    .find(|w| w.ends_with(".rs"))
                    .map(|w| {
                        w.rsplit('/')
                            .next()
                            .unwrap_or(w)
                            .trim_end_matches(".rs")
                            .to_owned()
                    })
                    .unwrap_or_default();
                continue;
            }
            if let Some((name, outcome)) = parse_test_line(line) {
                self.tests
                    .insert((binary.clone(), name.to_owned()), outcome);
            }
        }
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.tests.values().filter(|o| **o == outcome).count()
    }

    pub fn failed(&self) -> Vec<String> {
        self.tests
            .iter()
            .filter(|(_, o)| **o == Outcome::Failed)
            .map(|((b, t), _)| format!("{b}::{t}"))
            .collect()
    }
}

fn parse_test_line(line: &str) -> Option<(&str, Outcome)> {
    let rest = line.strip_prefix("test ")?;
    let (name, result) = rest.rsplit_once(" ... ")?;
    let outcome = match result.trim() {
        "ok" => Outcome::Passed,
        "FAILED" => Outcome::Failed,
        r if r.starts_with("ignored") => Outcome::Ignored,
        _ => return None,
    };
    Some((name.trim(), outcome))
}

/// One observation a test recorded: on this kernel, `feature` took `path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub binary: String,
    pub test: String,
    pub feature: String,
    pub path: String,
}

pub fn parse_records(text: &str) -> Vec<Record> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            Some(Record {
                binary: fields.next()?.to_owned(),
                test: fields.next()?.to_owned(),
                feature: fields.next()?.to_owned(),
                path: fields.next()?.to_owned(),
            })
        })
        .collect()
}

/// Everything one kernel ran.
#[derive(Clone, Debug)]
pub struct KernelReport {
    /// `Debian linux-image-6.12.117+deb12-amd64 6.12.117-1~deb12u1`, or
    /// the host's `uname -r`.
    pub kernel: String,
    pub results: TestResults,
    pub records: Vec<Record>,
    /// Features the plan leaves out on this kernel: `(feature, why)`.
    pub not_run: Vec<(String, String)>,
}

/// One row: on `kernel`, `feature` took `path`; `result` says whether
/// every test that saw it passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub kernel: String,
    pub feature: String,
    pub path: String,
    pub result: String,
}

pub fn rows(reports: &[KernelReport]) -> Vec<Row> {
    let mut rows = Vec::new();
    for report in reports {
        // feature -> path -> tests that observed it
        let mut seen: BTreeMap<&str, BTreeMap<&str, Vec<&Record>>> = BTreeMap::new();
        for record in &report.records {
            seen.entry(&record.feature)
                .or_default()
                .entry(&record.path)
                .or_default()
                .push(record);
        }
        for (feature, paths) in seen {
            for (path, records) in paths {
                let mut tests: Vec<(&str, &str)> = records
                    .iter()
                    .map(|r| (r.binary.as_str(), r.test.as_str()))
                    .collect();
                tests.sort();
                tests.dedup();
                let failed: Vec<String> = tests
                    .iter()
                    .filter(|(b, t)| {
                        report.results.tests.get(&(b.to_string(), t.to_string()))
                            != Some(&Outcome::Passed)
                    })
                    .map(|(b, t)| format!("{b}::{t}"))
                    .collect();
                let result = if failed.is_empty() {
                    let n = tests.len();
                    format!("pass ({n} test{})", if n == 1 { "" } else { "s" })
                } else {
                    format!("FAIL: {}", failed.join(", "))
                };
                rows.push(Row {
                    kernel: report.kernel.clone(),
                    feature: feature.to_owned(),
                    path: path.to_owned(),
                    result,
                });
            }
        }
        for (feature, why) in &report.not_run {
            rows.push(Row {
                kernel: report.kernel.clone(),
                feature: feature.clone(),
                path: "-".into(),
                result: format!("NOT RUN: {why}"),
            });
        }
    }
    rows
}

/// The Markdown table, with each kernel's totals under it.
pub fn render(reports: &[KernelReport]) -> String {
    let mut out =
        String::from("| kernel | feature | attach path | result |\n| --- | --- | --- | --- |\n");
    let mut last_kernel = String::new();
    for row in rows(reports) {
        let kernel = if row.kernel == last_kernel {
            String::new()
        } else {
            row.kernel.clone()
        };
        last_kernel = row.kernel.clone();
        let _ = writeln!(
            out,
            "| {kernel} | {} | {} | {} |",
            row.feature,
            row.path.replace('|', "\\|"),
            row.result
        );
    }
    out.push('\n');
    for report in reports {
        let _ = writeln!(
            out,
            "- {}: {} passed, {} failed, {} ignored",
            report.kernel,
            report.results.count(Outcome::Passed),
            report.results.count(Outcome::Failed),
            report.results.count(Outcome::Ignored)
        );
    }
    out
}

/// Markers around the generated table in README.md.
pub const BEGIN: &str = "<!-- kernel-matrix:begin (cargo xtask vm-readme writes this) -->";
pub const END: &str = "<!-- kernel-matrix:end -->";

/// `readme` with the text between the markers replaced by `table`.
pub fn splice(readme: &str, table: &str) -> Option<String> {
    let start = readme.find(BEGIN)? + BEGIN.len();
    let end = readme[start..].find(END)? + start;
    Some(format!("{}\n{}{}", &readme[..start], table, &readme[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_and_cargo_output() {
        let mut results = TestResults::default();
        results.add_libtest_output(
            "xdp_counter",
            "running 3 tests\ntest a ... ok\ntest b ... FAILED\ntest c ... ignored, needs a NIC\n\
             test result: FAILED. 1 passed; 1 failed; 1 ignored\n",
        );
        assert_eq!(results.count(Outcome::Passed), 1);
        assert_eq!(results.failed(), ["xdp_counter::b"]);
        assert_eq!(results.count(Outcome::Ignored), 1);

        let mut cargo = TestResults::default();
        cargo.add_cargo_test_output(
            "     Running tests/operations.rs (target/debug/deps/operations-0a1b)\n\
             test x ... ok\n\
             \x20    Running unittests src/lib.rs (target/debug/deps/telemetryd-99)\n\
             test config::tests::y ... ok\n",
        );
        assert_eq!(
            cargo.tests.keys().cloned().collect::<Vec<_>>(),
            [
                ("lib".to_owned(), "config::tests::y".to_owned()),
                ("operations".to_owned(), "x".to_owned())
            ]
        );
    }

    #[test]
    fn a_row_fails_when_a_test_that_saw_it_failed() {
        let mut results = TestResults::default();
        results.add_libtest_output("s", "test one ... ok\ntest two ... FAILED\n");
        let records = parse_records(
            "s\tone\tsyscalls\tfentry\ns\ttwo\tsyscalls\tfentry\ns\tone\txdp\tnative\n",
        );
        let report = KernelReport {
            kernel: "k".into(),
            results,
            records,
            not_run: vec![("events".into(), "a known defect".into())],
        };
        let rows = rows(std::slice::from_ref(&report));
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].result, "NOT RUN: a known defect");
        assert_eq!(rows[0].feature, "syscalls");
        assert_eq!(rows[0].result, "FAIL: s::two");
        assert_eq!(rows[1].result, "pass (1 test)");
        let table = render(&[report]);
        assert!(
            table.contains("| k | syscalls | fentry | FAIL: s::two |"),
            "{table}"
        );
        assert!(
            table.contains("|  | xdp | native | pass (1 test) |"),
            "{table}"
        );
    }

    #[test]
    fn splices_between_the_markers() {
        let readme = format!("a\n{BEGIN}\nold\n{END}\nb\n");
        let new = splice(&readme, "new\n").unwrap();
        assert_eq!(new, format!("a\n{BEGIN}\nnew\n{END}\nb\n"));
        assert!(splice("no markers", "x").is_none());
    }
}
