//! A DNS server for one test domain, on UDP port 53 of a loopback address
//! of its own (127.53.x.y), answering SRV, TXT and A records from a table:
//! enough for `mongodb+srv://` seed lists. Unknown names get NXDOMAIN,
//! other record types an empty answer.
//!
//! A process sees it through a resolv.conf that names it, bind-mounted
//! over /etc/resolv.conf in a mount namespace of the process's own
//! ([`TestDns::command`]): the MongoDB driver's resolver reads only the
//! system's configuration, and nothing outside that process is touched.
//! Port 53 needs root (the project's machines run the tests as root); a
//! test that cannot bind it fails with that reason.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The records served, by lowercase name without the trailing dot.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    /// (priority, weight, port, target).
    pub srv: HashMap<String, Vec<(u16, u16, u16, String)>>,
    pub txt: HashMap<String, Vec<String>>,
    pub a: HashMap<String, Vec<Ipv4Addr>>,
}

/// A running server; stops on drop.
pub struct TestDns {
    pub ip: Ipv4Addr,
    stop: Arc<AtomicBool>,
    /// SRV questions answered so far.
    pub srv_queries: Arc<AtomicU32>,
    resolv_conf: PathBuf,
    _dir: tempfile::TempDir,
}

const SRV: u16 = 33;
const TXT: u16 = 16;
const A: u16 = 1;

impl TestDns {
    pub fn start(zone: Zone) -> TestDns {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ip = Ipv4Addr::new(
            127,
            53,
            (std::process::id() % 250) as u8 + 1,
            (n % 250) as u8 + 1,
        );
        let socket = UdpSocket::bind(SocketAddr::from((ip, 53))).unwrap_or_else(|e| {
            panic!("the test DNS server cannot listen on {ip}:53 (needs root): {e}")
        });
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let dir = tempfile::tempdir().expect("temp dir for resolv.conf");
        let resolv_conf = dir.path().join("resolv.conf");
        std::fs::write(
            &resolv_conf,
            format!("nameserver {ip}\noptions timeout:1 attempts:2\n"),
        )
        .expect("write resolv.conf");
        let stop = Arc::new(AtomicBool::new(false));
        let srv_queries = Arc::new(AtomicU32::new(0));
        let (s, q) = (Arc::clone(&stop), Arc::clone(&srv_queries));
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some((answer, qtype)) = respond(&zone, &buf[..len]) {
                    if qtype == SRV {
                        q.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = socket.send_to(&answer, peer);
                }
            }
        });
        TestDns {
            ip,
            stop,
            srv_queries,
            resolv_conf,
            _dir: dir,
        }
    }

    /// `program` run in a mount namespace of its own whose /etc/resolv.conf
    /// names this server only.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
            .arg(&self.resolv_conf)
            .arg(program);
        c
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The answer to one query, and the question's type; None for what is not
/// a query.
fn respond(zone: &Zone, q: &[u8]) -> Option<(Vec<u8>, u16)> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // The question: labels, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let n = *q.get(i)? as usize;
        i += 1;
        if n == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + n)?).to_ascii_lowercase());
        i += n;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = &q[12..i + 4];
    let name = labels.join(".");
    let known =
        zone.srv.contains_key(&name) || zone.txt.contains_key(&name) || zone.a.contains_key(&name);
    let mut answers: Vec<(u16, Vec<u8>)> = Vec::new();
    match qtype {
        SRV => {
            for (prio, weight, port, target) in zone.srv.get(&name).into_iter().flatten() {
                let mut rdata = Vec::new();
                rdata.extend(prio.to_be_bytes());
                rdata.extend(weight.to_be_bytes());
                rdata.extend(port.to_be_bytes());
                rdata.extend(encode_name(target));
                answers.push((SRV, rdata));
            }
        }
        TXT => {
            for text in zone.txt.get(&name).into_iter().flatten() {
                let mut rdata = vec![text.len() as u8];
                rdata.extend(text.as_bytes());
                answers.push((TXT, rdata));
            }
        }
        A => {
            for ip in zone.a.get(&name).into_iter().flatten() {
                answers.push((A, ip.octets().to_vec()));
            }
        }
        _ => {}
    }
    let mut out = Vec::with_capacity(512);
    out.extend(&q[..2]); // id
    let rcode = if known { 0 } else { 3 };
    // QR, AA, RD as asked, RA; NOERROR or NXDOMAIN.
    out.push(0x84 | (q[2] & 0x01));
    out.push(0x80 | rcode);
    out.extend(1u16.to_be_bytes());
    out.extend((answers.len() as u16).to_be_bytes());
    out.extend([0, 0, 0, 0]);
    out.extend(question);
    for (rtype, rdata) in answers {
        out.extend([0xC0, 12]); // the question's name
        out.extend(rtype.to_be_bytes());
        out.extend(1u16.to_be_bytes()); // IN
        out.extend(60u32.to_be_bytes());
        out.extend((rdata.len() as u16).to_be_bytes());
        out.extend(rdata);
    }
    Some((out, qtype))
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend(label.as_bytes());
    }
    out.push(0);
    out
}
