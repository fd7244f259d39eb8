//! Peak memory: the process's resident set (host) and the backend's device.

use std::sync::{Arc, Mutex, PoisonError};

use crate::backend::{Backend, Batch, Embeddings};
use crate::Result;

/// Reset the kernel's peak-RSS mark of this process (`VmHWM`) to its current RSS, by writing
/// `5` to `/proc/self/clear_refs` (Linux 4.0+). Returns whether it worked.
pub fn reset_host_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak resident set size in bytes (`VmHWM` of `/proc/self/status`), since start
/// or since the last successful [`reset_host_peak`]; `None` where there is no procfs.
pub fn host_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line["VmHWM:".len()..]
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// A backend shared between the bench's runs (each online run starts an engine that takes a
/// `Box<dyn Backend>`).
#[derive(Clone)]
pub struct SharedBackend {
    inner: Arc<Mutex<Box<dyn Backend>>>,
    name: &'static str,
}

impl SharedBackend {
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Self {
            name: backend.name(),
            inner: Arc::new(Mutex::new(backend)),
        }
    }

    fn backend(&self) -> std::sync::MutexGuard<'_, Box<dyn Backend>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for SharedBackend {
    fn name(&self) -> &'static str {
        self.name
    }

    fn device_name(&self) -> Option<String> {
        self.backend().device_name()
    }

    fn device_memory_used(&self) -> Option<u64> {
        self.backend().device_memory_used()
    }

    fn forward(&mut self, batch: &Batch, dimensions: usize) -> Result<Embeddings> {
        self.backend().forward(batch, dimensions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    1936 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(1936 * 1024));
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
    }
}
