//! What the probe does with its NIC: DHCP (smoltcp's client; hostname, MTU
//! and search domains parsed from the raw ACK), an ARP request for the
//! router, a UDP datagram to `probe.net_udp=IP:PORT`, and TCP connections on
//! `probe.net_tcp=PORT` (`probe.net_tcp_count=N` of them, one at a time)
//! each answered with `probe-banner <hostname>\n`.
//! Everything polls, in ring 3; every wait is bounded.

use core::fmt::Write as _;

use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::phy::Device;
use smoltcp::socket::{dhcpv4, tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address};

use crate::bootinfo::cmdline_value;
use crate::hw::{pause, rdtsc};
use crate::netdev::NetDevice;
use crate::report;

/// smoltcp wants milliseconds; the TSC's rate is not known here, so this
/// assumes about 2 GHz. Timers only need to be monotonic and roughly right.
const TICKS_PER_MS: u64 = 2_000_000;
const DHCP_TIMEOUT_MS: i64 = 30_000;
const ARP_TIMEOUT_MS: i64 = 5_000;
const UDP_TIMEOUT_MS: i64 = 10_000;
/// How long the probe waits for each TCP connection.
const TCP_TIMEOUT_MS: i64 = 120_000;
/// The most connections `probe.net_tcp_count` may ask for.
const TCP_MAX_CONNECTIONS: u32 = 64;
/// Options asked of the server: mask, router, DNS, hostname, domain, MTU, search.
static PARAMETERS: [u8; 7] = [1, 3, 6, 12, 15, 26, 119];
const OPT_HOSTNAME: u8 = 12;
const OPT_MTU: u8 = 26;
const OPT_SEARCH: u8 = 119;

static mut DHCP_PACKET: [u8; 1500] = [0; 1500];
static mut UDP_RX_META: [udp::PacketMetadata; 2] = [udp::PacketMetadata::EMPTY; 2];
static mut UDP_RX: [u8; 512] = [0; 512];
static mut UDP_TX_META: [udp::PacketMetadata; 2] = [udp::PacketMetadata::EMPTY; 2];
static mut UDP_TX: [u8; 512] = [0; 512];
static mut TCP_RX: [u8; 1024] = [0; 1024];
static mut TCP_TX: [u8; 1024] = [0; 1024];

fn now() -> Instant {
    Instant::from_millis((rdtsc() / TICKS_PER_MS) as i64)
}

/// The lease as the probe reports it.
struct Lease {
    address: IpCidr,
    router: Option<Ipv4Address>,
    dns: Text<128>,
    hostname: Text<64>,
    search: Text<256>,
    mtu: u16,
}

/// Brings up the NIC at `base` and runs what the command line asks.
pub fn probe_net(base: u64, cmdline: &str) {
    let mut dev = match NetDevice::init(base) {
        Ok(dev) => dev,
        Err(why) => {
            report!("error net base={:#x}: {}", base, why);
            return;
        }
    };
    let m = dev.mac;
    report!(
        "net mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} mtu={} link={}",
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        dev.mtu,
        if dev.link_up { "up" } else { "down" }
    );
    let mut config = Config::new(EthernetAddress(dev.mac).into());
    config.random_seed = rdtsc();
    let mut iface = Interface::new(config, &mut dev, now());
    let mut storage = [SocketStorage::EMPTY; 3];
    let mut sockets = SocketSet::new(&mut storage[..]);
    let mut dhcp = dhcpv4::Socket::new();
    // SAFETY: the statics are used by this function only, which runs once.
    dhcp.set_receive_packet_buffer(unsafe { &mut *core::ptr::addr_of_mut!(DHCP_PACKET) });
    dhcp.set_parameter_request_list(&PARAMETERS);
    let dhcp = sockets.add(dhcp);

    let Some(lease) = wait_for_lease(&mut iface, &mut dev, &mut sockets, dhcp) else {
        report!("error net dhcp: no lease");
        return;
    };
    report!(
        "net lease ip={} router={} dns={} hostname={} mtu={} search={}",
        lease.address,
        Show(lease.router),
        lease.dns.as_str(),
        lease.hostname.as_str(),
        lease.mtu,
        lease.search.as_str()
    );
    if let Some(router) = lease.router {
        arp(&mut iface, &mut dev, &mut sockets, lease.address, router);
    }
    if let Some(target) = cmdline_value(cmdline, "probe.net_udp") {
        send_udp(&mut iface, &mut dev, &mut sockets, target, lease.hostname.as_str());
    }
    if let Some(port) = cmdline_value(cmdline, "probe.net_tcp").and_then(|p| p.parse::<u16>().ok()) {
        let count = cmdline_value(cmdline, "probe.net_tcp_count").and_then(|c| c.parse::<u32>().ok()).unwrap_or(1);
        serve_tcp(&mut iface, &mut dev, &mut sockets, port, count.clamp(1, TCP_MAX_CONNECTIONS), lease.hostname.as_str());
    }
}

