//! The VM flags shared by `kvmlet run` and `kvmlet firmware-dump`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use uuid::Uuid;
use vmm::{DiskConfig, MacAddr, NetConfig, TapSource, VmConfig};

use crate::node::boot_disk;
use crate::vmi::cloud_init;
use crate::vmi::network::{masquerade_lease, DhcpOptions, ResolvConf};

#[derive(Debug, Clone, Args)]
pub struct VmArgs {
    /// Kernel image: a bzImage, or an ELF with a PVH note.
    #[arg(long, value_name = "PATH", required_unless_present = "boot_from_disk")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH", conflicts_with = "boot_from_disk")]
    pub initrd: Option<PathBuf>,
    /// Boot the first --disk's own kernel, initrd and command line, as its
    /// boot loader would (BLS entries, grub.cfg, extlinux.conf, /vmlinuz),
    /// instead of --kernel; --cmdline is appended to the disk's command line.
    #[arg(long, conflicts_with = "kernel", requires = "disks")]
    pub boot_from_disk: bool,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// Number of vCPUs (1..=32).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    pub memory: u64,
    /// Firmware (SMBIOS) system UUID.
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<Uuid>,
    /// Firmware (SMBIOS) system serial number.
    #[arg(long, value_name = "STR")]
    pub serial: Option<String>,
    /// A disk image as virtio-blk, in order (/dev/vda first): raw or qcow2,
    /// told by its first bytes. A qcow2 image that names a backing file gets
    /// the one given by `backing=` (repeat it for a chain, nearest first);
    /// kvmlet never opens a backing file named only inside an image. Repeatable.
    #[arg(long = "disk", value_name = "PATH[,readonly][,serial=S][,backing=PATH...]", value_parser = parse_disk)]
    pub disks: Vec<DiskConfig>,
    /// Build a cloud-init NoCloud seed with this user data and attach it after the other disks.
    #[arg(long, value_name = "FILE")]
    pub cloud_init_user_data: Option<PathBuf>,
    /// A virtio-net NIC on an existing tap (after the disks), with DHCP answered
    /// inside the VMM with KubeVirt's masquerade lease (10.0.2.2/24, router
    /// 10.0.2.1, DNS and search domains from the node's resolv.conf, a
    /// systemd-resolved stub replaced by its upstreams). Repeatable.
    #[arg(long = "net", value_name = "tap=NAME[,mac=M][,mtu=N][,hostname=H]", value_parser = parse_net)]
    pub nets: Vec<NetArg>,
    /// Network configuration for the seed (needs --cloud-init-user-data).
    #[arg(long, value_name = "FILE", requires = "cloud_init_user_data")]
    pub cloud_init_network_data: Option<PathBuf>,
}

/// One `--net`, before the lease (which reads the host's resolv.conf) exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetArg {
    pub tap: String,
    pub mac: Option<MacAddr>,
    pub mtu: u16,
    pub hostname: Option<String>,
}

/// Parses `tap=NAME[,mac=M][,mtu=N][,hostname=H]`.
fn parse_net(spec: &str) -> Result<NetArg, String> {
    let mut net = NetArg { tap: String::new(), mac: None, mtu: vmm::net_config::DEFAULT_MTU, hostname: None };
    for option in spec.split(',') {
        match option.split_once('=') {
            Some(("tap", name)) if !name.is_empty() => net.tap = name.to_string(),
            Some(("mac", mac)) => net.mac = Some(mac.parse().map_err(|e| format!("{e}"))?),
            Some(("mtu", mtu)) => net.mtu = mtu.parse().map_err(|_| format!("mtu `{mtu}` is not a number"))?,
            Some(("hostname", name)) => net.hostname = Some(name.to_string()),
            _ => return Err(format!("unknown net option `{option}` (expected tap=NAME, mac=M, mtu=N or hostname=H)")),
        }
    }
    if net.tap.is_empty() {
        return Err("a NIC needs tap=NAME".into());
    }
    Ok(net)
}

/// A random locally administered unicast MAC (02:xx:xx:xx:xx:xx).
fn random_mac() -> MacAddr {
    let bytes = Uuid::new_v4().into_bytes();
    MacAddr([0x02, bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]])
}

/// A VM config and the seed image and boot disk's kernel it refers to,
/// which live as long as this does.
pub struct PreparedVm {
    pub config: VmConfig,
    _seed: Option<tempfile::NamedTempFile>,
    _boot: Option<tempfile::TempDir>,
}

impl PreparedVm {
    /// The config, once its files are open: the seed's temporary file is removed.
    pub fn into_config(self) -> VmConfig {
        self.config
    }
}

/// Parses `PATH[,readonly][,serial=S][,backing=PATH...]`, the way
/// cloud-hypervisor's `--disk` reads.
fn parse_disk(spec: &str) -> Result<DiskConfig, String> {
    let mut parts = spec.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or("a disk needs a path")?;
    let mut disk = DiskConfig::new(path);
    for option in parts {
        match option.split_once('=') {
            None if option == "readonly" => disk.readonly = true,
            Some(("serial", serial)) => disk.serial = Some(serial.to_string()),
            Some(("backing", backing)) if !backing.is_empty() => disk.backing.push(backing.into()),
            _ => {
                return Err(format!(
                    "unknown disk option `{option}` (expected `readonly`, `serial=S` or `backing=PATH`)"
                ))
            }
        }
    }
    Ok(disk)
}

