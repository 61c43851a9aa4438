//! GRUB 2's `grub.cfg`, as much of its script as choosing the default entry
//! needs: quoting and `$var`/`${var}` expansion, `set` and `name=value`
//! assignments, `search --fs-uuid --set=root`, `load_env` (the `grubenv`
//! beside the file, read by the caller), `menuentry` and `submenu` blocks,
//! `set default=` as an index, a title, an id or a `>` path through
//! submenus, and in the chosen entry `linux`/`linux16`/`linuxefi` and
//! `initrd`/`initrd16`/`initrdefi`. Conditions (`if`, `while`) are not
//! evaluated: the commands inside run in text order, as a generated
//! `grub.cfg`'s `if … else set default="0"` needs; function bodies are skipped.
//! A default that names no entry boots the first one, as GRUB does.

use std::collections::HashMap;

/// Blocks nested deeper than this (menuentry in submenu in …) are refused.
const MAX_NESTING: usize = 8;
/// Menu items read at most, in all menus together.
const MAX_ITEMS: usize = 1024;

/// Part of a word: literal text or a variable to expand when the command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Word {
    parts: Vec<Part>,
    /// Any part was quoted: a quoted `{` is no block.
    quoted: bool,
}

impl Word {
    fn is(&self, text: &str) -> bool {
        !self.quoted && matches!(self.parts.as_slice(), [Part::Lit(t)] if t == text)
    }

    fn expand(&self, vars: &HashMap<String, String>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(text) => out.push_str(text),
                Part::Var(name) => out.push_str(vars.get(name).map_or("", String::as_str)),
            }
        }
        out
    }
}

type Command = Vec<Word>;

/// Splits the script into commands (newline or `;` separated) of words.
fn tokenize(text: &str) -> Vec<Command> {
    let mut commands = Vec::new();
    let mut command: Command = Vec::new();
    let mut word = Word::default();
    let mut lit = String::new();
    let mut in_word = false;
    let mut chars = text.chars().peekable();
    let flush_lit = |word: &mut Word, lit: &mut String| {
        if !lit.is_empty() {
            word.parts.push(Part::Lit(std::mem::take(lit)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '#' if !in_word => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(escaped) => lit.push(escaped),
                }
            }
            '\'' => {
                in_word = true;
                word.quoted = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    lit.push(c);
                }
            }
            '"' => {
                in_word = true;
                word.quoted = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' if chars.peek().is_some_and(|n| matches!(n, '$' | '"' | '\\' | '\n')) => {
                            let n = chars.next().unwrap_or_default();
                            if n != '\n' {
                                lit.push(n);
                            }
                        }
                        '$' => {
                            flush_lit(&mut word, &mut lit);
                            word.parts.push(variable(&mut chars));
                        }
                        c => lit.push(c),
                    }
                }
            }
            '$' => {
                in_word = true;
                flush_lit(&mut word, &mut lit);
                word.parts.push(variable(&mut chars));
            }
            ' ' | '\t' | '\r' | '\n' | ';' => {
                if in_word {
                    flush_lit(&mut word, &mut lit);
                    command.push(std::mem::take(&mut word));
                    in_word = false;
                }
                if (c == '\n' || c == ';') && !command.is_empty() {
                    commands.push(std::mem::take(&mut command));
                }
            }
            c => {
                in_word = true;
                lit.push(c);
            }
        }
    }
    if in_word {
        flush_lit(&mut word, &mut lit);
        command.push(word);
    }
    if !command.is_empty() {
        commands.push(command);
    }
    commands
}

/// `$name`, `${name}`, `$1`, `$?` after the `$`.
fn variable(chars: &mut std::iter::Peekable<std::str::Chars>) -> Part {
    let mut name = String::new();
    if chars.peek() == Some(&'{') {
        chars.next();
        for c in chars.by_ref() {
            if c == '}' {
                break;
            }
            name.push(c);
        }
        return Part::Var(name);
    }
    match chars.peek() {
        Some(c) if c.is_ascii_digit() || matches!(c, '?' | '#' | '*' | '@') => {
            name.push(*c);
            chars.next();
        }
        _ => {
            while let Some(c) = chars.peek().filter(|c| c.is_ascii_alphanumeric() || **c == '_') {
                name.push(*c);
                chars.next();
            }
        }
    }
    if name.is_empty() {
        return Part::Lit("$".into());
    }
    Part::Var(name)
}

/// A GRUB device: `hd0,gpt2`, `hd0,msdos1`, `hd0` (the whole disk), or
/// what `search --fs-uuid --set=root` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Partition(u32),
    Whole,
    FsUuid(String),
    /// Another disk, LVM, RAID…: not a partition of this disk.
    Other(String),
}

/// The pseudo device name `search --fs-uuid` leaves in `root`.
const UUID_DEVICE: &str = "uuid/";

