//! Shared by the bench binaries: finding the release binaries, starting `offpeak serve` on free
//! loopback ports, and reading a process's CPU time and memory from /proc.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

/// The directory holding `offpeak` and `offpeak-agent`: `OFFPEAK_BIN_DIR`, or the profile
/// directory this bench was built into (`target/release` for `cargo bench`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("OFFPEAK_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    // target/release/deps/<bench>-<hash> -> target/release
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .context("no directory above the bench executable")
}

pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    ensure!(
        path.is_file(),
        "{} not found: build it first with `cargo build --release -p offpeak-scheduler -p \
         offpeak-agent` (or point OFFPEAK_BIN_DIR at it)",
        path.display()
    );
    Ok(path)
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// `offpeak serve` as a child process, killed when dropped.
pub struct Serve {
    pub child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl Serve {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// With extra `offpeak serve` arguments.
    pub fn start_with(extra: &[&str]) -> anyhow::Result<Self> {
        let (grpc, admin) = (free_addr()?, free_addr()?);
        let child = Command::new(binary("offpeak")?)
            .args(["serve", "--grpc-addr", &grpc.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting offpeak serve")?;
        let serve = Self { child, grpc, admin };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(admin, "/readyz").map(|(s, _)| s) != Ok(200) {
            ensure!(
                Instant::now() < deadline,
                "offpeak serve never became ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(serve)
    }

    pub fn uri(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn metric(&self, name: &str) -> anyhow::Result<u64> {
        let (status, body) = http_get(self.admin, "/metrics").map_err(anyhow::Error::msg)?;
        ensure!(status == 200, "/metrics answered {status}");
        for line in body.lines() {
            if let Some(v) = line.strip_prefix(name).and_then(|r| r.strip_prefix(' ')) {
                return Ok(v.trim().parse()?);
            }
        }
        bail!("no metric {name}")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP/1.1 GET; the error is a string so callers can compare results.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// CPU time (user + system) and memory of a process, from /proc.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStats {
    pub cpu_seconds: f64,
    /// Resident set now, KiB.
    pub rss_kib: u64,
    /// Peak resident set, KiB.
    pub hwm_kib: u64,
}

/// Clock ticks per second of /proc/<pid>/stat times (`getconf CLK_TCK`; 100 on Linux).
pub fn clock_ticks() -> anyhow::Result<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

pub fn proc_stats(pid: u32, ticks_per_s: f64) -> anyhow::Result<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may contain spaces: fields start after the ')'.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the ')': state is field 3 of the man page, so utime (14) and stime (15) are at
    // indices 11 and 12 here.
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("no {key}"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("no value")?
            .parse()?)
    };
    Ok(ProcStats {
        cpu_seconds: (utime + stime) / ticks_per_s,
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
    })
}

/// Seconds from an environment variable, or a default.
pub fn seconds_from_env(var: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(var) {
        Ok(v) => Ok(v.parse().with_context(|| format!("{var}={v:?}"))?),
        Err(_) => Ok(default),
    }
}
