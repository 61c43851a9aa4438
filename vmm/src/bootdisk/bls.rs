//! Boot Loader Specification type #1 entries (`/loader/entries/*.conf`), as
//! systemd-boot and GRUB's `blscfg` read them: `title`, `version`,
//! `machine-id`, `sort-key`, `linux`, `initrd` (repeatable), `options`
//! (repeatable, joined), `architecture`. Entries without `linux` (an `efi`
//! binary, a unified kernel image) cannot be booted directly and are skipped.
//! The default is `loader.conf`'s `default` (an id, `*`/`?` globs allowed),
//! else the first entry in the specification's order: by `sort-key`, then
//! `machine-id`, then `version` newest first; entries without a sort key
//! after those, by id newest first.

use std::cmp::Ordering;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// The file name without `.conf`.
    pub id: String,
    pub title: Option<String>,
    pub version: Option<String>,
    pub machine_id: Option<String>,
    pub sort_key: Option<String>,
    pub linux: Option<String>,
    pub initrds: Vec<String>,
    pub options: Vec<String>,
    pub architecture: Option<String>,
}

impl Entry {
    pub fn parse(id: &str, text: &str) -> Entry {
        let mut entry = Entry { id: id.to_string(), ..Entry::default() };
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let value = value.trim().to_string();
            match key {
                "title" => entry.title = Some(value),
                "version" => entry.version = Some(value),
                "machine-id" => entry.machine_id = Some(value),
                "sort-key" => entry.sort_key = Some(value),
                "linux" => entry.linux = Some(value),
                "initrd" => entry.initrds.extend(value.split_whitespace().map(str::to_string)),
                "options" => entry.options.push(value),
                "architecture" => entry.architecture = Some(value.to_ascii_lowercase()),
                _ => {}
            }
        }
        entry
    }

    /// Bootable here: a kernel to load directly, for x86-64 (or any architecture).
    pub fn bootable(&self) -> bool {
        self.linux.is_some() && self.architecture.as_deref().is_none_or(|a| a == "x64")
    }

    pub fn cmdline(&self) -> String {
        self.options.iter().filter(|o| !o.is_empty()).cloned().collect::<Vec<_>>().join(" ")
    }

    /// How messages name it: its title, else its id.
    pub fn name(&self) -> &str {
        self.title.as_deref().unwrap_or(&self.id)
    }
}

/// `default` from `loader.conf`, when it names an entry (not `@saved` and such).
pub fn loader_default(text: &str) -> Option<String> {
    text.lines().filter_map(|l| l.trim().strip_prefix("default")).find_map(|rest| {
        let value = rest.trim();
        (rest.starts_with(char::is_whitespace) && !value.is_empty() && !value.starts_with('@'))
            .then(|| value.trim_end_matches(".conf").to_string())
    })
}

/// The entry to boot among `entries` (bootable ones only) and why.
pub fn choose(mut entries: Vec<Entry>, default: Option<&str>) -> Option<(Entry, String)> {
    entries.retain(Entry::bootable);
    entries.sort_by(order);
    if let Some(pattern) = default {
        if let Some(entry) = entries.iter().find(|e| glob(pattern, &e.id)) {
            return Some((entry.clone(), format!("loader.conf default {pattern:?}")));
        }
    }
    let first = entries.into_iter().next()?;
    let why = match default {
        Some(pattern) => format!("loader.conf default {pattern:?} names no entry; the first entry"),
        None => "the first entry".to_string(),
    };
    Some((first, why))
}

