//! Resident memory of a process on this machine, from Linux's `/proc/<pid>/status`.

use anyhow::Context;

/// The resident set size (`VmRSS`) of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path} (is process {pid} running, on Linux?)"))?;
    vm_rss_kib(&status).with_context(|| format!("no VmRSS line in {path}"))
}

/// The `VmRSS:` line of a `/proc/<pid>/status` text, in KiB. The kernel writes it as
/// `VmRSS:\t   12345 kB` (proc(5)); its "kB" are KiB.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let mut words = line.split_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next()? == "kB").then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss_in_kib() {
        let status = "Name:\tguildhall\nVmPeak:\t  999999 kB\nVmRSS:\t   12345 kB\nRssAnon:\t    8000 kB\n";
        assert_eq!(vm_rss_kib(status), Some(12345));
        assert_eq!(vm_rss_kib("Name:\tkthreadd\n"), None, "kernel threads have no VmRSS");
        assert_eq!(vm_rss_kib("VmRSS:\t12 MB\n"), None, "an unknown unit is not guessed");
    }

    #[test]
    fn reads_this_process() {
        let kib = rss_kib(std::process::id()).expect("this process has a status");
        assert!(kib > 0);
    }
}
