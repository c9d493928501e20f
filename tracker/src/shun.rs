//! Dropping a shunned address's connection attempts in the kernel, before they become
//! connections: a classic BPF socket filter on the listening socket. The kernel runs a
//! listener's filter on every packet addressed to it, the SYN included, so a dropped SYN
//! costs no connection, no `accept`, no reset and no wake-up of ours. The client sees a
//! server that does not answer (its SYNs go unanswered), as behind a firewall rule.
//!
//! Why not nftables: the tracker runs unprivileged, and a socket's own filter needs no
//! privilege, applies to this listener only and disappears with it.
//!
//! The program compares the packet's source address with each shunned one (at most
//! [`crate::gate::MAX_SHUNNED`]: 2 instructions per IPv4 address, 9 per IPv6 one, well
//! under the kernel's 4,096). Connections accepted while a filter is attached inherit it;
//! [`SynFilter::clear_inherited`] takes it off them, so established connections never pay
//! for it.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Offset of the network (IP) header in a classic BPF load (`SKF_NET_OFF`).
const NET: u32 = (-0x100000i32) as u32;
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
const RSH_K: u16 = (libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// Return values: 0 drops the packet, anything else keeps that many bytes.
const DROP: u32 = 0;
const KEEP: u32 = u32::MAX;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The program that drops packets from `shunned` on a socket of the given family.
/// IPv4-mapped IPv6 addresses are compared as the IPv4 addresses they are (a dual-stack
/// listener sees IPv4 clients as mapped addresses, but their packets are IPv4).
pub fn program(shunned: &[IpAddr], ipv6_socket: bool) -> Vec<libc::sock_filter> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for ip in shunned {
        match ip.to_canonical() {
            IpAddr::V4(a) => v4.push(u32::from(a)),
            IpAddr::V6(a) => v6.push(a.octets()),
        }
    }
    let mut v4_part = vec![op(LD_W_ABS, 0, 0, NET + 12)];
    for a in v4 {
        // Equal: fall through to the drop; otherwise skip it.
        v4_part.push(op(JEQ_K, 0, 1, a));
        v4_part.push(op(RET_K, 0, 0, DROP));
    }
    v4_part.push(op(RET_K, 0, 0, KEEP));
    if !ipv6_socket {
        return v4_part;
    }
    // An IPv6 socket sees IPv4 packets too: branch on the IP version.
    let mut v6_part = Vec::new();
    for a in v6 {
        for (i, word) in a.chunks(4).enumerate() {
            let word = u32::from_be_bytes(word.try_into().expect("4 bytes"));
            // A mismatch skips the rest of this address's 9 instructions.
            let skip = (7 - 2 * i) as u8;
            v6_part.push(op(LD_W_ABS, 0, 0, NET + 8 + 4 * i as u32));
            v6_part.push(op(JEQ_K, 0, skip, word));
        }
        v6_part.push(op(RET_K, 0, 0, DROP));
    }
    v6_part.push(op(RET_K, 0, 0, KEEP));
    let mut p = vec![
        op(LD_B_ABS, 0, 0, NET),
        op(RSH_K, 0, 0, 4),
        // Version 6: skip the jump to the IPv4 part.
        op(JEQ_K, 1, 0, 6),
        op(JA, 0, 0, v6_part.len() as u32),
    ];
    p.extend(v6_part);
    p.extend(v4_part);
    p
}

/// The filter on one listening socket.
pub struct SynFilter {
    ipv6: bool,
    attached: bool,
}

impl SynFilter {
    pub fn new(ipv6_socket: bool) -> SynFilter {
        SynFilter {
            ipv6: ipv6_socket,
            attached: false,
        }
    }

    /// Drops `shunned`'s packets from now on (none: takes the filter off).
    pub fn set(&mut self, listener: BorrowedFd<'_>, shunned: &[IpAddr]) -> io::Result<()> {
        if shunned.is_empty() {
            if self.attached {
                detach(listener)?;
                self.attached = false;
            }
            return Ok(());
        }
        let mut prog = program(shunned, self.ipv6);
        let fprog = libc::sock_fprog {
            len: u16::try_from(prog.len()).map_err(|_| io::ErrorKind::InvalidInput)?,
            filter: prog.as_mut_ptr(),
        };
        // SAFETY: `fprog` points at `prog`, alive for the call; the kernel copies it.
        let r = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        self.attached = true;
        Ok(())
    }

    /// Takes the listener's filter off a connection accepted while it was attached.
    pub fn clear_inherited(&self, conn: BorrowedFd<'_>) {
        if self.attached {
            let _ = detach(conn);
        }
    }
}

