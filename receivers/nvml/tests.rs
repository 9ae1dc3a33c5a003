//! The NVML receiver against a fake device (the one fake the project allows), and the real path on a machine
//! without a driver.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::{NumberDataPoint, metric::Data as MetricData, number_data_point};

use super::device::{Gpu, GpuSource, OpenError, QueryError};
use super::*;

/// What the fake GPU answers; shared so a test can change it between samples.
#[derive(Clone, Default)]
struct Script {
    samples: Vec<(u64, f64)>,
    samples_supported: bool,
    utilization: Option<f64>,
    memory: Option<(u64, u64)>,
    processes: Option<Vec<(u32, Option<u64>)>>,
    calls: Arc<Mutex<Vec<&'static str>>>,
}

struct FakeGpu {
    index: u32,
    script: Arc<Mutex<Script>>,
}

impl FakeGpu {
    fn call(&self, what: &'static str) -> Script {
        let s = self.script.lock().unwrap().clone();
        s.calls.lock().unwrap().push(what);
        s
    }
}

impl Gpu for FakeGpu {
    fn index(&self) -> u32 {
        self.index
    }
    fn uuid(&self) -> Result<String, QueryError> {
        Ok(format!("GPU-fake-{}", self.index))
    }
    fn name(&self) -> Result<String, QueryError> {
        Ok("NVIDIA Fake 80GB".into())
    }
    fn utilization_samples(&self, since_us: u64) -> Result<Vec<(u64, f64)>, QueryError> {
        let s = self.call("samples");
        if !s.samples_supported {
            return Err(QueryError::NotSupported);
        }
        Ok(s.samples.into_iter().filter(|(t, _)| *t > since_us).collect())
    }
    fn utilization(&self) -> Result<f64, QueryError> {
        self.call("utilization").utilization.ok_or(QueryError::NotSupported)
    }
    fn memory(&self) -> Result<(u64, u64), QueryError> {
        self.call("memory").memory.ok_or(QueryError::NotSupported)
    }
    fn processes(&self) -> Result<Vec<(u32, Option<u64>)>, QueryError> {
        self.call("processes").processes.ok_or(QueryError::NotSupported)
    }
}

fn sampler(script: &Arc<Mutex<Script>>, replicas: ReplicaDirectory) -> GpuSampler {
    let gpu = Box::new(FakeGpu {
        index: 0,
        script: script.clone(),
    });
    GpuSampler::new(vec![gpu], replicas, "gpu-host".into(), "nvml".into())
}

fn gauge<'a>(r: &'a ExportMetricsServiceRequest, name: &str) -> Option<&'a Vec<NumberDataPoint>> {
    r.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == name)
        .and_then(|m| match &m.data {
            Some(MetricData::Gauge(g)) => Some(&g.data_points),
            _ => None,
        })
}

fn value(p: &NumberDataPoint) -> f64 {
    match p.value {
        Some(number_data_point::Value::AsDouble(v)) => v,
        _ => f64::NAN,
    }
}

fn label(p: &NumberDataPoint, key: &str) -> Option<String> {
    p.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        })
}

#[test]
fn utilization_from_samples_sees_spikes_memory_and_processes() {
    let script = Arc::new(Mutex::new(Script {
        samples: vec![(1_000, 10.0), (2_000, 10.0), (3_000, 100.0), (4_000, 20.0)],
        samples_supported: true,
        memory: Some((30 << 30, 80 << 30)),
        processes: Some(vec![(4242, Some(20 << 30)), (7, None)]),
        ..Default::default()
    }));
    let replicas = ReplicaDirectory::default();
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    let kv = |k: &str, v: Value| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    replicas.observe(&[
        kv("service.name", Value::StringValue("llama".into())),
        kv("host.name", Value::StringValue("gpu-host".into())),
        kv("process.pid", Value::IntValue(4242)),
        kv("service.instance.id", Value::StringValue("llama-0".into())),
    ]);
    let mut s = sampler(&script, replicas);
    s.sample();
    // A second read sees only newer samples: nothing is counted twice.
    script.lock().unwrap().samples.push((5_000, 30.0));
    s.sample();
    let r = s.collect().unwrap();
    let util = &gauge(&r, "hw.gpu.utilization").unwrap()[0];
    assert!(
        (value(util) - 0.34).abs() < 1e-9,
        "average of 10,10,100,20,30 %: {}",
        value(util)
    );
    assert_eq!(
        value(&gauge(&r, "hw.gpu.utilization.max").unwrap()[0]),
        1.0,
        "the spike is kept"
    );
    assert_eq!(label(util, "hw.id").as_deref(), Some("GPU-fake-0"));
    assert_eq!(label(util, "hw.name").as_deref(), Some("NVIDIA Fake 80GB"));
    assert_eq!(
        value(&gauge(&r, "hw.gpu.memory.usage").unwrap()[0]),
        (30u64 << 30) as f64
    );
    assert_eq!(
        value(&gauge(&r, "hw.gpu.memory.limit").unwrap()[0]),
        (80u64 << 30) as f64
    );
    let procs = gauge(&r, "process.gpu.memory.usage").unwrap();
    assert_eq!(procs.len(), 1, "a process whose memory NVML cannot tell is left out");
    assert_eq!(value(&procs[0]), (20u64 << 30) as f64);
    assert_eq!(label(&procs[0], "model").as_deref(), Some("llama"));
    assert_eq!(label(&procs[0], "service.instance.id").as_deref(), Some("llama-0"));
    assert!(s.unsupported().is_empty());
}

