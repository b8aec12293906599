//! What `/proc` says about a process: CPU time (user + system, every thread, dead ones too),
//! peak resident memory, and which process listens on a TCP port (to find the broker).
//! CPU time is steadier than wall time on a machine shared with other work.

use std::time::Duration;

/// CPU time a process has used so far (`utime + stime` from `/proc/<pid>/stat`).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after it are plain.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the whole line; the slice starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) as f64 / clock_ticks_per_second()))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// A `/proc/<pid>/status` value in kB (`VmHWM` is the peak resident set, `VmRSS` the current one).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// The process that owns the listening TCP socket on `port` (IPv4 or IPv6), if this user may see it.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    // Field 1 is the local address, state 0A is LISTEN.
    let wanted = socket_links(["/proc/net/tcp", "/proc/net/tcp6"], 1, port, "0A");
    if wanted.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// The `socket:[inode]` link targets of the sockets in `tables` (`/proc/…/net/tcp` format)
/// whose address in field `address` has port `port` and whose state is `state`.
fn socket_links(tables: [&str; 2], address: usize, port: u16, state: &str) -> Vec<String> {
    tables
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let at = u16::from_str_radix(f.get(address)?.rsplit(':').next()?, 16).ok()?;
                    (at == port && *f.get(3)? == state).then(|| f.get(9).map(|i| format!("socket:[{i}]")))?
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// CPU used by a process between two points, if it could be read both times.
pub struct CpuMeter {
    pid: Option<u32>,
    start: Option<Duration>,
}

impl CpuMeter {
    pub fn start(pid: Option<u32>) -> Self {
        Self { pid, start: pid.and_then(cpu_time) }
    }

    /// CPU time since `start`.
    pub fn elapsed(&self) -> Option<Duration> {
        let now = cpu_time(self.pid?)?;
        Some(now.saturating_sub(self.start?))
    }
}

/// Data segments this process sent and received, so far, on its established TCP connections to
/// `port` (`tcpi_data_segs_out` and `_in` of `TCP_INFO`, summed). On loopback each segment is one
/// write to the socket by the sender: how many writes messages took, on either side.
pub fn tcp_data_segments_to(port: u16) -> Option<(u64, u64)> {
    // Field 2 is the remote address, state 01 is ESTABLISHED.
    let inodes = socket_links(["/proc/self/net/tcp", "/proc/self/net/tcp6"], 2, port, "01");
    let (mut out, mut into, mut found) = (0u64, 0u64, false);
    for fd in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else { continue };
        if !inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
            continue;
        }
        let Some(fd) = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        // SAFETY: `info` is a plain struct of integers, as large as `len` says; getsockopt
        // only writes into it, and a descriptor closed meanwhile makes it fail, nothing else.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let read = unsafe {
            libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut libc::tcp_info).cast(), &mut len)
        };
        if read == 0 {
            out += u64::from(info.tcpi_data_segs_out);
            into += u64::from(info.tcpi_data_segs_in);
            found = true;
        }
    }
    found.then_some((out, into))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn sockets_are_found_by_port_listening_and_established() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
        assert_eq!(tcp_data_segments_to(port), None, "no connection to it yet");
        let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).unwrap();
        server.write_all(b"pong").unwrap();
        client.read_exact(&mut got).unwrap();
        let (out, into) = tcp_data_segments_to(port).expect("the client's connection");
        assert!(out >= 1 && into >= 1, "{out} out, {into} in");
    }
}