fn detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    let zero: libc::c_int = 0;
    // SAFETY: a plain int option on a descriptor we borrow.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DETACH_FILTER,
            (&zero as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::Duration;

    /// Runs `p` on an IP header the way the kernel would (the subset of classic BPF that
    /// `program` emits), so the branches are checked without a second address.
    fn run(p: &[libc::sock_filter], header: &[u8]) -> u32 {
        let mut pc = 0usize;
        let mut a: u32 = 0;
        for _ in 0..10_000 {
            let i = p[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let at = (i.k - NET) as usize;
                    a = u32::from_be_bytes(header[at..at + 4].try_into().unwrap());
                }
                LD_B_ABS => a = header[(i.k - NET) as usize] as u32,
                RSH_K => a >>= i.k,
                JA => pc += i.k as usize,
                JEQ_K => pc += if a == i.k { i.jt } else { i.jf } as usize,
                RET_K => return i.k,
                other => panic!("opcode {other:#x} not emitted by program()"),
            }
        }
        panic!("no return");
    }

    fn v4_header(src: Ipv4Addr) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[12..16].copy_from_slice(&src.octets());
        h
    }

    fn v6_header(src: Ipv6Addr) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[8..24].copy_from_slice(&src.octets());
        h
    }

    #[test]
    fn the_program_drops_exactly_the_shunned_addresses_of_either_family() {
        let a4: Ipv4Addr = "10.0.0.7".parse().unwrap();
        let b4: Ipv4Addr = "10.0.0.8".parse().unwrap();
        let a6: Ipv6Addr = "fd00::7".parse().unwrap();
        let near6: Ipv6Addr = "fd00::8".parse().unwrap();
        let shunned = [
            IpAddr::V4(a4),
            IpAddr::V6(a6),
            IpAddr::V6("::ffff:10.0.0.9".parse().unwrap()),
        ];
        for ipv6_socket in [false, true] {
            let p = program(&shunned, ipv6_socket);
            assert_eq!(run(&p, &v4_header(a4)), DROP);
            assert_eq!(run(&p, &v4_header(b4)), KEEP);
            assert_eq!(run(&p, &v4_header("10.0.0.9".parse().unwrap())), DROP);
            if ipv6_socket {
                assert_eq!(run(&p, &v6_header(a6)), DROP);
                assert_eq!(run(&p, &v6_header(near6)), KEEP);
                assert_eq!(run(&p, &v6_header("fe00::7".parse().unwrap())), KEEP);
            }
        }
        let many: Vec<IpAddr> = (0..crate::gate::MAX_SHUNNED as u128)
            .map(|n| IpAddr::V6(Ipv6Addr::from(n << 64 | 1)))
            .collect();
        assert!(
            program(&many, true).len() < 4096,
            "within the kernel's limit"
        );
    }

    /// The real kernel: a shunned address's connection attempts go unanswered, and once
    /// the shun ends it connects again; a connection accepted before keeps working.
    #[test]
    fn the_kernel_drops_a_shunned_address_s_connection_attempts() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let mut filter = SynFilter::new(false);
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);

        let mut before = TcpStream::connect(addr).unwrap();
        let (mut before_srv, _) = listener.accept().unwrap();

        filter.set(listener.as_fd(), &[lo]).unwrap();
        let attempt = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert!(attempt.is_err(), "a shunned address's SYN is dropped");

        // Accepted before the shun: unaffected (the filter is attached to the listener).
        before.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        before_srv.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");

        filter.set(listener.as_fd(), &[]).unwrap();
        let again = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
        assert!(again.is_ok(), "the shun is over");
    }

    /// Instructions in the filter on `fd` (`SO_GET_FILTER` with no room: just the count).
    fn filter_len(fd: BorrowedFd<'_>) -> u32 {
        let mut len: libc::socklen_t = 0;
        // SAFETY: a zero-length query writes only `len`.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_GET_FILTER,
                std::ptr::null_mut(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        len
    }

    #[test]
    fn a_connection_accepted_under_a_filter_is_freed_of_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut filter = SynFilter::new(false);
        // Shun an address that is not ours: our connection is accepted, with the filter.
        filter
            .set(listener.as_fd(), &["10.255.255.1".parse().unwrap()])
            .unwrap();
        assert_eq!(filter_len(listener.as_fd()), 4);
        let mut client = TcpStream::connect(addr).unwrap();
        let (mut srv, _) = listener.accept().unwrap();
        assert_eq!(filter_len(srv.as_fd()), 4, "inherited from the listener");
        filter.clear_inherited(srv.as_fd());
        assert_eq!(filter_len(srv.as_fd()), 0);
        client.write_all(b"ok").unwrap();
        let mut got = [0u8; 2];
        srv.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ok");
        filter.set(listener.as_fd(), &[]).unwrap();
        assert_eq!(filter_len(listener.as_fd()), 0, "no shun, no filter");
    }
}
