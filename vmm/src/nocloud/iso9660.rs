//! A small ISO 9660 writer: one root directory of regular files, with Joliet
//! (UCS-2 names) and Rock Ridge (POSIX names and modes), which is what a
//! cloud-init NoCloud seed needs. Output is deterministic: every timestamp is
//! the same fixed instant, so equal inputs give byte-identical images.

const SECTOR: usize = 2048;
/// Sectors 0-15 are the system area.
const FIRST_DESCRIPTOR: usize = 16;
/// 2020-01-01 00:00:00 UTC, as years-since-1900 .. seconds, GMT offset.
const RECORD_TIME: [u8; 7] = [120, 1, 1, 0, 0, 0, 0];
const VOLUME_TIME: &[u8; 17] = b"2020010100000000\0";
const FILE_MODE: u32 = 0o100444;
const DIR_MODE: u32 = 0o040555;

/// A file to put in the image's root directory.
pub struct File<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IsoError {
    #[error("file name `{0}` must be 1..=64 characters of [A-Za-z0-9._-]")]
    BadName(String),
    #[error("file `{name}` is {size} bytes; at most {max} are supported")]
    TooLarge { name: String, size: usize, max: usize },
    #[error("two files would share the ISO 9660 name {0}")]
    DuplicateName(String),
    #[error("volume label `{0}` must be 1..=16 characters of [A-Za-z0-9_-]")]
    BadLabel(String),
    #[error("the root directory needs {0} bytes; this writer supports one {SECTOR}-byte sector")]
    DirectoryFull(usize),
}

const MAX_FILE: usize = 64 << 20;

fn both_u16(value: u16) -> [u8; 4] {
    let (le, be) = (value.to_le_bytes(), value.to_be_bytes());
    [le[0], le[1], be[0], be[1]]
}

fn both_u32(value: u32) -> [u8; 8] {
    let mut out = [0; 8];
    out[..4].copy_from_slice(&value.to_le_bytes());
    out[4..].copy_from_slice(&value.to_be_bytes());
    out
}

/// ISO 9660 level 1 name: up to 8 d-characters, a dot, up to 3, then ";1".
fn level1_name(name: &str) -> String {
    let d_chars = |s: &str, max: usize| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).take(max).collect()
    };
    let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
    format!("{}.{};1", d_chars(stem, 8), d_chars(ext, 3))
}

