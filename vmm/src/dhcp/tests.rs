use super::*;
use crate::net_config::PrivateOption;

const GUEST: MacAddr = MacAddr([0x02, 0x6b, 0x76, 0, 0, 1]);

fn lease() -> DhcpLease {
    DhcpLease {
        address: Ipv4Addr::new(10, 0, 2, 2),
        prefix_len: 24,
        router: Ipv4Addr::new(10, 0, 2, 1),
        dns_servers: vec![Ipv4Addr::new(10, 96, 0, 10)],
        search_domains: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
        hostname: Some("vm-cirros".into()),
        lease_seconds: 999 * 86400,
        ntp_servers: vec![],
        boot_file_name: None,
        tftp_server_name: None,
        private_options: vec![],
    }
}

fn responder() -> DhcpResponder {
    DhcpResponder::new(GUEST, 1400, lease())
}

/// A client frame as a DHCP client sends it before it has an address.
fn client_frame(mac: MacAddr, kind: MessageType, extra: &[DhcpOption]) -> Vec<u8> {
    let mut msg = Message::new_with_id(
        0x1234_5678,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac.0,
    );
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    for opt in extra {
        msg.opts_mut().insert(opt.clone());
    }
    let payload = msg.to_vec().unwrap();
    UdpFrame {
        src_mac: mac.0,
        dst_mac: [0xff; 6],
        src_ip: Ipv4Addr::UNSPECIFIED,
        dst_ip: Ipv4Addr::BROADCAST,
        src_port: CLIENT_PORT,
        dst_port: SERVER_PORT,
        payload: &payload,
    }
    .encode()
}

/// Decodes a reply frame as a client would: Ethernet/IPv4/UDP, then dhcproto.
fn decode(frame: &[u8]) -> (UdpFrame<'_>, Message) {
    let udp = UdpFrame::decode(frame).expect("the reply is an IPv4/UDP frame");
    let msg = Message::decode(&mut Decoder::new(udp.payload)).expect("dhcproto decodes the reply");
    (udp, msg)
}

#[test]
fn discover_gets_kubevirts_masquerade_offer() {
    let reply = responder().answer(&client_frame(GUEST, MessageType::Discover, &[])).unwrap();
    let (udp, msg) = decode(&reply);
    assert_eq!((udp.src_ip, udp.src_port, udp.dst_port), (Ipv4Addr::new(10, 0, 2, 1), 67, 68));
    assert_eq!(udp.src_mac, SERVER_MAC.0);
    assert_eq!(udp.dst_mac, GUEST.0, "unicast to the client's MAC without the broadcast flag");
    assert_eq!(internet_checksum(0, &reply[14..34]), 0);
    assert_eq!(msg.opcode(), Opcode::BootReply);
    assert_eq!(msg.xid(), 0x1234_5678);
    assert_eq!(msg.yiaddr(), Ipv4Addr::new(10, 0, 2, 2));
    assert_eq!(&msg.chaddr()[..6], &GUEST.0);
    let opts = msg.opts();
    assert_eq!(opts.msg_type(), Some(MessageType::Offer));
    let get = |code| opts.get(code).cloned();
    assert_eq!(get(OptionCode::SubnetMask), Some(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0))));
    assert_eq!(get(OptionCode::Router), Some(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 1)])));
    assert_eq!(
        get(OptionCode::DomainNameServer),
        Some(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 96, 0, 10)]))
    );
    assert_eq!(get(OptionCode::Hostname), Some(DhcpOption::Hostname("vm-cirros".into())));
    assert_eq!(get(OptionCode::InterfaceMtu), Some(DhcpOption::InterfaceMtu(1400)));
    assert_eq!(get(OptionCode::AddressLeaseTime), Some(DhcpOption::AddressLeaseTime(86_313_600)));
    assert_eq!(get(OptionCode::ServerIdentifier), Some(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 1))));
    assert_eq!(get(OptionCode::BroadcastAddr), Some(DhcpOption::BroadcastAddr(Ipv4Addr::new(10, 0, 2, 255))));
    let Some(DhcpOption::DomainSearch(names)) = get(OptionCode::DomainSearch) else { panic!("no domain search") };
    let names: Vec<String> = names.iter().map(|n| n.to_ascii()).collect();
    assert_eq!(names, ["default.svc.cluster.local.", "svc.cluster.local."]);
}

