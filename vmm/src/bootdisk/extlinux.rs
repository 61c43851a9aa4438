//! `extlinux.conf` / `syslinux.cfg`: `DEFAULT`, `LABEL` entries with
//! `KERNEL`/`LINUX`, `INITRD` (a comma list), `APPEND` (`initrd=` in it
//! counts when no `INITRD` line does, as syslinux reads it) and `MENU LABEL`,
//! `MENU DEFAULT`. Keywords are case-insensitive. The default is the label
//! marked `MENU DEFAULT`, else the one `DEFAULT` names; a `DEFAULT` naming no
//! label is a kernel and its arguments, as syslinux takes it; without either,
//! the first label. Other directives (`UI`, `TIMEOUT`, `PROMPT`, `INCLUDE`…)
//! do not change what boots and are not read.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Label {
    name: String,
    title: Option<String>,
    kernel: Option<String>,
    initrds: Vec<String>,
    append: Option<String>,
    menu_default: bool,
}

/// The entry the file boots by default; paths as written (relative ones are
/// relative to the file's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub label: String,
    pub kernel: String,
    pub initrds: Vec<String>,
    pub cmdline: String,
    pub why: String,
}

pub fn choose(text: &str) -> Option<Chosen> {
    let mut labels: Vec<Label> = Vec::new();
    let mut default = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let keyword = keyword.to_ascii_lowercase();
        if keyword == "label" {
            labels.push(Label { name: rest.to_string(), ..Label::default() });
            continue;
        }
        if keyword == "default" {
            default = Some(rest.to_string());
            continue;
        }
        let Some(label) = labels.last_mut() else { continue };
        match keyword.as_str() {
            "kernel" | "linux" => label.kernel = Some(rest.to_string()),
            "initrd" => {
                label.initrds = rest.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
            }
            "append" => label.append = Some(rest.to_string()),
            "menu" => {
                let (what, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                match what.to_ascii_lowercase().as_str() {
                    "label" => label.title = Some(value.trim().to_string()),
                    "default" => label.menu_default = true,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let bootable = |l: &&Label| l.kernel.is_some();
    let (label, why) = if let Some(label) = labels.iter().filter(bootable).find(|l| l.menu_default) {
        (label.clone(), "MENU DEFAULT".to_string())
    } else if let Some(name) = &default {
        match labels.iter().filter(bootable).find(|l| l.name == *name) {
            Some(label) => (label.clone(), format!("DEFAULT {name}")),
            None => {
                // `DEFAULT kernel args…`: no label of that name.
                let (kernel, args) = name.split_once(char::is_whitespace).unwrap_or((name, ""));
                if kernel.is_empty() {
                    return None;
                }
                let label = Label {
                    name: kernel.to_string(),
                    kernel: Some(kernel.to_string()),
                    append: Some(args.trim().to_string()),
                    ..Label::default()
                };
                (label, "DEFAULT names no label: a kernel and its arguments".to_string())
            }
        }
    } else {
        (labels.iter().find(bootable)?.clone(), "the first label".to_string())
    };
    let mut initrds = label.initrds.clone();
    let mut words = Vec::new();
    for word in label.append.as_deref().unwrap_or_default().split_whitespace() {
        match word.strip_prefix("initrd=") {
            Some(list) if label.initrds.is_empty() => initrds.extend(list.split(',').map(str::to_string)),
            Some(_) => {}
            None if word == "-" => {}
            None => words.push(word),
        }
    }
    Some(Chosen {
        label: label.title.clone().unwrap_or(label.name.clone()),
        kernel: label.kernel.clone().unwrap_or_default(),
        initrds,
        cmdline: words.join(" "),
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "\
# generated
UI menu.c32
DEFAULT rescue
TIMEOUT 50

LABEL linux
  MENU LABEL Alpine Linux
  LINUX /boot/vmlinuz-lts
  INITRD /boot/initramfs-lts,/boot/microcode.img
  APPEND root=UUID=abcd modules=sd-mod,ext4 quiet

label rescue
  kernel vmlinuz-rescue
  append initrd=initrd-rescue.img console=ttyS0 single
";

    #[test]
    fn default_names_a_label_and_append_may_carry_the_initrd() {
        let chosen = choose(CONF).unwrap();
        assert_eq!(chosen.label, "rescue");
        assert_eq!(chosen.why, "DEFAULT rescue");
        assert_eq!(chosen.kernel, "vmlinuz-rescue");
        assert_eq!(chosen.initrds, ["initrd-rescue.img"]);
        assert_eq!(chosen.cmdline, "console=ttyS0 single");
    }

    #[test]
    fn menu_default_wins_and_initrd_lists_split() {
        let chosen =
            choose(&CONF.replace("  MENU LABEL Alpine Linux", "  MENU LABEL Alpine Linux\n  MENU DEFAULT")).unwrap();
        assert_eq!(chosen.label, "Alpine Linux");
        assert_eq!(chosen.initrds, ["/boot/initramfs-lts", "/boot/microcode.img"]);
        assert_eq!(chosen.cmdline, "root=UUID=abcd modules=sd-mod,ext4 quiet");
    }

    #[test]
    fn without_default_the_first_label_and_default_as_a_command_line() {
        let chosen = choose(&CONF.replace("DEFAULT rescue", "")).unwrap();
        assert_eq!((chosen.kernel.as_str(), chosen.why.as_str()), ("/boot/vmlinuz-lts", "the first label"));
        let chosen = choose("DEFAULT /vmlinuz root=/dev/vda1 ro\n").unwrap();
        assert_eq!((chosen.kernel.as_str(), chosen.cmdline.as_str()), ("/vmlinuz", "root=/dev/vda1 ro"));
        assert_eq!(choose("TIMEOUT 1\nLABEL x\n  APPEND y\n"), None);
        assert_eq!(choose(""), None);
    }
}
