//! The GPU as the receiver sees it: a trait, implemented over NVML (nvml-wrapper) and, in unit tests, by a fake.

use std::sync::Arc;

/// Why a query gave nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryError {
    /// The device cannot answer this query (MIG, an older GPU): said once, then skipped.
    NotSupported,
    Failed(String),
}

/// Why no GPU can be read at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// No driver: `libnvidia-ml.so.1` is missing or does not load.
    NoDriver(String),
    NoDevice,
    Failed(String),
}

/// One GPU.
pub trait Gpu: Send {
    fn index(&self) -> u32;
    fn uuid(&self) -> Result<String, QueryError>;
    fn name(&self) -> Result<String, QueryError>;
    /// Utilisation samples (microsecond timestamp, percent of the sample period a kernel ran) newer than `since`.
    fn utilization_samples(&self, since_us: u64) -> Result<Vec<(u64, f64)>, QueryError>;
    /// The driver's utilisation over its last sample period, in percent (a fallback when samples are unsupported).
    fn utilization(&self) -> Result<f64, QueryError>;
    /// (used, total) bytes of device memory.
    fn memory(&self) -> Result<(u64, u64), QueryError>;
    /// (host pid, GPU memory bytes when known) of the running compute processes.
    fn processes(&self) -> Result<Vec<(u32, Option<u64>)>, QueryError>;
}

/// Where GPUs come from.
pub trait GpuSource: Send + Sync {
    fn open(&self) -> Result<Vec<Box<dyn Gpu>>, OpenError>;
}

/// NVML through nvml-wrapper: the library is loaded at run time, so a machine without the driver gets an error
/// here, not a crash.
pub struct NvmlSource;

struct NvmlGpu {
    nvml: Arc<nvml_wrapper::Nvml>,
    index: u32,
}

fn query<T>(r: Result<T, nvml_wrapper::error::NvmlError>) -> Result<T, QueryError> {
    use nvml_wrapper::error::NvmlError;
    r.map_err(|e| match e {
        NvmlError::NotSupported => QueryError::NotSupported,
        other => QueryError::Failed(other.to_string()),
    })
}

impl NvmlGpu {
    fn device(&self) -> Result<nvml_wrapper::Device<'_>, QueryError> {
        query(self.nvml.device_by_index(self.index))
    }
}

impl Gpu for NvmlGpu {
    fn index(&self) -> u32 {
        self.index
    }
    fn uuid(&self) -> Result<String, QueryError> {
        query(self.device()?.uuid())
    }
    fn name(&self) -> Result<String, QueryError> {
        query(self.device()?.name())
    }
    fn utilization_samples(&self, since_us: u64) -> Result<Vec<(u64, f64)>, QueryError> {
        use nvml_wrapper::enum_wrappers::device::Sampling;
        use nvml_wrapper::enums::device::SampleValue;
        let samples = query(self.device()?.samples(Sampling::GpuUtilization, since_us))?;
        Ok(samples
            .into_iter()
            .map(|s| {
                let v = match s.value {
                    SampleValue::F64(v) => v,
                    SampleValue::U32(v) => f64::from(v),
                    SampleValue::U64(v) => v as f64,
                    SampleValue::I64(v) => v as f64,
                };
                (s.timestamp, v)
            })
            .collect())
    }
    fn utilization(&self) -> Result<f64, QueryError> {
        Ok(f64::from(query(self.device()?.utilization_rates())?.gpu))
    }
    fn memory(&self) -> Result<(u64, u64), QueryError> {
        let m = query(self.device()?.memory_info())?;
        Ok((m.used, m.total))
    }
    fn processes(&self) -> Result<Vec<(u32, Option<u64>)>, QueryError> {
        use nvml_wrapper::enums::device::UsedGpuMemory;
        let list = query(self.device()?.running_compute_processes())?;
        Ok(list
            .into_iter()
            .map(|p| {
                let bytes = match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                };
                (p.pid, bytes)
            })
            .collect())
    }
}

impl GpuSource for NvmlSource {
    fn open(&self) -> Result<Vec<Box<dyn Gpu>>, OpenError> {
        use nvml_wrapper::error::NvmlError;
        let nvml = match nvml_wrapper::Nvml::init() {
            Ok(n) => Arc::new(n),
            Err(e @ (NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound | NvmlError::DriverNotLoaded)) => {
                return Err(OpenError::NoDriver(e.to_string()));
            }
            Err(e) => return Err(OpenError::Failed(e.to_string())),
        };
        let count = nvml.device_count().map_err(|e| OpenError::Failed(e.to_string()))?;
        if count == 0 {
            return Err(OpenError::NoDevice);
        }
        Ok((0..count)
            .map(|index| {
                Box::new(NvmlGpu {
                    nvml: nvml.clone(),
                    index,
                }) as Box<dyn Gpu>
            })
            .collect())
    }
}
