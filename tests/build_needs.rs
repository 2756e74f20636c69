//! The default build links no C library beyond libc: libseccomp is loaded at run time, so
//! building needs only cargo and the binary starts on a node without libseccomp.

const PLUGIN: &str = env!("CARGO_BIN_EXE_nri-lifecycle");

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The `DT_NEEDED` entries of a little-endian ELF64 file (the libraries the dynamic loader
/// must find before `main`).
fn needed(elf: &[u8]) -> Vec<String> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    assert_eq!(elf[5], 1, "not little-endian");
    let (phoff, phentsize, phnum) = (
        u64_at(elf, 0x20) as usize,
        u16_at(elf, 0x36),
        u16_at(elf, 0x38),
    );
    // (type, offset, vaddr, filesz) of every program header
    let headers: Vec<(u32, u64, u64, u64)> = (0..phnum)
        .map(|i| {
            let h = phoff + i * phentsize;
            (
                u32::from_le_bytes(elf[h..h + 4].try_into().unwrap()),
                u64_at(elf, h + 8),
                u64_at(elf, h + 16),
                u64_at(elf, h + 32),
            )
        })
        .collect();
    let Some(&(_, dyn_off, _, dyn_size)) = headers.iter().find(|h| h.0 == 2) else {
        return Vec::new(); // statically linked: needs nothing
    };
    let mut entries = Vec::new();
    for i in 0..(dyn_size / 16) as usize {
        let at = dyn_off as usize + i * 16;
        let (tag, val) = (u64_at(elf, at), u64_at(elf, at + 8));
        if tag == 0 {
            break;
        }
        entries.push((tag, val));
    }
    let strtab = entries.iter().find(|e| e.0 == 5).expect("DT_STRTAB").1;
    let (_, off, vaddr, _) = headers
        .iter()
        .find(|h| h.0 == 1 && h.2 <= strtab && strtab < h.2 + h.3)
        .expect("a PT_LOAD holding the string table");
    let strtab = (strtab - vaddr + off) as usize;
    entries
        .iter()
        .filter(|e| e.0 == 1)
        .map(|e| {
            let start = strtab + e.1 as usize;
            let end = start + elf[start..].iter().position(|b| *b == 0).unwrap();
            String::from_utf8_lossy(&elf[start..end]).into_owned()
        })
        .collect()
}

#[test]
fn the_plugin_binary_needs_no_libseccomp() {
    let elf = std::fs::read(PLUGIN).unwrap();
    let libs = needed(&elf);
    // the parser reads what is there...
    assert!(libs.iter().any(|l| l.starts_with("libc.so")), "{libs:?}");
    // ...and libseccomp is not: it is loaded when a profile is first compiled
    assert!(!libs.iter().any(|l| l.contains("seccomp")), "{libs:?}");
}

#[test]
fn the_parser_sees_libseccomp_where_it_is_linked() {
    // Debian's runc links libseccomp: the positive control of the check above.
    let runc = "/usr/sbin/runc";
    let libs = needed(&std::fs::read(runc).expect("runc (installed by the harness set-up)"));
    assert!(libs.iter().any(|l| l == "libseccomp.so.2"), "{libs:?}");
}
