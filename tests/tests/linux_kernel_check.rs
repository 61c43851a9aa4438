//! Linux checks kvmlet's hardware. The probe guest checks what we wrote it to
//! check; a real kernel checks what a real guest needs. Stock Linux cannot run
//! here (guest ring-0 code is emulated, see linux_guest.rs), but a minimal 6.12
//! kernel built from Debian's source by `tests/linux/build-kernel` runs far
//! enough: everything a kernel does before user space (parse ACPI, read DMI,
//! count CPUs, take the e820 map, find virtio-mmio devices in the DSDT, size
//! disks, mount its root file system) happens before `Run /sbin/init`.
//!
//! One boot covers all of it, `ip=dhcp` included: kernel IP autoconfiguration
//! over kvmlet's virtio-net asks kvmlet's DHCP responder for KubeVirt's
//! masquerade lease (the tap lives in a network namespace of the test's own).
//! The kernel log is printed as it comes (see it with `--nocapture`). The run
//! ends when the kernel panics for want of an init on the cidata root (the test
//! kills `kvmlet run` then): user space would die at its first SYSCALL on this
//! host anyway.
//!
//! What it found so far: AMD's HWCR.TscFreqSel was clear (fixed in vmm/src/vcpu.rs);
//! CPUID leaks AMD's CPPC bit (`amd_pstate: The CPPC feature is supported but
//! currently disabled by the BIOS`); a kernel without CONFIG_PCI cannot load
//! kvmlet's DSDT (`ACPI Error: AE_BAD_PARAMETER, During Region initialization`),
//! hence CONFIG_PCI in tests/linux/kernel.config although kvmlet has no PCI bus.
//! With two online CPUs the second one stops running after boot (RCU stalls):
//! the PV send-IPI hypercall from emulated ring 0; hence `maxcpus=1`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::linux::{linux_kernel, ring0_sse_image, run_until_console, WatchedRun};
use e2e::{kvm_available, kvmlet_bin};

const UUID: &str = "0b6c9a1e-3f2d-4c5b-8a7e-6d5c4b3a2f10";
const SERIAL: &str = "kvmlet-kernel-check";
const MEMORY_MIB: u64 = 128;
const VCPUS: u32 = 2;
/// The data disk: 64 MiB, as 512-byte sectors.
const DATA_DISK_SECTORS: u64 = 131_072;
const DATA_DISK_SERIAL: &str = "kvmlet-data0";
/// The NIC's MAC, as the kernel prints it.
const MAC: &str = "02:6b:76:6d:6c:01";
/// The hostname the DHCP lease carries.
const HOSTNAME: &str = "kernel-check";

/// CPU features this host forces on in CPUID leaves 1 and 7 whatever kvmlet
/// sets, which the kernel would then use in ring 0 where KVM's emulator lacks
/// them.
const CLEARCPUID: &str = "xsave,cx16,popcnt,rdrand,rdseed,smap,fsgsbase,rdtscp,movbe,bmi1,bmi2,adx,clflushopt,clwb,\
                          sha_ni,avx,avx2,fma,f16c,aes,pclmulqdq,sse4_1,sse4_2,ssse3,pni,rdpid";

/// The kernel's ending: no init on the cidata root (`panic=-1` would reboot,
/// which `kvmlet run` reports as status 3; the test kills it first).
const END_OF_BOOT: &str = "Kernel panic - not syncing";

/// Upper bound for one boot, so a hung guest cannot hang the suite (the kernel
/// reaches its init after 1 to 3 minutes of emulated ring 0 on the CI machine,
/// depending on its load).
const BOOT_BOUND: Duration = Duration::from_secs(540);

