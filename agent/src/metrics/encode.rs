//! The Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;

#[derive(Default)]
pub struct Encoder {
    out: String,
}

impl Encoder {
    /// `# HELP` and `# TYPE` lines for a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.out, "{key}=\"{escaped}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Encoder::default();
        out.family("m", "gauge", "a\nb");
        out.sample("m", &[("name", "a\"b\\c\nd"), ("ns", "x")], 1.5);
        assert_eq!(out.finish(), "# HELP m a\\nb\n# TYPE m gauge\nm{name=\"a\\\"b\\\\c\\nd\",ns=\"x\"} 1.5\n");
    }
}