impl VmArgs {
    /// The VmConfig these flags describe; with cloud-init flags, the seed image
    /// is built into a temporary file that is removed when the result drops.
    /// The seed follows KubeVirt's rules (`vmi::cloud_init`): its instance-id
    /// is the firmware UUID (a new one when none is given), its disk has serial `cidata`.
    /// With `--boot-from-disk` the disk's kernel and initrd are copied into
    /// a private temporary directory, removed likewise.
    pub fn prepare(&self) -> anyhow::Result<PreparedVm> {
        let (kernel, initrd, cmdline, boot) = if self.boot_from_disk {
            let disk = self.disks.first().context("--boot-from-disk needs a --disk")?;
            let dir = tempfile::Builder::new().prefix("kvmlet-boot-").tempdir()?;
            let name = disk.path.display().to_string();
            let booted = boot_disk::extract(disk, &name, dir.path())
                .map_err(|e| anyhow::anyhow!("--boot-from-disk: {}", crate::errors::with_causes(&e)))?;
            tracing::info!("booting {}", booted.reason);
            let cmdline = format!("{} {}", booted.cmdline, self.cmdline).trim_end().to_string();
            (booted.kernel, booted.initrd, cmdline, Some(dir))
        } else {
            let kernel = self.kernel.clone().context("--kernel (or --boot-from-disk) is required")?;
            (kernel, self.initrd.clone(), self.cmdline.clone(), None)
        };
        let mut config = VmConfig {
            vcpus: self.vcpus,
            memory_mib: self.memory,
            initrd,
            cmdline,
            uuid: self.uuid,
            serial: self.serial.clone(),
            disks: self.disks.clone(),
            ..VmConfig::new(kernel)
        };
        if !self.nets.is_empty() {
            let resolv = ResolvConf::of_node();
            config.nets = self
                .nets
                .iter()
                .map(|net| NetConfig {
                    tap: TapSource::Name(net.tap.clone()),
                    mac: net.mac.unwrap_or_else(random_mac),
                    mtu: net.mtu,
                    dhcp: Some(masquerade_lease(net.hostname.clone(), &resolv, &DhcpOptions::default())),
                })
                .collect();
        }
        let Some(user_data_path) = &self.cloud_init_user_data else {
            return Ok(PreparedVm { config, _seed: None, _boot: boot });
        };
        let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("read {}", path.display()));
        let user_data = read(user_data_path)?;
        let network = self.cloud_init_network_data.as_ref().map(read).transpose()?;
        let uuid = *config.uuid.get_or_insert_with(Uuid::new_v4);
        let seed = cloud_init::seed(&cloud_init::instance_id(&uuid), None, user_data, network);
        let file = tempfile::Builder::new().prefix("kvmlet-seed-").suffix(".iso").tempfile()?;
        seed.write_image(file.path())?;
        config.disks.push(DiskConfig {
            readonly: true,
            serial: Some(cloud_init::SEED_SERIAL.into()),
            ..DiskConfig::new(file.path())
        });
        Ok(PreparedVm { config, _seed: Some(file), _boot: boot })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs_parse_in_any_option_order() {
        let disk = parse_disk("/img/a.raw,serial=data-1,readonly").unwrap();
        assert_eq!(disk, DiskConfig { readonly: true, serial: Some("data-1".into()), ..DiskConfig::new("/img/a.raw") });
        assert_eq!(parse_disk("b.raw").unwrap(), DiskConfig::new("b.raw"));
        let chain = parse_disk("top.qcow2,backing=mid.qcow2,serial=s,backing=/base.raw").unwrap();
        assert_eq!(chain.backing, [PathBuf::from("mid.qcow2"), PathBuf::from("/base.raw")]);
        assert!(parse_disk("top.qcow2,backing=").unwrap_err().contains("unknown disk option `backing=`"));
    }

    #[test]
    fn net_specs_parse_with_defaults() {
        let net = parse_net("tap=tap0").unwrap();
        assert_eq!(net, NetArg { tap: "tap0".into(), mac: None, mtu: 1500, hostname: None });
        let net = parse_net("mac=02:00:00:00:00:07,tap=t1,mtu=9000,hostname=vm1").unwrap();
        assert_eq!(net.mac, Some(MacAddr([2, 0, 0, 0, 0, 7])));
        assert_eq!((net.tap.as_str(), net.mtu, net.hostname.as_deref()), ("t1", 9000, Some("vm1")));
        assert_eq!(parse_net("mac=02:00:00:00:00:07").unwrap_err(), "a NIC needs tap=NAME");
        assert!(parse_net("tap=t,queues=2").unwrap_err().contains("`queues=2`"));
        assert!(parse_net("tap=t,mac=zz").unwrap_err().contains("`zz` is not a MAC address"));
        assert!(random_mac().0[0] == 0x02);
    }

    #[test]
    fn boot_from_disk_replaces_kernel_and_needs_a_disk() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            vm: VmArgs,
        }
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("kvmlet").chain(args.iter().copied()));
        assert!(parse(&["--disk", "d.img", "--boot-from-disk"]).is_ok());
        let error = |args: &[&str]| parse(args).err().expect("refused").to_string();
        assert!(error(&["--kernel", "k", "--disk", "d.img", "--boot-from-disk"]).contains("cannot be used with"));
        assert!(error(&["--boot-from-disk"]).contains("--disk"));
        assert!(error(&["--disk", "d.img"]).contains("--kernel"));
        assert!(error(&["--disk", "d.img", "--boot-from-disk", "--initrd", "i"]).contains("cannot be used with"));
    }

    #[test]
    fn bad_disk_specs_say_what_is_wrong() {
        assert_eq!(parse_disk(",readonly").unwrap_err(), "a disk needs a path");
        assert!(parse_disk("a.raw,cache=none").unwrap_err().contains("unknown disk option `cache=none`"));
        assert!(parse_disk("a.raw,ro").unwrap_err().contains("`ro`"));
    }
}