fn ucs2(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// Rock Ridge PX: POSIX mode, links, uid, gid (RRIP 1.10 layout).
fn rr_px(mode: u32, links: u32) -> Vec<u8> {
    let mut px = vec![b'P', b'X', 36, 1];
    for value in [mode, links, 0, 0] {
        px.extend(both_u32(value));
    }
    px
}

/// Rock Ridge NM: the real file name.
fn rr_nm(name: &str) -> Vec<u8> {
    let mut nm = vec![b'N', b'M', (5 + name.len()) as u8, 1, 0];
    nm.extend(name.as_bytes());
    nm
}

/// SUSP SP and the ER entry announcing Rock Ridge, for the root's "." record.
fn susp_root_entries() -> Vec<u8> {
    let (id, descriptor, source) = (&b"RRIP_1991A"[..], &b"ROCK RIDGE 1.10"[..], &b"RRIP"[..]);
    let mut out = vec![b'S', b'P', 7, 1, 0xbe, 0xef, 0];
    out.extend([b'E', b'R', (8 + id.len() + descriptor.len() + source.len()) as u8, 1]);
    out.extend([id.len() as u8, descriptor.len() as u8, source.len() as u8, 1]);
    out.extend(id);
    out.extend(descriptor);
    out.extend(source);
    out
}

fn directory_record(identifier: &[u8], extent: u32, size: u32, is_dir: bool, system_use: &[u8]) -> Vec<u8> {
    let mut rec = vec![0u8; 33];
    rec[2..10].copy_from_slice(&both_u32(extent));
    rec[10..18].copy_from_slice(&both_u32(size));
    rec[18..25].copy_from_slice(&RECORD_TIME);
    rec[25] = if is_dir { 0x02 } else { 0 };
    rec[28..32].copy_from_slice(&both_u16(1));
    rec[32] = identifier.len() as u8;
    rec.extend(identifier);
    if rec.len() % 2 == 1 {
        rec.push(0);
    }
    rec.extend(system_use);
    if rec.len() % 2 == 1 {
        rec.push(0);
    }
    rec[0] = rec.len() as u8;
    rec
}

fn path_table(root_extent: u32, big_endian: bool) -> Vec<u8> {
    let mut table = vec![1, 0];
    table.extend(if big_endian { root_extent.to_be_bytes() } else { root_extent.to_le_bytes() });
    table.extend(if big_endian { 1u16.to_be_bytes() } else { 1u16.to_le_bytes() });
    table.extend([0, 0]); // root identifier and padding
    table
}

struct Layout {
    root: u32,
    joliet_root: u32,
    path_tables: [u32; 4], // L, M (primary); L, M (Joliet)
    files: Vec<u32>,
    total: u32,
}

fn sectors(bytes: usize) -> u32 {
    bytes.div_ceil(SECTOR) as u32
}

fn volume_descriptor(kind: u8, label: &str, layout: &Layout, joliet: bool) -> Vec<u8> {
    let mut vd = vec![0u8; SECTOR];
    vd[0] = kind;
    vd[1..6].copy_from_slice(b"CD001");
    vd[6] = 1;
    let text = |field: &mut [u8], value: &str| {
        if joliet {
            // UCS-2 spaces; the odd byte of a 37-byte field stays 0.
            for pair in field.chunks_exact_mut(2) {
                pair.copy_from_slice(&[0, b' ']);
            }
            let bytes = ucs2(value);
            field[..bytes.len()].copy_from_slice(&bytes);
        } else {
            field.fill(b' ');
            field[..value.len()].copy_from_slice(value.as_bytes());
        }
    };
    text(&mut vd[8..40], "LINUX");
    text(&mut vd[40..72], label);
    vd[80..88].copy_from_slice(&both_u32(layout.total));
    if joliet {
        vd[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
    }
    vd[120..124].copy_from_slice(&both_u16(1));
    vd[124..128].copy_from_slice(&both_u16(1));
    vd[128..132].copy_from_slice(&both_u16(SECTOR as u16));
    let table_len = path_table(0, false).len() as u32;
    vd[132..140].copy_from_slice(&both_u32(table_len));
    let (l, m, root) = if joliet {
        (layout.path_tables[2], layout.path_tables[3], layout.joliet_root)
    } else {
        (layout.path_tables[0], layout.path_tables[1], layout.root)
    };
    vd[140..144].copy_from_slice(&l.to_le_bytes());
    vd[148..152].copy_from_slice(&m.to_be_bytes());
    let root_record = directory_record(&[0], root, SECTOR as u32, true, &[]);
    vd[156..190].copy_from_slice(&root_record);
    for (start, end) in [(190, 318), (318, 446), (446, 574), (574, 702), (702, 739), (739, 776), (776, 813)] {
        text(&mut vd[start..end], "");
    }
    text(&mut vd[574..702], "KVMLET");
    for start in [813, 830, 864] {
        vd[start..start + 17].copy_from_slice(VOLUME_TIME);
    }
    vd[847..863].copy_from_slice(b"0000000000000000");
    vd[881] = 1;
    vd
}

fn check_inputs(label: &str, files: &[File]) -> Result<(), IsoError> {
    let label_ok =
        (1..=16).contains(&label.len()) && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !label_ok {
        return Err(IsoError::BadLabel(label.to_string()));
    }
    let mut level1: Vec<String> = Vec::new();
    for file in files {
        let ok = (1..=64).contains(&file.name.len())
            && file.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(IsoError::BadName(file.name.to_string()));
        }
        if file.data.len() > MAX_FILE {
            return Err(IsoError::TooLarge { name: file.name.to_string(), size: file.data.len(), max: MAX_FILE });
        }
        let name = level1_name(file.name);
        if level1.contains(&name) {
            return Err(IsoError::DuplicateName(name));
        }
        level1.push(name);
    }
    Ok(())
}

/// Builds the image. Files are listed sorted by name, as ISO 9660 requires.
pub fn build(label: &str, files: &[File]) -> Result<Vec<u8>, IsoError> {
    check_inputs(label, files)?;
    let mut files: Vec<&File> = files.iter().collect();
    files.sort_by(|a, b| a.name.cmp(b.name));

    // Descriptors (PVD, Joliet SVD, terminator), four path tables, two root directories, files.
    let first_table = (FIRST_DESCRIPTOR + 3) as u32;
    let path_tables = [first_table, first_table + 1, first_table + 2, first_table + 3];
    let (root, joliet_root) = (first_table + 4, first_table + 5);
    let mut next = joliet_root + 1;
    let mut extents = Vec::new();
    for file in &files {
        extents.push(next);
        next += sectors(file.data.len()).max(1);
    }
    let layout = Layout { root, joliet_root, path_tables, files: extents, total: next };

    let mut image = vec![0u8; layout.total as usize * SECTOR];
    let mut put = |sector: u32, bytes: &[u8]| {
        let at = sector as usize * SECTOR;
        image[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(FIRST_DESCRIPTOR as u32, &volume_descriptor(1, label, &layout, false));
    put(FIRST_DESCRIPTOR as u32 + 1, &volume_descriptor(2, label, &layout, true));
    let mut terminator = vec![255u8];
    terminator.extend(b"CD001\x01");
    put(FIRST_DESCRIPTOR as u32 + 2, &terminator);
    put(path_tables[0], &path_table(root, false));
    put(path_tables[1], &path_table(root, true));
    put(path_tables[2], &path_table(joliet_root, false));
    put(path_tables[3], &path_table(joliet_root, true));

    let dir_px = rr_px(DIR_MODE, 2);
    let mut primary =
        directory_record(&[0], root, SECTOR as u32, true, &[susp_root_entries(), dir_px.clone()].concat());
    primary.extend(directory_record(&[1], root, SECTOR as u32, true, &dir_px));
    let mut joliet = directory_record(&[0], joliet_root, SECTOR as u32, true, &[]);
    joliet.extend(directory_record(&[1], joliet_root, SECTOR as u32, true, &[]));
    for (file, extent) in files.iter().zip(&layout.files) {
        let size = file.data.len() as u32;
        let rock_ridge = [rr_px(FILE_MODE, 1), rr_nm(file.name)].concat();
        primary.extend(directory_record(level1_name(file.name).as_bytes(), *extent, size, false, &rock_ridge));
        joliet.extend(directory_record(&ucs2(&format!("{};1", file.name)), *extent, size, false, &[]));
        put(*extent, file.data);
    }
    // Three files with 64-character names fit easily; more files than a sector
    // holds would overwrite the next extent, so refuse them.
    if let Some(len) = [primary.len(), joliet.len()].into_iter().find(|len| *len > SECTOR) {
        return Err(IsoError::DirectoryFull(len));
    }
    put(root, &primary);
    put(joliet_root, &joliet);
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_level1_rules() {
        assert_eq!(level1_name("user-data"), "USER_DAT.;1");
        assert_eq!(level1_name("meta-data"), "META_DAT.;1");
        assert_eq!(level1_name("network-config"), "NETWORK_.;1");
        assert_eq!(level1_name("a.json"), "A.JSO;1");
    }

    #[test]
    fn descriptors_and_file_data_are_where_they_say() {
        let image = build("cidata", &[File { name: "user-data", data: b"#cloud-config\n" }]).unwrap();
        assert_eq!(image.len() % SECTOR, 0);
        let pvd = &image[16 * SECTOR..17 * SECTOR];
        assert_eq!(&pvd[1..6], b"CD001");
        assert_eq!(&pvd[40..46], b"cidata");
        let total = u32::from_le_bytes(pvd[80..84].try_into().unwrap()) as usize;
        assert_eq!(total * SECTOR, image.len());
        assert_eq!(image[17 * SECTOR], 2, "Joliet supplementary descriptor");
        assert_eq!(&image[17 * SECTOR + 88..17 * SECTOR + 91], b"%/E");
        assert_eq!(image[18 * SECTOR], 255, "terminator");
        let data_at = (total - 1) * SECTOR;
        assert_eq!(&image[data_at..data_at + 14], b"#cloud-config\n");
    }

    #[test]
    fn output_is_deterministic() {
        let files = [File { name: "meta-data", data: b"{}" }, File { name: "user-data", data: b"x" }];
        assert_eq!(build("cidata", &files).unwrap(), build("cidata", &files).unwrap());
    }

    #[test]
    fn bad_inputs_are_rejected() {
        assert_eq!(build("", &[]), Err(IsoError::BadLabel(String::new())));
        assert!(matches!(build("cidata", &[File { name: "a/b", data: b"" }]), Err(IsoError::BadName(_))));
        let twins = [File { name: "user-data-1", data: b"" }, File { name: "user-data-2", data: b"" }];
        assert_eq!(build("cidata", &twins), Err(IsoError::DuplicateName("USER_DAT.;1".into())));
        let too_big = vec![0u8; MAX_FILE + 1];
        assert!(matches!(
            build("cidata", &[File { name: "user-data", data: &too_big }]),
            Err(IsoError::TooLarge { size, .. }) if size == MAX_FILE + 1
        ));
    }

    #[test]
    fn a_root_directory_beyond_one_sector_is_refused() {
        let names: Vec<String> = (0..40).map(|i| format!("{i:02}{}", "x".repeat(60))).collect();
        let files: Vec<File> = names.iter().map(|name| File { name, data: b"" }).collect();
        assert!(matches!(build("cidata", &files), Err(IsoError::DirectoryFull(len)) if len > SECTOR));
    }

    #[test]
    fn every_directory_record_fits_its_length_byte() {
        let long = "a".repeat(64);
        let image = build("cidata", &[File { name: &long, data: b"" }]).unwrap();
        assert!(!image.is_empty());
        assert!(directory_record(&[0], 0, 0, true, &[susp_root_entries(), rr_px(DIR_MODE, 2)].concat()).len() < 256);
    }
}