struct Show<T>(Option<T>);

impl<T: core::fmt::Display> core::fmt::Display for Show<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("none"),
        }
    }
}

fn elapsed_ms(start: Instant) -> i64 {
    (now() - start).total_millis() as i64
}

fn wait_for_lease(
    iface: &mut Interface,
    dev: &mut NetDevice,
    sockets: &mut SocketSet,
    handle: smoltcp::iface::SocketHandle,
) -> Option<Lease> {
    let start = now();
    while elapsed_ms(start) < DHCP_TIMEOUT_MS {
        iface.poll(now(), dev, sockets);
        let socket = sockets.get_mut::<dhcpv4::Socket>(handle);
        if let Some(dhcpv4::Event::Configured(config)) = socket.poll() {
            let mut lease = Lease {
                address: IpCidr::Ipv4(config.address),
                router: config.router,
                dns: Text::new(),
                hostname: Text::new(),
                search: Text::new(),
                mtu: 0,
            };
            for (i, server) in config.dns_servers.iter().enumerate() {
                let _ = write!(lease.dns, "{}{}", if i == 0 { "" } else { "," }, server);
            }
            if let Some(packet) = &config.packet {
                for option in packet.options() {
                    match option.kind {
                        OPT_HOSTNAME => lease.hostname.push_bytes(option.data),
                        OPT_MTU if option.data.len() == 2 => {
                            lease.mtu = u16::from_be_bytes([option.data[0], option.data[1]])
                        }
                        OPT_SEARCH => decode_search(option.data, &mut lease.search),
                        _ => {}
                    }
                }
            }
            let (address, router) = (config.address, config.router);
            iface.update_ip_addrs(|addrs| {
                addrs.clear();
                let _ = addrs.push(IpCidr::Ipv4(address));
            });
            if let Some(router) = router {
                let _ = iface.routes_mut().add_default_ipv4_route(router);
            }
            return Some(lease);
        }
        pause();
    }
    None
}

/// RFC 3397: RFC 1035 names, compression pointers into the option's own data.
fn decode_search(data: &[u8], out: &mut Text<256>) {
    let mut at = 0;
    let mut first = true;
    while at < data.len() {
        if !first {
            out.push_bytes(b",");
        }
        first = false;
        let mut pos = at;
        let mut jumped = false;
        let mut hops = 0;
        let mut label_first = true;
        loop {
            let Some(&len) = data.get(pos) else { return };
            if len == 0 {
                if !jumped {
                    at = pos + 1;
                }
                break;
            }
            if len & 0xc0 == 0xc0 {
                let Some(&low) = data.get(pos + 1) else { return };
                if !jumped {
                    at = pos + 2;
                }
                jumped = true;
                hops += 1;
                if hops > 16 {
                    return;
                }
                pos = (usize::from(len & 0x3f) << 8) | usize::from(low);
                continue;
            }
            let Some(label) = data.get(pos + 1..pos + 1 + usize::from(len)) else { return };
            if !label_first {
                out.push_bytes(b".");
            }
            label_first = false;
            out.push_bytes(label);
            pos += 1 + usize::from(len);
        }
    }
}