/// The specification's order (the first sorts first).
fn order(a: &Entry, b: &Entry) -> Ordering {
    match (&a.sort_key, &b.sort_key) {
        (Some(x), Some(y)) => x
            .cmp(y)
            .then_with(|| a.machine_id.cmp(&b.machine_id))
            .then_with(|| version_cmp(b.version.as_deref().unwrap_or(""), a.version.as_deref().unwrap_or("")))
            .then_with(|| version_cmp(&b.id, &a.id)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => version_cmp(&b.id, &a.id),
    }
}

/// Version order (the UAPI group's): runs of digits compare as numbers,
/// other runs as text; `~` sorts before everything, even the end.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        // Separators other than `~` do not matter.
        let skip = |s: &[u8]| s.iter().position(|c| c.is_ascii_alphanumeric() || *c == b'~').unwrap_or(s.len());
        a = &a[skip(a)..];
        b = &b[skip(b)..];
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (Some(b'~'), Some(b'~')) => {
                a = &a[1..];
                b = &b[1..];
                continue;
            }
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            _ => {}
        }
        let digits = |s: &[u8]| s.iter().position(|c| !c.is_ascii_digit()).unwrap_or(s.len());
        let letters = |s: &[u8]| s.iter().position(|c| !c.is_ascii_alphabetic()).unwrap_or(s.len());
        let (a_num, b_num) = (a[0].is_ascii_digit(), b[0].is_ascii_digit());
        if a_num != b_num {
            // Numbers sort after letters.
            return if a_num { Ordering::Greater } else { Ordering::Less };
        }
        let (n, m) = if a_num { (digits(a), digits(b)) } else { (letters(a), letters(b)) };
        let (x, y) = (&a[..n], &b[..m]);
        let ordering = if a_num {
            let (x, y) = (trim_zeros(x), trim_zeros(y));
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        } else {
            x.cmp(y)
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
        a = &a[n..];
        b = &b[m..];
    }
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let first = digits.iter().position(|d| *d != b'0').unwrap_or(digits.len());
    &digits[first..]
}

/// `*` and `?` globs, as `loader.conf`'s `default` takes them.
fn glob(pattern: &str, text: &str) -> bool {
    fn matches(p: &[u8], t: &[u8]) -> bool {
        // Iterative with one backtrack point: linear in practice, never exponential.
        let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
        while ti < t.len() {
            if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == b'*' {
                star = Some(pi);
                mark = ti;
                pi += 1;
            } else if let Some(s) = star {
                pi = s + 1;
                mark += 1;
                ti = mark;
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|c| *c == b'*')
    }
    matches(pattern.as_bytes(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_numbers_and_text() {
        assert_eq!(version_cmp("6.1.0-10", "6.1.0-9"), Ordering::Greater);
        assert_eq!(version_cmp("5.14.0-70.el9", "5.14.0-162.el9"), Ordering::Less);
        assert_eq!(version_cmp("1.0~rc1", "1.0"), Ordering::Less);
        assert_eq!(version_cmp("007", "7"), Ordering::Equal);
        assert_eq!(version_cmp("a", "1"), Ordering::Less);
    }

    #[test]
    fn the_newest_version_boots_unless_loader_conf_says_otherwise() {
        let a = Entry::parse("fedora-6.1", "title Fedora 6.1\nversion 6.1\nlinux /vmlinuz-6.1\noptions ro\n");
        let b = Entry::parse("fedora-6.10", "title Fedora 6.10\nversion 6.10\nlinux /vmlinuz-6.10\n");
        let efi = Entry::parse("uki", "title UKI\nversion 9.0\nefi /EFI/Linux/uki.efi\n");
        let (chosen, why) = choose(vec![a.clone(), b.clone(), efi], None).unwrap();
        assert_eq!((chosen.id.as_str(), why.as_str()), ("fedora-6.10", "the first entry"));
        let (chosen, _) = choose(vec![a.clone(), b.clone()], Some("fedora-6.1")).unwrap();
        assert_eq!(chosen.id, "fedora-6.1");
        let (chosen, why) = choose(vec![a, b], Some("nothing*")).unwrap();
        assert_eq!(chosen.id, "fedora-6.10");
        assert!(why.contains("names no entry"), "{why}");
    }

    #[test]
    fn entries_join_options_and_keep_every_initrd() {
        let e = Entry::parse("x", "linux /k\ninitrd /i1\ninitrd /i2 /i3\noptions root=/dev/vda1\noptions  quiet\n");
        assert_eq!(e.initrds, ["/i1", "/i2", "/i3"]);
        assert_eq!(e.cmdline(), "root=/dev/vda1 quiet");
        assert!(!Entry::parse("x", "linux /k\narchitecture aa64\n").bootable());
    }

    #[test]
    fn loader_conf_default_and_globs() {
        assert_eq!(loader_default("timeout 3\ndefault fedora-*.conf\n").as_deref(), Some("fedora-*"));
        assert_eq!(loader_default("default @saved\n"), None);
        assert_eq!(loader_default("defaultx y\n"), None);
        assert!(glob("fedora-*", "fedora-6.1"));
        assert!(glob("f?dora*", "fedora"));
        assert!(!glob("fedora-*", "debian"));
        assert!(!glob(&"*a".repeat(50), &"a".repeat(40)), "no exponential backtracking");
    }
}