#[test]
fn unsupported_queries_are_reported_once_and_the_rest_still_comes() {
    // As on a MIG instance: no utilisation at all, memory still readable.
    let script = Arc::new(Mutex::new(Script {
        samples_supported: false,
        utilization: None,
        memory: Some((1 << 30, 10 << 30)),
        processes: None,
        ..Default::default()
    }));
    let mut s = sampler(&script, ReplicaDirectory::default());
    for _ in 0..5 {
        s.sample();
    }
    let r = s.collect().unwrap();
    assert!(gauge(&r, "hw.gpu.utilization").is_none());
    assert!(
        gauge(&r, "hw.gpu.memory.usage").is_some(),
        "what the device supports is reported"
    );
    assert_eq!(
        s.unsupported().len(),
        3,
        "samples, utilization, processes: {:?}",
        s.unsupported()
    );
    let calls = script.lock().unwrap().calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().filter(|c| **c == "samples").count(),
        1,
        "an unsupported query is not asked again"
    );
    assert_eq!(calls.iter().filter(|c| **c == "memory").count(), 5);
}

#[test]
fn falls_back_to_the_utilization_rate_without_samples() {
    let script = Arc::new(Mutex::new(Script {
        samples_supported: false,
        utilization: Some(55.0),
        ..Default::default()
    }));
    let mut s = sampler(&script, ReplicaDirectory::default());
    s.sample();
    s.sample();
    let r = s.collect().unwrap();
    assert_eq!(value(&gauge(&r, "hw.gpu.utilization").unwrap()[0]), 0.55);
}

struct NoDriver;
impl GpuSource for NoDriver {
    fn open(&self) -> Result<Vec<Box<dyn Gpu>>, OpenError> {
        Err(OpenError::NoDriver(
            "libnvidia-ml.so.1: cannot open shared object file".into(),
        ))
    }
}

fn receiver(factory: &NvmlReceiverFactory, required: bool) -> Box<dyn Receiver> {
    struct Sink;
    #[async_trait]
    impl Consumer for Sink {
        async fn consume(&self, _: infercol_pipelines::Data) -> Result<(), infercol_pipelines::ConsumeError> {
            Ok(())
        }
    }
    let mut consumers = infercol_pipelines::Consumers::default();
    consumers.set(Signal::Metrics, Arc::new(Sink));
    let config: AnyConfig = Box::new(NvmlConfig {
        required,
        ..Default::default()
    });
    factory
        .create(
            &config,
            ReceiverContext {
                id: ComponentId::parse("nvml").unwrap(),
                consumers,
                telemetry: infercol_pipelines::Telemetry::new(),
                shared: Default::default(),
            },
        )
        .unwrap()
}

#[tokio::test]
async fn without_a_driver_it_stays_idle_unless_required() {
    let factory = NvmlReceiverFactory::with_source(Arc::new(NoDriver));
    let mut r = receiver(&factory, false);
    r.start().await.expect("idle, not an error");
    r.shutdown().await.unwrap();
    let mut r = receiver(&factory, true);
    let e = r.start().await.expect_err("required: true makes it an error");
    assert!(e.0.contains("no NVIDIA driver") && e.0.contains("required"), "{e}");
}

#[tokio::test]
async fn the_real_nvml_path_on_this_machine() {
    // Here the driver may or may not exist: without it the real NvmlSource must say so, never panic; with it the
    // receiver starts and reads at least one GPU.
    match NvmlSource.open() {
        Err(OpenError::NoDriver(detail)) => assert!(!detail.is_empty()),
        Err(OpenError::NoDevice) | Err(OpenError::Failed(_)) => {}
        Ok(gpus) => assert!(!gpus.is_empty()),
    }
    let mut r = receiver(&NvmlReceiverFactory::default(), false);
    r.start().await.expect("never a start-up error unless required");
    r.shutdown().await.unwrap();
}
