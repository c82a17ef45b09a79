//! CPU, memory and file descriptors of the running process, read from `/proc/self`: the
//! webhook exports its own under the standard process-collector names, and each consumer
//! writes its own to the backend so the webhook's `/metrics` can export them per consumer.

/// Clock ticks per second of `/proc/self/stat` times: the kernel reports them in USER_HZ, which
/// is 100 on every Linux architecture.
const USER_HZ: f64 = 100.0;

/// One reading of this process's resources.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessFigures {
    /// User plus system CPU time since the process started.
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub open_fds: u64,
}

impl ProcessFigures {
    /// Read from `/proc/self`; `None` where there is no procfs (callers then omit the figures).
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Some(ProcessFigures {
            cpu_seconds: cpu_seconds(&stat)?,
            resident_memory_bytes: resident_bytes(&status)?,
            // The directory handle read_dir held is counted in the listing; it is closed now.
            open_fds: open_fds.saturating_sub(1),
        })
    }
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from its last `)`.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, utime field 14, stime field 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// `VmRSS` of a `/proc/<pid>/status` text, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_and_status_are_parsed() {
        let stat = "1234 (web hook) (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        let status = "Name:\twebhook\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(resident_bytes(status), Some(2048 * 1024));
        assert_eq!(cpu_seconds("garbage"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_figures() {
        let figures = ProcessFigures::read().expect("procfs on Linux");
        assert!(figures.resident_memory_bytes > 0);
        assert!(figures.open_fds >= 3, "{figures:?}");
    }
}