fn boot_linux(dir: &Path) -> WatchedRun {
    let data = dir.join("data.img");
    std::fs::File::create(&data).unwrap().set_len(DATA_DISK_SECTORS * 512).unwrap();
    let user_data = dir.join("user-data");
    std::fs::write(&user_data, "#cloud-config\nhostname: kernel-check\n").unwrap();
    // maxcpus=1: the second vCPU is listed in the MADT (and counted) but not
    // started. With two online CPUs the kernel uses KVM's PV send-IPI and
    // sched-yield hypercalls, and `vmcall` from emulated ring 0 never completes.
    let cmdline =
        format!("console=ttyS0 root=/dev/vdb rootfstype=iso9660 ro maxcpus=1 panic=-1 ip=dhcp clearcpuid={CLEARCPUID}");
    // The NIC's tap, in a network namespace of this test's own: the lease's
    // private addresses never reach the host's.
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--", "sh", "-c"])
        .arg(r#"ip tuntap add dev tap0 mode tap vnet_hdr && ip link set tap0 up && exec "$@""#)
        .arg("sh")
        .arg(kvmlet_bin())
        .arg("run")
        .args(["--net", &format!("tap=tap0,mac={MAC},hostname={HOSTNAME}")])
        .arg("--kernel")
        .arg(linux_kernel())
        .args(["--cmdline", &cmdline])
        .args(["--vcpus", &VCPUS.to_string(), "--memory", &MEMORY_MIB.to_string()])
        .args(["--uuid", UUID, "--serial", SERIAL])
        .arg("--disk")
        .arg(format!("{},serial={DATA_DISK_SERIAL}", data.display()))
        .arg("--cloud-init-user-data")
        .arg(&user_data);
    run_until_console(&mut cmd, &[END_OF_BOOT], BOOT_BOUND)
}

/// Lines of the kernel log without their `[    0.123456] ` timestamps.
fn kernel_lines(console: &str) -> Vec<&str> {
    console
        .lines()
        .map(|line| match line.strip_prefix('[').and_then(|rest| rest.split_once("] ")) {
            Some((stamp, text)) if stamp.trim().parse::<f64>().is_ok() => text,
            _ => line,
        })
        .collect()
}

fn has_line(lines: &[&str], what: &str, wanted: impl Fn(&str) -> bool) -> Result<(), String> {
    if lines.iter().any(|line| wanted(line)) {
        Ok(())
    } else {
        Err(format!("missing: {what}"))
    }
}

/// Every check of one boot, each naming what it proves; all failures are
/// reported together.
fn check_kernel_log(lines: &[&str]) -> Vec<String> {
    let mut failures = Vec::new();
    let mut check = |result: Result<(), String>| {
        if let Err(why) = result {
            failures.push(why);
        }
    };

    check(has_line(lines, "the kernel banner (the PVH entry point works)", |l| l.starts_with("Linux version 6.12")));

    // ACPI: every table Linux lists is kvmlet's, and none of them upsets it.
    for table in ["RSDP", "XSDT", "FACP", "DSDT", "APIC"] {
        check(has_line(lines, &format!("ACPI table {table} listed with OEM id KVMLET"), |l| {
            l.starts_with(&format!("ACPI: {table} 0x")) && l.contains("KVMLET")
        }));
    }
    // A table line: `ACPI: SIGN 0x<address> ...`, SIGN four capitals or digits.
    let is_table_line = |l: &&&str| {
        l.strip_prefix("ACPI: ").and_then(|rest| rest.get(..7)).is_some_and(|head| {
            head[..4].bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) && &head[4..] == " 0x"
        })
    };
    for line in lines.iter().filter(is_table_line) {
        if !line.contains("KVMLET") {
            check(Err(format!("an ACPI table that is not kvmlet's: {line}")));
        }
    }
    for bad in ["[Firmware Bug]", "ACPI Error", "ACPI BIOS Error", "ACPI BIOS Warning"] {
        for line in lines.iter().filter(|l| l.contains(bad)) {
            check(Err(format!("the firmware upset Linux ({bad}): {line}")));
        }
    }
    check(has_line(lines, "the ACPI interpreter enabled (FADT and DSDT loaded)", |l| {
        l.starts_with("ACPI: Interpreter enabled")
    }));

    // SMBIOS: Linux's DMI scan reads kvmlet's manufacturer and product.
    check(has_line(lines, "`DMI: kvmlet kvmlet` (SMBIOS type 1 manufacturer and product)", |l| {
        l.starts_with("DMI: kvmlet kvmlet")
    }));

    // CPUs: the MADT lists one local APIC per vCPU; CPUID says KVM.
    check(has_line(lines, "SMP configuration from the MADT", |l| {
        l.contains("Using ACPI (MADT) for SMP configuration information")
    }));
    check(has_line(lines, &format!("the MADT's {VCPUS} CPUs (`Allowing {VCPUS} present CPUs`)"), |l| {
        l == format!("CPU topo: Allowing {VCPUS} present CPUs plus 0 hotplug CPUs")
    }));
    check(has_line(lines, "the KVM hypervisor signature in CPUID", |l| l.contains("Hypervisor detected: KVM")));

    // Memory: the e820 map as kvmlet lays it out for this memory size.
    let ram_end = MEMORY_MIB * 1024 * 1024 - 1;
    for (range, kind) in [
        ("0x0000000000000000-0x000000000009fbff".to_string(), "usable"),
        ("0x000000000009fc00-0x00000000000fffff".to_string(), "reserved"),
        (format!("0x0000000000100000-{ram_end:#018x}"), "usable"),
    ] {
        let wanted = format!("BIOS-e820: [mem {range}] {kind}");
        check(has_line(lines, &format!("e820 entry `{wanted}`"), |l| l == wanted));
    }
    let e820_entries = lines.iter().filter(|l| l.starts_with("BIOS-e820: ")).count();
    if e820_entries != 3 {
        check(Err(format!("e820: {e820_entries} entries where kvmlet writes 3")));
    }

    // Disks: both virtio-mmio devices found through the DSDT (`LNRO0005`; x86
    // has no other way to learn of them), sized, and their serials read with
    // virtio-blk's GET_ID (logged by tests/linux/kernel.patch).
    check(has_line(lines, &format!("virtio-blk sized the data disk ({DATA_DISK_SECTORS} sectors)"), |l| {
        l.starts_with(&format!("virtio_blk virtio0: [vda] {DATA_DISK_SECTORS} 512-byte logical blocks"))
    }));
    check(has_line(lines, "virtio-blk sized the cidata disk", |l| {
        l.starts_with("virtio_blk virtio1: [vdb] ") && l.contains(" 512-byte logical blocks")
    }));
    check(has_line(lines, &format!("the data disk found as LNRO0005:00 with serial {DATA_DISK_SERIAL}"), |l| {
        l == format!("virtio_blk virtio0: [vda] on LNRO0005:00 serial '{DATA_DISK_SERIAL}' (get-id status 0)")
    }));
    check(has_line(lines, "the cidata disk found as LNRO0005:01 with serial cidata", |l| {
        l == "virtio_blk virtio1: [vdb] on LNRO0005:01 serial 'cidata' (get-id status 0)"
    }));

    // Network: virtio-net (the third virtio-mmio device) and `ip=dhcp` kernel
    // autoconfiguration with KubeVirt's masquerade lease from kvmlet's DHCP.
    check(has_line(lines, "DHCP through virtio-net completed (`IP-Config: Complete:`)", |l| {
        l.starts_with("IP-Config: Complete:")
    }));
    let lease = format!("device=eth0, hwaddr={MAC}, ipaddr=10.0.2.2, mask=255.255.255.0, gw=10.0.2.1");
    check(has_line(lines, &format!("KubeVirt's masquerade lease on the NIC: `{lease}`"), |l| l.trim() == lease));
    check(has_line(lines, &format!("the lease's hostname `{HOSTNAME}`"), |l| {
        l.trim().starts_with(&format!("host={HOSTNAME}, "))
    }));
    check(has_line(lines, "the answer from the router 10.0.2.1 (the DHCP server identifier)", |l| {
        l.starts_with("IP-Config: Got DHCP answer from 10.0.2.1, my address is 10.0.2.2")
    }));
    check(has_line(lines, "the lease's MTU (1500)", |l| {
        l.trim().starts_with("bootserver=") && l.ends_with(", mtu=1500")
    }));

    // The root file system: the cidata seed (ISO 9660) read through virtio-blk.
    check(has_line(lines, "the cidata disk mounted as root (`VFS: Mounted root (iso9660 filesystem)`)", |l| {
        l.starts_with("VFS: Mounted root (iso9660 filesystem) readonly")
    }));
    check(has_line(lines, "the kernel reached user space (`Run /sbin/init as init process`)", |l| {
        l.starts_with("Run /") && l.ends_with(" as init process")
    }));
    failures
}