/// Sends an ARP request for the router and waits for its reply.
fn arp(iface: &mut Interface, dev: &mut NetDevice, sockets: &mut SocketSet, own: IpCidr, router: Ipv4Address) {
    let IpCidr::Ipv4(own) = own;
    let mut frame = [0u8; 42];
    frame[0..6].fill(0xff);
    frame[6..12].copy_from_slice(&dev.mac);
    frame[12..14].copy_from_slice(&[0x08, 0x06]);
    frame[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame[22..28].copy_from_slice(&dev.mac);
    frame[28..32].copy_from_slice(&own.address().octets());
    frame[38..42].copy_from_slice(&router.octets());
    if let Some(token) = dev.transmit(now()) {
        smoltcp::phy::TxToken::consume(token, frame.len(), |buf| buf.copy_from_slice(&frame));
    }
    let start = now();
    while elapsed_ms(start) < ARP_TIMEOUT_MS {
        iface.poll(now(), dev, sockets);
        if let Some((ip, mac)) = dev.rx.arp_reply {
            if ip == router.octets() {
                report!(
                    "net arp router={} mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    router,
                    mac[0],
                    mac[1],
                    mac[2],
                    mac[3],
                    mac[4],
                    mac[5]
                );
                return;
            }
        }
        pause();
    }
    report!("error net arp router={}: no reply", router);
}

fn parse_endpoint(text: &str) -> Option<IpEndpoint> {
    let (ip, port) = text.split_once(':')?;
    let ip: Ipv4Address = ip.parse().ok()?;
    Some(IpEndpoint::new(IpAddress::Ipv4(ip), port.parse().ok()?))
}

fn send_udp(iface: &mut Interface, dev: &mut NetDevice, sockets: &mut SocketSet, target: &str, hostname: &str) {
    let Some(endpoint) = parse_endpoint(target) else {
        report!("error net udp: `{}` is not IP:PORT", target);
        return;
    };
    // SAFETY: the statics are used by this function only, which runs once.
    let socket = unsafe {
        udp::Socket::new(
            udp::PacketBuffer::new(
                (&mut *core::ptr::addr_of_mut!(UDP_RX_META)).as_mut_slice(),
                (&mut *core::ptr::addr_of_mut!(UDP_RX)).as_mut_slice(),
            ),
            udp::PacketBuffer::new(
                (&mut *core::ptr::addr_of_mut!(UDP_TX_META)).as_mut_slice(),
                (&mut *core::ptr::addr_of_mut!(UDP_TX)).as_mut_slice(),
            ),
        )
    };
    let handle = sockets.add(socket);
    let udp = sockets.get_mut::<udp::Socket>(handle);
    if udp.bind(40000).is_err() {
        report!("error net udp: bind");
        return;
    }
    let mut message = Text::<96>::new();
    let _ = writeln!(message, "probe-udp {}", hostname);
    if udp.send_slice(message.as_str().as_bytes(), endpoint).is_err() {
        report!("error net udp: send");
        return;
    }
    let start = now();
    while elapsed_ms(start) < UDP_TIMEOUT_MS {
        iface.poll(now(), dev, sockets);
        if sockets.get_mut::<udp::Socket>(handle).send_queue() == 0 {
            report!("net udp to={} sent=ok", endpoint);
            return;
        }
        pause();
    }
    report!("error net udp to={}: not sent", endpoint);
}

/// Serves `count` connections on `port`, one after the other: each gets the
/// banner and is closed; the next is listened for once it has.
fn serve_tcp(
    iface: &mut Interface,
    dev: &mut NetDevice,
    sockets: &mut SocketSet,
    port: u16,
    count: u32,
    hostname: &str,
) {
    // SAFETY: the statics are used by this function only, which runs once.
    let socket = unsafe {
        tcp::Socket::new(
            tcp::SocketBuffer::new((&mut *core::ptr::addr_of_mut!(TCP_RX)).as_mut_slice()),
            tcp::SocketBuffer::new((&mut *core::ptr::addr_of_mut!(TCP_TX)).as_mut_slice()),
        )
    };
    let handle = sockets.add(socket);
    let mut banner = Text::<96>::new();
    let _ = writeln!(banner, "probe-banner {}", hostname);
    for served in 1..=count {
        if sockets.get_mut::<tcp::Socket>(handle).listen(port).is_err() {
            report!("error net tcp: listen");
            return;
        }
        if served == 1 {
            report!("net tcp port={} listening", port);
        }
        if let Err(why) = serve_one(iface, dev, sockets, handle, banner.as_str()) {
            report!("error net tcp port={}: {}", port, why);
            return;
        }
        report!("net tcp served={}", served);
    }
}

fn serve_one(
    iface: &mut Interface,
    dev: &mut NetDevice,
    sockets: &mut SocketSet,
    handle: smoltcp::iface::SocketHandle,
    banner: &str,
) -> Result<(), &'static str> {
    let mut sent = false;
    let start = now();
    while elapsed_ms(start) < TCP_TIMEOUT_MS {
        iface.poll(now(), dev, sockets);
        let tcp = sockets.get_mut::<tcp::Socket>(handle);
        if !sent && tcp.may_send() {
            if let Some(peer) = tcp.remote_endpoint() {
                report!("net tcp accepted from={}", peer);
            }
            let _ = tcp.send_slice(banner.as_bytes());
            tcp.close();
            sent = true;
        }
        if sent && !tcp.is_open() {
            return Ok(());
        }
        pause();
    }
    Err(if sent { "not closed" } else { "no connection" })
}

/// A string in a fixed buffer; what does not fit, or is not printable ASCII
/// (the server's bytes are not trusted), is dropped or shown as `?`.
pub struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    pub fn new() -> Self {
        Text { buf: [0; N], len: 0 }
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    pub fn push_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len == N {
                return;
            }
            self.buf[self.len] = if b.is_ascii_graphic() { b } else { b'?' };
            self.len += 1;
        }
    }
}

impl<const N: usize> core::fmt::Write for Text<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == N {
                return Err(core::fmt::Error);
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}
