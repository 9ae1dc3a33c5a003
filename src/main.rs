//! The `infercol` binary: the command line and the registry of every component.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use infercol_pipelines::config::parse_log_level;
use infercol_pipelines::{Config, Kind, Registry, Service};
use tracing_subscriber::EnvFilter;

// Decoding OTLP into owned types allocates a lot of small strings and vectors; mimalloc's thread-local free lists
// make that markedly cheaper than the system allocator (measured in bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The configuration `infercol` runs when no --config is given.
const DEFAULT_CONFIG: &str = include_str!("../examples/configs/standalone.yaml");

/// How long shutdown may take to flush what was accepted before the process gives up.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(
    name = "infercol",
    version,
    about = "An OpenTelemetry collector that turns the spans of model services into inference metrics",
    long_about = "An OpenTelemetry collector that turns the spans of model services into inference metrics.\n\n\
                  Without --config it runs its embedded default configuration (`infercol default-config` prints it): \
                  OTLP on 127.0.0.1:4317 (gRPC) and 127.0.0.1:4318 (HTTP); the model_metrics connector turning \
                  spans into inference metrics, beside host and GPU samples; those metrics for Prometheus on \
                  http://127.0.0.1:9464/metrics and drawn on the dashboard at http://127.0.0.1:9465/; a summary of \
                  what arrives on stderr; its own metrics on http://127.0.0.1:8888/metrics; a health check for \
                  probes on http://127.0.0.1:13133/. Only the dashboard's history is written to disk, under \
                  INFERCOL_DATA_DIR (default ./infercol-data), at most 7 days of it. SIGINT or SIGTERM stop it after \
                  flushing everything it accepted."
)]
struct Cli {
    /// The YAML configuration to run (the OpenTelemetry Collector's shape).
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Checks a configuration (including that its ports are free) and exits: 0 when valid.
    Validate,
    /// Lists the component types this build knows.
    Components,
    /// Prints the embedded default configuration.
    DefaultConfig,
}

fn registry() -> Registry {
    Registry::default()
        .receiver(infercol_receivers::otlp::OtlpReceiverFactory)
        .receiver(infercol_receivers::hostmetrics::HostMetricsReceiverFactory)
        .receiver(infercol_receivers::nvml::NvmlReceiverFactory::default())
        .receiver(infercol_receivers::replica_probe::ReplicaProbeFactory)
        .processor(infercol_processors::batch::BatchProcessorFactory)
        .processor(infercol_processors::memory_limiter::MemoryLimiterFactory)
        .receiver(infercol_receivers::nop::NopReceiverFactory)
        .receiver(infercol_receivers::prometheus::PrometheusReceiverFactory)
        .processor(infercol_processors::model_metrics::gateway::ModelQuantilesFactory)
        .connector(infercol_processors::model_metrics::ModelMetricsFactory)
        .exporter(infercol_exporters::dashboard::DashboardExporterFactory)
        .exporter(infercol_exporters::debug::DebugExporterFactory)
        .exporter(infercol_exporters::file::FileExporterFactory)
        .exporter(infercol_exporters::otlp::OtlpExporterFactory)
        .exporter(infercol_exporters::otlp::OtlpHttpExporterFactory)
        .exporter(infercol_exporters::prometheus::PrometheusExporterFactory)
        .exporter(infercol_exporters::prometheus::RemoteWriteExporterFactory)
        .exporter(infercol_exporters::nop::NopExporterFactory)
        .extension(infercol_extensions::health_check::HealthCheckFactory)
}