#[test]
fn linux_finds_kvmlets_firmware_cpus_memory_and_disks_and_mounts_the_cidata_root() {
    if !kvm_available() {
        eprintln!("SKIPPED: /dev/kvm is not available");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = boot_linux(dir.path());
    let lines = kernel_lines(&run.console);
    let failures = check_kernel_log(&lines);
    assert!(
        failures.is_empty(),
        "the kernel log does not show what kvmlet's hardware should give Linux:\n  {}\n\
         kvmlet run: {}, stopped at: {:?}\nkvmlet's standard error:\n{}",
        failures.join("\n  "),
        run.status.map_or("killed by the test".into(), |s| s.to_string()),
        run.stopped_at,
        run.stderr
    );
    assert!(
        run.stopped_at.as_deref().is_some_and(|l| l.contains("No working init found")),
        "the boot ended otherwise than for want of an init on the cidata root: {:?}",
        run.stopped_at
    );
}

#[test]
fn kvmlet_run_names_the_instruction_kvm_could_not_emulate() {
    if !kvm_available() {
        eprintln!("SKIPPED: /dev/kvm is not available");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("sse.bzImage");
    std::fs::write(&image, ring0_sse_image()).unwrap();
    let output = Command::new(kvmlet_bin()).arg("run").arg("--kernel").arg(&image).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        eprintln!("SKIPPED: this host's KVM runs ring-0 SSE code, so there is no emulation failure to report");
        return;
    }
    assert_eq!(output.status.code(), Some(5), "a VMM error while the guest ran: {stderr}");
    assert!(stderr.contains("KVM could not emulate an instruction (internal error 1)"), "{stderr}");
    // The guest's ring-0 entry point: code32_start (1 MiB) + 0x200 + 11 bytes of CR4 setup.
    assert!(stderr.contains("at rip 0x10020b (guest-physical 0x10020b), cs 0x8, cpl 0"), "{stderr}");
    // xorps xmm0, xmm0 (0f 57 c0), then the power-off that was never reached.
    assert!(stderr.contains("bytes at rip: 0f 57 c0 66 ba 00 06"), "{stderr}");
}

#[test]
fn kernel_log_timestamps_are_stripped_for_matching() {
    let lines = kernel_lines("[    0.000000] Linux version 6.12\n[   12.5] DMI: kvmlet kvmlet\nno stamp\n[x] y\n");
    assert_eq!(lines, ["Linux version 6.12", "DMI: kvmlet kvmlet", "no stamp", "[x] y"]);
}

#[test]
fn kernel_log_checks_catch_foreign_tables_firmware_bugs_and_missing_disks() {
    let log = "ACPI: XSDT 0x0000000000009FC0 00003C (v01 KVMLET KVMLETXS 00000001 KVML 00000001)\n\
               ACPI: SSDT 0x0000000000009A00 000040 (v02 BOCHS  BXPC     00000001 BXPC 00000001)\n\
               ACPI: Early table checksum verification disabled\n\
               [Firmware Bug]: TSC doesn't count with P0 frequency!\n";
    let failures = check_kernel_log(&kernel_lines(log));
    let has = |text: &str| failures.iter().any(|f| f.contains(text));
    assert!(has("an ACPI table that is not kvmlet's: ACPI: SSDT"), "{failures:#?}");
    assert!(!has("ACPI table XSDT"), "the XSDT line is kvmlet's: {failures:#?}");
    assert!(!has("Early table"), "not a table line: {failures:#?}");
    assert!(has("the firmware upset Linux ([Firmware Bug])"), "{failures:#?}");
    assert!(has("the data disk found as LNRO0005:00"), "{failures:#?}");
    assert!(has("the cidata disk mounted as root"), "{failures:#?}");
    assert!(has("DHCP through virtio-net completed"), "{failures:#?}");

    // The lease as Linux prints it passes; another address does not.
    let lease = "[    9.090000] IP-Config: Got DHCP answer from 10.0.2.1, my address is 10.0.2.2\n\
                 [    9.100000] IP-Config: Complete:\n\
                 [    9.100001]      device=eth0, hwaddr=02:6b:76:6d:6c:01, ipaddr=10.0.2.2, mask=255.255.255.0, gw=10.0.2.1\n\
                 [    9.100002]      host=kernel-check, domain=, nis-domain=(none)\n\
                 [    9.100003]      bootserver=0.0.0.0, rootserver=0.0.0.0, rootpath=, mtu=1500\n";
    let failures = check_kernel_log(&kernel_lines(lease));
    let has = |text: &str| failures.iter().any(|f| f.contains(text));
    for passed in ["DHCP through virtio-net", "masquerade lease", "hostname", "the router 10.0.2.1", "MTU"] {
        assert!(!has(passed), "{passed}: {failures:#?}");
    }
    let failures = check_kernel_log(&kernel_lines(&lease.replace("ipaddr=10.0.2.2", "ipaddr=10.0.2.15")));
    assert!(failures.iter().any(|f| f.contains("masquerade lease")), "{failures:#?}");
}