impl Device {
    fn parse(name: &str) -> Device {
        let name = name.trim_start_matches('(').trim_end_matches(')');
        if let Some(uuid) = name.strip_prefix(UUID_DEVICE) {
            return Device::FsUuid(uuid.to_string());
        }
        let Some(rest) = name.strip_prefix("hd0") else { return Device::Other(name.to_string()) };
        let Some(partition) = rest.strip_prefix(',') else {
            return if rest.is_empty() { Device::Whole } else { Device::Other(name.to_string()) };
        };
        // The first partition component; BSD labels (`msdos1,bsd1`) are not followed.
        let first = partition.split(',').next().unwrap_or_default();
        let digits = first.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        match digits.parse() {
            Ok(n) if n > 0 && !partition.contains(',') => Device::Partition(n),
            _ => Device::Other(name.to_string()),
        }
    }
}

/// A file as GRUB names it: on a device, else on `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrubPath {
    /// None: the partition `grub.cfg` was read from.
    pub device: Option<Device>,
    pub path: String,
}

fn grub_path(text: &str, vars: &HashMap<String, String>) -> GrubPath {
    if let Some(rest) = text.strip_prefix('(') {
        if let Some((device, path)) = rest.split_once(')') {
            return GrubPath { device: Some(Device::parse(device)), path: path.to_string() };
        }
    }
    let device = vars.get("root").filter(|r| !r.is_empty()).map(|r| Device::parse(r));
    GrubPath { device, path: text.to_string() }
}

#[derive(Debug, Clone)]
enum Item {
    Entry { title: String, ids: Vec<String>, body: Vec<Command> },
    Submenu { title: String, ids: Vec<String>, items: Vec<Item> },
}

impl Item {
    fn names(&self) -> (&str, &[String]) {
        match self {
            Item::Entry { title, ids, .. } | Item::Submenu { title, ids, .. } => (title, ids),
        }
    }
}

/// The entry `grub.cfg` boots by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub title: String,
    pub kernel: GrubPath,
    pub initrds: Vec<GrubPath>,
    pub cmdline: String,
    /// Why this entry: `default "2"` or `default "9" names no entry; the first menuentry`.
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrubError {
    #[error("no menuentry")]
    NoEntry,
    #[error("menuentry {0:?} has no linux command")]
    NoKernel(String),
    #[error("blocks nested more than {MAX_NESTING} deep")]
    TooDeep,
}

struct Interpreter {
    vars: HashMap<String, String>,
    items: usize,
}

impl Interpreter {
    /// Runs `commands` (top level or a submenu's body), collecting menu items.
    fn run(&mut self, commands: &[Command], depth: usize) -> Result<Vec<Item>, GrubError> {
        if depth > MAX_NESTING {
            return Err(GrubError::TooDeep);
        }
        let mut items = Vec::new();
        let mut at = 0;
        while at < commands.len() {
            let command = strip_keywords(&commands[at]);
            at += 1;
            let Some(first) = command.first() else { continue };
            let opens = command.last().is_some_and(|w| w.is("{"));
            if opens && (first.is("menuentry") || first.is("submenu") || first.is("function")) {
                let (body, next) = block(commands, at)?;
                at = next;
                if first.is("function") || self.items >= MAX_ITEMS {
                    continue;
                }
                self.items += 1;
                let header: Vec<String> = command[1..command.len() - 1].iter().map(|w| w.expand(&self.vars)).collect();
                let (title, ids) = header_names(&header);
                if first.is("menuentry") {
                    items.push(Item::Entry { title, ids, body: body.to_vec() });
                } else {
                    let items_inside = self.run(body, depth + 1)?;
                    items.push(Item::Submenu { title, ids, items: items_inside });
                }
                continue;
            }
            self.command(command);
        }
        Ok(items)
    }

    /// Assignments and `search`; everything else has no effect on the choice.
    fn command(&mut self, command: &[Word]) {
        let words: Vec<String> = command.iter().map(|w| w.expand(&self.vars)).collect();
        match words[0].as_str() {
            "set" => {
                for assignment in &words[1..] {
                    if let Some((name, value)) = assignment.split_once('=') {
                        self.vars.insert(name.to_string(), value.to_string());
                    }
                }
            }
            "search" | "search.fs_uuid" => {
                let by_uuid = words[0] == "search.fs_uuid" || words.iter().any(|w| w == "--fs-uuid" || w == "-u");
                let mut target = "root".to_string();
                let mut positional = Vec::new();
                let mut rest = words[1..].iter();
                while let Some(word) = rest.next() {
                    if let Some(name) = word.strip_prefix("--set=") {
                        target = name.to_string();
                    } else if word == "--set" || word == "-s" {
                        if let Some(name) = rest.next().filter(|n| !n.starts_with('-')) {
                            target = name.clone();
                        }
                    } else if !word.starts_with('-') {
                        positional.push(word.clone());
                    }
                }
                // search.fs_uuid UUID [VAR]
                if words[0] == "search.fs_uuid" && positional.len() > 1 {
                    target = positional[1].clone();
                }
                if let (true, Some(uuid)) = (by_uuid, positional.first()) {
                    self.vars.insert(target, format!("{UUID_DEVICE}{uuid}"));
                }
            }
            word => {
                if let Some((name, value)) = word.split_once('=') {
                    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        self.vars.insert(name.to_string(), value.to_string());
                    }
                }
            }
        }
    }
}