/// What a component type handles: its signals, or a connector's routes (`traces -> metrics`).
fn handles(registry: &Registry, kind: Kind, name: &str) -> String {
    if kind == Kind::Connector
        && let Some(f) = registry.connectors.get(name)
    {
        let routes: Vec<String> = f.routes().iter().map(|(from, to)| format!("{from} -> {to}")).collect();
        return routes.join(", ");
    }
    registry
        .factory(kind, name)
        .map(|f| f.signals().iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// Reads and parses the configuration; the error names the file, the line and what is wrong.
fn load(path: Option<&Path>, registry: &Registry) -> Result<Config, String> {
    let (name, text) = match path {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        ),
        None => ("the default configuration".to_string(), DEFAULT_CONFIG.to_string()),
    };
    Config::parse(&text, registry).map_err(|e| match e.0.as_slice() {
        [one] => format!("invalid configuration {name}: {one}"),
        all => {
            let lines: Vec<String> = all.iter().map(|e| format!("  {e}")).collect();
            format!(
                "invalid configuration {name}: {} errors:\n{}",
                all.len(),
                lines.join("\n")
            )
        }
    })
}

fn init_logs(config: Option<&Config>) {
    let configured = config
        .and_then(|c| c.telemetry.logs.level.as_deref())
        .and_then(|l| parse_log_level(l).ok())
        .unwrap_or("info");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(configured));
    let json = config.and_then(|c| c.telemetry.logs.encoding.as_deref()) == Some("json");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let registry = registry();
    match cli.command {
        Some(Command::Components) => {
            for kind in Kind::ALL {
                println!("{}:", kind.section());
                for name in registry.type_names(kind) {
                    println!("  - {name:<16} {}", handles(&registry, kind, name));
                }
            }
            ExitCode::SUCCESS
        }
        Some(Command::DefaultConfig) => {
            print!("{DEFAULT_CONFIG}");
            ExitCode::SUCCESS
        }
        Some(Command::Validate) => {
            let checked = load(cli.config.as_deref(), &registry).and_then(|c| {
                c.check_listen_addresses(&registry)
                    .map(|()| c.warnings.clone())
                    .map_err(|e| format!("invalid configuration: {e}"))
            });
            match checked {
                Ok(warnings) => {
                    for warning in warnings {
                        eprintln!("warning: {warning}");
                    }
                    println!("configuration is valid");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            let config = match load(cli.config.as_deref(), &registry) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logs(Some(&config));
            for warning in &config.warnings {
                tracing::warn!("configuration: {warning}");
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(config, registry))
        }
    }
}

async fn run(config: Config, registry: Registry) -> ExitCode {
    let service = match Service::start(config, &registry).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "infercol is running; SIGINT or SIGTERM stops it"
    );
    wait_for_signal().await;
    tracing::info!("shutting down: receivers stop, then everything accepted is flushed");
    match tokio::time::timeout(SHUTDOWN_DEADLINE, service.shutdown()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => {
            tracing::error!("shutdown did not finish within {SHUTDOWN_DEADLINE:?}; exiting");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); only SIGINT stops the collector");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod lifecycle {
    //! A lifecycle test for every registered factory, as the Collector generates one per component: its default
    //! configuration (with only what has no default, or would listen on a fixed port, set), create, start and
    //! shutdown, placed in a pipeline of every signal it handles.

    use super::*;
    use infercol_pipelines::Signal;

    /// The body each type needs beyond its defaults: listeners on port 0, required keys.
    fn body(kind: Kind, name: &str, dir: &Path) -> String {
        match (kind, name) {
            (Kind::Receiver, "otlp") => {
                "{ protocols: { grpc: { endpoint: \"127.0.0.1:0\" }, http: { endpoint: \"127.0.0.1:0\" } } }".into()
            }
            (Kind::Receiver, "prometheus") => "{ targets: [{ url: \"http://127.0.0.1:9/metrics\", model: m }] }".into(),
            (Kind::Receiver, "replica_probe") => {
                "{ targets: [{ url: \"http://127.0.0.1:9/health\", model: m }] }".into()
            }
            (Kind::Exporter, "prometheus" | "dashboard") => "{ endpoint: \"127.0.0.1:0\" }".into(),
            (Kind::Exporter, "otlp") => "{ endpoint: \"127.0.0.1:9\" }".into(),
            (Kind::Exporter, "otlphttp") => "{ endpoint: \"http://127.0.0.1:9\" }".into(),
            (Kind::Exporter, "prometheusremotewrite") => "{ endpoint: \"http://127.0.0.1:9/api/v1/write\" }".into(),
            (Kind::Exporter, "file") => format!("{{ path: \"{}\" }}", dir.join("out.jsonl").display()),
            (Kind::Extension, "health_check") => "{ endpoint: \"127.0.0.1:0\" }".into(),
            _ => String::new(),
        }
    }

    /// A configuration with the component under test and `nop` around it, in a pipeline of each signal it takes.
    fn config_for(registry: &Registry, kind: Kind, name: &str, dir: &Path) -> String {
        let body = body(kind, name, dir);
        let signals: Vec<Signal> = registry.factory(kind, name).unwrap().signals().to_vec();
        let mut pipelines = String::new();
        let mut extensions = String::new();
        match kind {
            Kind::Receiver | Kind::Processor | Kind::Exporter => {
                for s in signals {
                    let (r, p, e) = match kind {
                        Kind::Receiver => (name, "", "nop"),
                        Kind::Processor => ("nop", name, "nop"),
                        _ => ("nop", "", name),
                    };
                    pipelines +=
                        &format!("    {s}/test: {{ receivers: [{r}], processors: [{p}], exporters: [{e}] }}\n");
                }
            }
            Kind::Connector => {
                for (from, to) in registry.connectors[name].routes() {
                    pipelines += &format!("    {from}/in: {{ receivers: [nop], exporters: [{name}] }}\n");
                    pipelines += &format!("    {to}/out: {{ receivers: [{name}], exporters: [nop] }}\n");
                }
            }
            Kind::Extension => {
                pipelines += "    traces: { receivers: [nop], exporters: [nop] }\n";
                extensions = format!("  extensions: [{name}]\n");
            }
        }
        let mut sections = String::new();
        for around in [Kind::Receiver, Kind::Exporter] {
            sections += &format!("{}:\n  nop:\n", around.section());
            if kind == around && name != "nop" {
                sections += &format!("  {name}: {body}\n");
            }
        }
        if !matches!(kind, Kind::Receiver | Kind::Exporter) {
            sections += &format!("{}:\n  {name}: {body}\n", kind.section());
        }
        format!(
            "{sections}service:\n{extensions}  telemetry: {{ metrics: {{ level: none }} }}\n  pipelines:\n{pipelines}"
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_registered_component_starts_and_shuts_down_on_its_default_configuration() {
        let registry = registry();
        let mut tested = Vec::new();
        for kind in Kind::ALL {
            for name in registry.type_names(kind) {
                let dir = tempfile::tempdir().unwrap();
                let yaml = config_for(&registry, kind, name, dir.path());
                let config = Config::parse(&yaml, &registry).unwrap_or_else(|e| {
                    panic!("{} {name}: the configuration is refused: {e}\n{yaml}", kind.singular())
                });
                let service = tokio::time::timeout(Duration::from_secs(20), Service::start(config, &registry))
                    .await
                    .unwrap_or_else(|_| panic!("{} {name}: start hangs", kind.singular()))
                    .unwrap_or_else(|e| panic!("{} {name}: start fails: {e}\n{yaml}", kind.singular()));
                tokio::time::timeout(Duration::from_secs(20), service.shutdown())
                    .await
                    .unwrap_or_else(|_| panic!("{} {name}: shutdown hangs", kind.singular()));
                tested.push(format!("{}/{name}", kind.singular()));
            }
        }
        // The count guards against a registry that lost its factories.
        assert!(tested.len() >= 17, "{tested:?}");
    }
}
