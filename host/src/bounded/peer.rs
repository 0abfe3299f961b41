//! Who opened a TCP connection on loopback: the kernel's socket table
//! (`NETLINK_SOCK_DIAG`, the interface `ss` uses) looked up for the one
//! socket whose ends are the connection's, reversed. One request and one
//! answer per connection, a hash lookup in the kernel: `/proc/net/tcp`
//! would be a scan of every socket on the node (thousands under a flood)
//! for each connection accepted.
//!
//! A peer on another host, or in another network namespace, has no socket
//! here: `None`, as for any failure.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_NOCOOKIE: u32 = !0;
const TCP_TIME_WAIT: u8 = 6;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    // struct nlmsghdr
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    // struct inet_diag_req_v2
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// The start of `struct inet_diag_msg`, after the `nlmsghdr`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Answer {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

const HEADER: usize = 16;

thread_local! {
    /// One netlink socket per thread, opened on first use.
    static DIAG: RefCell<Option<OwnedFd>> = const { RefCell::new(None) };
}

fn open_diag() -> Option<OwnedFd> {
    // SAFETY: socket(2); the result is checked and owned.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new descriptor no one else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // An answer never takes long; never block the accept loop for long.
    let wait = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: setsockopt with a local timeval of its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const wait).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    Some(fd)
}

/// The address of `fd`'s end (`peer`: the other end).
fn address(fd: &OwnedFd, peer: bool) -> Option<SocketAddr> {
    let raw = fd.as_raw_fd();
    // Borrowed as a std socket for its address calls, never closed by it.
    // SAFETY: `raw` stays open while `fd` lives; ManuallyDrop keeps it open.
    let stream = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(raw) });
    if peer {
        stream.peer_addr().ok()
    } else {
        stream.local_addr().ok()
    }
}

fn plain(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), address.port()),
            None => address,
        },
        IpAddr::V4(_) => address,
    }
}

fn bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// The user id owning the socket on the other end of the accepted TCP
/// connection `fd`, when that socket is on this node (in this network
/// namespace).
pub fn tcp_peer_uid(fd: &OwnedFd) -> Option<u32> {
    let (local, peer) = (plain(address(fd, false)?), plain(address(fd, true)?));
    let family = match peer.ip() {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    // The peer's socket: its source is the connection's peer end.
    let request = Request {
        len: std::mem::size_of::<Request>() as u32,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: libc::NLM_F_REQUEST as u16,
        seq: 1,
        pid: 0,
        family: family as u8,
        protocol: libc::IPPROTO_TCP as u8,
        ext: 0,
        pad: 0,
        states: !0,
        id: SockId {
            sport: peer.port().to_be_bytes(),
            dport: local.port().to_be_bytes(),
            src: bytes(peer.ip()),
            dst: bytes(local.ip()),
            interface: 0,
            cookie: [INET_DIAG_NOCOOKIE; 2],
        },
    };
    DIAG.with(|diag| {
        let mut diag = diag.borrow_mut();
        if diag.is_none() {
            *diag = open_diag();
        }
        let socket = diag.as_ref()?;
        let answer = ask(socket, &request);
        if answer.is_none() {
            // A fresh socket next time: no stale answer can be read as
            // the next connection's.
            *diag = None;
        }
        answer
    })
}

fn ask(socket: &OwnedFd, request: &Request) -> Option<u32> {
    // SAFETY: sockaddr_nl is plain integers; all zero is valid.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: sendto with a local request of its size to the kernel's
    // netlink address.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            (request as *const Request).cast(),
            std::mem::size_of::<Request>(),
            0,
            (&raw const kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return None;
    }
    let mut buf = [0u8; 512];
    // SAFETY: recv into a local buffer of its length.
    let got = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let got = usize::try_from(got).ok()?;
    if got < HEADER + std::mem::size_of::<Answer>() {
        return None;
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    // NLMSG_ERROR (no such socket) or anything else.
    if kind != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    // SAFETY: enough bytes for an Answer were read; read_unaligned copes
    // with the buffer's alignment.
    let answer: Answer = unsafe { std::ptr::read_unaligned(buf[HEADER..].as_ptr().cast()) };
    // A closed socket waiting out TIME_WAIT reports no owner (uid 0).
    (answer.state != TCP_TIME_WAIT).then_some(answer.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The uid of whoever connects to a loopback listener, as the accept
    /// loop would see it: this process's, or (as root) `nobody`'s from a
    /// thread that took its credentials; a peer that left is not found.
    #[test]
    fn a_loopback_peers_user_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let _mine = std::net::TcpStream::connect(address).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let accepted = OwnedFd::from(accepted);
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        assert_eq!(tcp_peer_uid(&accepted), Some(me));
        if me == 0 {
            let theirs = std::thread::spawn(move || {
                // SAFETY: this thread's own credentials (raw calls).
                unsafe {
                    assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
                }
                std::net::TcpStream::connect(address).unwrap()
            })
            .join()
            .unwrap();
            let (accepted, _) = listener.accept().unwrap();
            let accepted = OwnedFd::from(accepted);
            assert_eq!(tcp_peer_uid(&accepted), Some(65534));
            drop(theirs);
            // Gone (closed; its socket may linger in TIME_WAIT, with no
            // owner to report): never another user's uid.
            assert_ne!(tcp_peer_uid(&accepted), Some(me));
        }
        // The cost, for FAILURES.md (`-- --nocapture`).
        let began = std::time::Instant::now();
        for _ in 0..1000 {
            std::hint::black_box(tcp_peer_uid(&accepted));
        }
        eprintln!("tcp_peer_uid: {:?} per lookup", began.elapsed() / 1000);
    }
}