/// A command without its leading `then`/`else`/`do`; `if`/`fi` and the other
/// control words alone are no command.
fn strip_keywords(command: &[Word]) -> &[Word] {
    let mut command = command;
    while let Some(first) = command.first() {
        if ["then", "else", "do"].iter().any(|k| first.is(k)) {
            command = &command[1..];
        } else if ["if", "elif", "while", "until", "for", "fi", "done"].iter().any(|k| first.is(k)) {
            return &[];
        } else {
            break;
        }
    }
    command
}

/// The commands of the block opened before `start`, and where the script goes on.
fn block(commands: &[Command], start: usize) -> Result<(&[Command], usize), GrubError> {
    let mut depth = 1usize;
    for (index, command) in commands.iter().enumerate().skip(start) {
        if command.last().is_some_and(|w| w.is("{")) {
            depth += 1;
            if depth > MAX_NESTING + 1 {
                return Err(GrubError::TooDeep);
            }
        }
        if command.first().is_some_and(|w| w.is("}")) {
            depth -= 1;
            if depth == 0 {
                return Ok((&commands[start..index], index + 1));
            }
        }
    }
    // Unclosed: the block runs to the end of the file.
    Ok((&commands[start..], commands.len()))
}

/// The title (first word that is not an option) and ids (`--id X`, `--id=X`,
/// and further plain words: generated files pass the id through `$menuentry_id_option`).
fn header_names(header: &[String]) -> (String, Vec<String>) {
    let mut title = None;
    let mut ids = Vec::new();
    let mut words = header.iter();
    while let Some(word) = words.next() {
        if let Some(id) = word.strip_prefix("--id=") {
            ids.push(id.to_string());
        } else if word == "--id" {
            ids.extend(words.next().cloned());
        } else if matches!(word.as_str(), "--class" | "--users" | "--hotkey") {
            words.next();
        } else if word.starts_with("--") {
        } else if title.is_none() {
            title = Some(word.clone());
        } else {
            ids.push(word.clone());
        }
    }
    (title.unwrap_or_default(), ids)
}

/// `grubenv`'s `name=value` lines.
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The default entry of `text`, with `env` (the `grubenv`) loaded first.
pub fn choose(text: &str, env: HashMap<String, String>) -> Result<Chosen, GrubError> {
    let mut interpreter = Interpreter { vars: env, items: 0 };
    let items = interpreter.run(&tokenize(text), 0)?;
    let default = interpreter.vars.get("default").cloned().unwrap_or_default();
    let global = interpreter.vars;
    let (found, why) = match find(&items, &default) {
        Some(entry) => (Some(entry), format!("default {default:?}")),
        None if default.is_empty() => (first(&items), "the first menuentry".to_string()),
        None => (first(&items), format!("default {default:?} names no entry; the first menuentry")),
    };
    let Some(Item::Entry { title, body, .. }) = found else { return Err(GrubError::NoEntry) };
    // The entry's commands run with what the script left set.
    let mut entry = Interpreter { vars: global, items: 0 };
    let mut kernel = None;
    let mut initrds = Vec::new();
    let mut cmdline = String::new();
    for command in body {
        let command = strip_keywords(command);
        let Some(first) = command.first() else { continue };
        let words: Vec<String> = command.iter().map(|w| w.expand(&entry.vars)).collect();
        match first.expand(&entry.vars).as_str() {
            "linux" | "linux16" | "linuxefi" if words.len() > 1 => {
                kernel = Some(grub_path(&words[1], &entry.vars));
                cmdline = words[2..].join(" ");
            }
            "initrd" | "initrd16" | "initrdefi" => {
                initrds = words[1..].iter().map(|w| grub_path(w, &entry.vars)).collect();
            }
            _ => entry.command(command),
        }
    }
    let kernel = kernel.ok_or_else(|| GrubError::NoKernel(title.clone()))?;
    Ok(Chosen { title: title.clone(), kernel, initrds, cmdline, why })
}

/// The item `default` names: `N`, a title or an id, or such steps joined by `>`.
fn find<'a>(items: &'a [Item], default: &str) -> Option<&'a Item> {
    if default.is_empty() {
        return None;
    }
    let mut level = items;
    let mut found = None;
    for step in default.split('>') {
        let item = match step.parse::<usize>() {
            Ok(index) => level.get(index),
            Err(_) => level.iter().find(|item| {
                let (title, ids) = item.names();
                title == step || ids.iter().any(|id| id == step)
            }),
        }?;
        found = Some(item);
        level = match item {
            Item::Submenu { items, .. } => items,
            Item::Entry { .. } => &[],
        };
    }
    match found {
        Some(Item::Submenu { items, .. }) => first(items),
        other => other,
    }
}

/// The first entry, into submenus.
fn first(items: &[Item]) -> Option<&Item> {
    match items.first()? {
        Item::Submenu { items, .. } => first(items),
        entry => Some(entry),
    }
}

#[cfg(test)]
#[path = "grub_tests.rs"]
mod tests;