#[test]
fn domain_search_is_rfc3397_encoded_with_compression() {
    let reply = responder().answer(&client_frame(GUEST, MessageType::Discover, &[])).unwrap();
    let (udp, _) = decode(&reply);
    let options = &udp.payload[240..];
    let at = options.windows(2).position(|w| w[0] == 119).expect("option 119");
    let value = &options[at + 2..at + 2 + usize::from(options[at + 1])];
    // "default" "svc" "cluster" "local" 0, then "svc..." as a pointer to offset 8.
    assert!(value.starts_with(b"\x07default\x03svc\x07cluster\x05local\x00"), "{value:x?}");
    assert_eq!(&value[27..], &[0xc0, 8], "the second name points into the first");
}

#[test]
fn broadcast_flag_gets_a_broadcast_reply() {
    let mut frame = client_frame(GUEST, MessageType::Discover, &[]);
    frame[42 + 10] = 0x80; // flags: broadcast
    let udp_checksum_at = 34 + 6;
    frame[udp_checksum_at..udp_checksum_at + 2].copy_from_slice(&[0, 0]); // "no checksum"
    let reply = responder().answer(&frame).unwrap();
    let (udp, msg) = decode(&reply);
    assert!(msg.flags().broadcast());
    assert_eq!((udp.dst_ip, udp.dst_mac), (Ipv4Addr::BROADCAST, [0xff; 6]));
}

#[test]
fn request_for_the_lease_is_acked_and_another_address_naked() {
    let ask = |ip: Ipv4Addr| {
        let frame = client_frame(
            GUEST,
            MessageType::Request,
            &[DhcpOption::RequestedIpAddress(ip), DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 1))],
        );
        let reply = responder().answer(&frame).unwrap();
        let (_, msg) = decode(&reply);
        msg
    };
    let ack = ask(Ipv4Addr::new(10, 0, 2, 2));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), Ipv4Addr::new(10, 0, 2, 2));
    assert!(ack.opts().get(OptionCode::Hostname).is_some());
    let nak = ask(Ipv4Addr::new(192, 168, 1, 50));
    assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(nak.opts().get(OptionCode::AddressLeaseTime).is_none());
}

#[test]
fn request_for_another_server_and_other_messages_get_nothing() {
    let other_server = client_frame(
        GUEST,
        MessageType::Request,
        &[
            DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 2, 2)),
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 9)),
        ],
    );
    assert!(responder().answer(&other_server).is_none());
    assert!(responder().answer(&client_frame(GUEST, MessageType::Release, &[])).is_none());
    assert!(responder().answer(&client_frame(GUEST, MessageType::Decline, &[])).is_none());
}

#[test]
fn another_mac_is_not_served() {
    let stranger = MacAddr([0x02, 0, 0, 0, 0, 0x99]);
    assert!(responder().answer(&client_frame(stranger, MessageType::Discover, &[])).is_none());
}

#[test]
fn kubevirt_dhcp_options_are_honoured() {
    let lease = DhcpLease {
        ntp_servers: vec![Ipv4Addr::new(10, 0, 0, 123)],
        boot_file_name: Some("pxelinux.0".into()),
        tftp_server_name: Some("tftp.example".into()),
        private_options: vec![PrivateOption { option: 240, value: "extra".into() }],
        ..lease()
    };
    let reply =
        DhcpResponder::new(GUEST, 1500, lease).answer(&client_frame(GUEST, MessageType::Discover, &[])).unwrap();
    let (_, msg) = decode(&reply);
    let opts = msg.opts();
    assert_eq!(opts.get(OptionCode::NtpServers), Some(&DhcpOption::NtpServers(vec![Ipv4Addr::new(10, 0, 0, 123)])));
    assert_eq!(opts.get(OptionCode::BootfileName), Some(&DhcpOption::BootfileName(b"pxelinux.0".to_vec())));
    assert_eq!(opts.get(OptionCode::TFTPServerName), Some(&DhcpOption::TFTPServerName(b"tftp.example".to_vec())));
    let Some(DhcpOption::Unknown(private)) = opts.get(OptionCode::from(240)) else { panic!("no option 240") };
    assert_eq!(private.data(), b"extra");
}

#[test]
fn non_dhcp_and_garbage_frames_get_nothing() {
    let frame = client_frame(GUEST, MessageType::Discover, &[]);
    assert!(DhcpResponder::is_dhcp_request(&frame));
    for len in [0, 14, 41, 42, 100, 200] {
        assert!(responder().answer(&frame[..len]).is_none(), "a frame cut at {len}");
    }
    // Every single-byte corruption of the DHCP payload either decodes or is dropped; none panics.
    for at in 42..frame.len() {
        let mut bad = frame.clone();
        bad[at] ^= 0xff;
        let _ = responder().answer(&bad);
    }
    let mut to_dns = frame.clone();
    to_dns[36..38].copy_from_slice(&53u16.to_be_bytes());
    assert!(!DhcpResponder::is_dhcp_request(&to_dns));
    assert!(responder().answer(&to_dns).is_none());
}
