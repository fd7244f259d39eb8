//! Where a CUDA forward spends its time: one CUDA event after every operation of the forward
//! (uploads, each kernel or cuBLAS call, the download), so the operations' times add up to the
//! forward's time on the GPU, idle gaps included (a gap counts towards the operation after it).
//! `gemma-embed profile` prints them ([`OpTimes`]).

use serde::Serialize;

/// One operation's share of the profiled forwards.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpTime {
    pub op: &'static str,
    pub calls: u64,
    /// GPU time from the previous event to this operation's end, summed over its calls.
    pub ms: f64,
}

/// Every operation of the profiled forwards, in the order each first ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OpTimes {
    pub forwards: u64,
    pub ops: Vec<OpTime>,
}

impl OpTimes {
    /// Add one forward: `ops[i]` ended `elapsed_ms[i]` after the event before it.
    pub fn add_forward(&mut self, ops: &[&'static str], elapsed_ms: &[f64]) {
        self.forwards += 1;
        for (&op, &ms) in ops.iter().zip(elapsed_ms) {
            match self.ops.iter_mut().find(|t| t.op == op) {
                Some(t) => {
                    t.calls += 1;
                    t.ms += ms;
                }
                None => self.ops.push(OpTime { op, calls: 1, ms }),
            }
        }
    }

    /// GPU time of all profiled forwards.
    pub fn total_ms(&self) -> f64 {
        self.ops.iter().map(|t| t.ms).sum()
    }
}

#[cfg(gemma_cuda_kernels)]
pub(crate) use device::Timeline;

#[cfg(gemma_cuda_kernels)]
mod device {
    use cudarc::driver::sys::CUevent_flags;
    use cudarc::driver::CudaEvent;

    use super::OpTimes;
    use crate::backend::cuda::device::{driver_err, Device};
    use crate::Result;

    /// The events of the forward being profiled and the totals of those before it. Events are
    /// created once and reused by later forwards.
    #[derive(Default)]
    pub(crate) struct Timeline {
        events: Vec<CudaEvent>,
        ops: Vec<&'static str>,
        pub totals: OpTimes,
    }

    impl Timeline {
        fn record(&mut self, dev: &Device) -> Result<()> {
            let index = self.ops.len();
            if index == self.events.len() {
                let event = dev
                    .ctx
                    .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(driver_err("create profiling event"))?;
                self.events.push(event);
            }
            self.events[index]
                .record(&dev.stream)
                .map_err(driver_err("record profiling event"))
        }

        /// Start a forward: the event every later one is measured from.
        pub fn begin(&mut self, dev: &Device) -> Result<()> {
            self.ops.clear();
            self.record(dev)
        }

        /// `op` was just enqueued.
        pub fn mark(&mut self, dev: &Device, op: &'static str) -> Result<()> {
            self.ops.push(op);
            self.record(dev)
        }

        /// After the stream has synchronized: add this forward's times to the totals.
        pub fn finish(&mut self) -> Result<()> {
            let mut elapsed = Vec::with_capacity(self.ops.len());
            for pair in self.events[..=self.ops.len()].windows(2) {
                let ms = pair[0]
                    .elapsed_ms(&pair[1])
                    .map_err(driver_err("read profiling event"))?;
                elapsed.push(f64::from(ms));
            }
            self.totals.add_forward(&self.ops, &elapsed);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_add_up_per_operation_in_first_seen_order() {
        let mut times = OpTimes::default();
        times.add_forward(
            &["embed", "qkv", "attention", "qkv", "attention"],
            &[1.0, 2.0, 3.0, 2.5, 3.5],
        );
        times.add_forward(&["embed", "qkv", "attention"], &[1.5, 2.0, 4.0]);
        assert_eq!(times.forwards, 2);
        let rows: Vec<(&str, u64, f64)> = times.ops.iter().map(|t| (t.op, t.calls, t.ms)).collect();
        assert_eq!(
            rows,
            vec![("embed", 2, 2.5), ("qkv", 3, 6.5), ("attention", 3, 10.5)]
        );
        assert_eq!(times.total_ms(), 19.5);
    }
}
